"""What differs between the transformers releases this project runs on: the test suite runs on
5.25.0 (scripts/install.sh, what CI installs) and on the minimum, 5.17.0
(scripts/test_min_versions.sh).

- The KV-cache argument of the Qwen2.5-VL forward is ``cache`` from 5.2x (``past_key_values`` is a
  deprecated alias there) and ``past_key_values`` before: :data:`CACHE_KWARG` is the name the
  installed release takes, so a cache passed as ``**{CACHE_KWARG: cache}`` is filled in place on
  either (an unknown keyword would be swallowed by ``**kwargs`` and the cache left empty).
- The top-level ``Qwen2_5_VLConfig`` of 5.17 does not keep ``eos_token_id`` / ``pad_token_id``;
  the text config holds them in every release (read ``config.text_config.*``).
"""
from __future__ import annotations

import inspect

from transformers import Qwen2_5_VLForConditionalGeneration

CACHE_KWARG = ("cache" if "cache" in inspect.signature(Qwen2_5_VLForConditionalGeneration.forward).parameters
               else "past_key_values")
