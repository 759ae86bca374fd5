"""Architecture-only ``config.json`` files of Qwen2.5-VL-3B/7B-Instruct shipped with the package.

No weights: they build randomly initialised models of the real shape (``python -m models.bench
--model 3b``, ``python -m models.memory``) and exercise the real loading path up to reading weights.
"""
import os

REAL_CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def real_config_path(size: str) -> str:
    """Path of the shipped architecture config of Qwen2.5-VL-``size``-Instruct, size "3b" or "7b"."""
    if size not in ("3b", "7b"):
        raise ValueError(f"size must be '3b' or '7b', got {size!r}")
    return os.path.join(REAL_CONFIG_DIR, f"qwen2_5_vl_{size}.json")
