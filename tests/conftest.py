"""Test-wide settings: deterministic, single-threaded torch (CI machines have 2 cores)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def no_process_group_left():
    """Each test starts without a process group: one that a test's error path left open (train.main
    and evaluate.run leave closing it to their command-line wrappers) is closed after it."""
    yield
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tiny_qwen():
    """(model, processor) of the random tiny Qwen2.5-VL (seed 0), built once per test module."""
    from models.tiny import build_tiny_qwen

    return build_tiny_qwen(seed=0)


@pytest.fixture(scope="module")
def tiny_policy(tiny_qwen):
    """models.policy.SegZeroPolicy around :func:`tiny_qwen`."""
    from models.policy import SegZeroPolicy

    return SegZeroPolicy(*tiny_qwen)


@pytest.fixture(scope="module")
def tiny_sam2():
    """The random tiny SAM2 (models.segmenter.Segmenter.tiny, 256 x 256 input), once per module."""
    from models.segmenter import Segmenter

    return Segmenter.tiny(seed=0, image_size=256)
