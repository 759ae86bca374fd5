"""Models of Seg-Zero: the Qwen2.5-VL policy, the SAM2 segmenter, the pipeline, tiny builders.

- :mod:`models.prompt`   the SPEC section 2 prompt and its ablation variants.
- :mod:`models.loading`  load_policy: a Qwen2.5-VL checkpoint -> (model, processor).
- :mod:`models.batch`    prepare_inputs / PolicyBatch: (image, query) pairs -> model inputs.
- :mod:`models.forward`  response_logprobs / ResponseLogProbs: the training forward.
- :mod:`models.policy`   SegZeroPolicy: model + processor + prompt variant, rollout and complete.
- :mod:`models.rollout`  the shared-prefix decode loop (B prompts x G samples, one prefill each).
- :mod:`models.tiny`     a tiny Qwen2.5-VL (tokenizer, processor, model) for tests and CPU runs.

Names are imported lazily (transformers takes seconds to import), e.g. ``from models import
SegZeroPolicy`` loads models.policy on first use.
"""
from importlib import import_module

_EXPORTS = {
    "build_prompt": "models.prompt",
    "build_messages": "models.prompt",
    "load_policy": "models.loading",
    "prepare_inputs": "models.batch",
    "response_logprobs": "models.forward",
    "PolicyBatch": "models.batch",
    "Rollout": "models.policy",
    "SegZeroPolicy": "models.policy",
    "generate": "models.rollout",
    "build_tiny_qwen": "models.tiny",
    "save_tiny_qwen": "models.tiny",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
