"""Helpers shared by the tests (imported as ``helpers``: pytest puts tests/ on the import path)."""
import io
import json
import pickle
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

from grpo import RolloutBuffer, group_advantages, token_logprobs_and_entropy

# ---- inputs of the tiny Qwen2.5-VL ---------------------------------------------------------------
QUERIES = ["the red circle", "the largest blue square left of the green triangle and the star"]


def random_images(n, seed=0):
    """n random uint8 RGB images of different sizes (50 + 9 i) x 64, deterministic from the seed."""
    rs = np.random.RandomState(seed)
    return [rs.randint(0, 256, (50 + 9 * i, 64, 3), dtype=np.uint8) for i in range(n)]


@contextmanager
def boosted_logit(model, token_id, amount, sizes=None):
    """Within the block, every forward adds ``amount`` to the logit of ``token_id`` (e.g. to make EOS
    likely so that rows stop at different steps) and, if ``sizes`` is a list, appends the number of
    rows it computed (the decode batch size)."""
    def hook(module, inputs, output):
        if sizes is not None:
            sizes.append(output.shape[0])
        output[..., token_id] += amount
        return output

    handle = model.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ---- a toy policy and its rollout for grpo.update (features [L, DIM] per prompt) -----------------
VOCAB, DIM, L = 7, 5, 6


def make_policy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, VOCAB)).double()


def make_buffer(num_groups: int = 4, group_size: int = 3, seed: int = 0) -> RolloutBuffer:
    """Random rollout: per-prompt features [L, DIM] in ``prompts``, ragged response masks."""
    g = torch.Generator().manual_seed(seed)
    n = num_groups * group_size
    lengths = torch.randint(1, L + 1, (n,), generator=g)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).float()  # [N, L], 1 up to EOS
    rewards = torch.randint(0, 3, (n,), generator=g).double()
    return RolloutBuffer(
        response_ids=torch.randint(0, VOCAB, (n, L), generator=g),
        response_mask=mask,
        old_logp=-torch.rand(n, L, generator=g, dtype=torch.float64) * 3,
        ref_logp=-torch.rand(n, L, generator=g, dtype=torch.float64) * 3,
        rollout_logp=-torch.rand(n, L, generator=g, dtype=torch.float64) * 3,
        rewards=rewards,
        advantages=group_advantages(rewards, group_size),
        group_ids=torch.arange(num_groups).repeat_interleave(group_size),
        reward_terms={"format": (rewards > 0).double(), "iou": rewards / 2},
        prompts=[torch.randn(L, DIM, generator=g, dtype=torch.float64) for _ in range(num_groups)],
    )


def logprob_fn_for(policy):
    def logprob_fn(mb: RolloutBuffer):
        features = torch.stack([mb.prompts[int(i)] for i in mb.group_ids])  # [n, L, DIM]
        logits = policy(features)  # [n, L, V]
        return token_logprobs_and_entropy(logits, mb.response_ids, temperature=0.9, chunk_size=5)
    return logprob_fn


def param_deltas(policy, before):
    return [(p.detach() - b) for p, b in zip(policy.parameters(), before)]


# ---- dataset files -------------------------------------------------------------------------------
def png_bytes(h, w, color=(10, 20, 30)):
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), color, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def rle_rectangle_mask():
    m = np.zeros((24, 32), dtype=np.uint8)
    m[3:9, 20:30] = 1  # rows 3..8, cols 20..29: 60 pixels
    return m


def make_refer_fixture(root, corrupt_third=False):
    """refcocog/instances.json (one polygon ann, one compressed RLE ann) + refs(umd).p + images."""
    data_dir = root / "refcocog"
    img_dir = root / "images"
    data_dir.mkdir(parents=True)
    img_dir.mkdir()
    (img_dir / "a.jpg").write_bytes(png_bytes(30, 40))  # PIL reads by content, not by extension
    (img_dir / "b.jpg").write_bytes(png_bytes(24, 32, (200, 0, 0)))
    (img_dir / "c.jpg").write_bytes(b"\xff\xd8 corrupt jpeg" if corrupt_third
                                    else png_bytes(20, 20))
    rle = mask_utils.encode(np.asfortranarray(rle_rectangle_mask()))
    rle["counts"] = rle["counts"].decode("ascii")  # as stored in COCO json
    instances = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 30, "width": 40},
                   {"id": 2, "file_name": "b.jpg", "height": 24, "width": 32},
                   {"id": 3, "file_name": "c.jpg", "height": 20, "width": 20}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1,
             "segmentation": [[5.0, 5.0, 15.0, 5.0, 15.0, 12.0, 5.0, 12.0]]},
            {"id": 12, "image_id": 2, "category_id": 1, "segmentation": rle},
            {"id": 13, "image_id": 3, "category_id": 1,
             "segmentation": [[2.0, 2.0, 10.0, 2.0, 10.0, 10.0]]},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (data_dir / "instances.json").write_text(json.dumps(instances))
    refs = [
        {"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [{"sent": "the dark box", "sent_id": 100},
                       {"sent": "left one", "sent_id": 101}]},
        {"ref_id": 1, "ann_id": 12, "image_id": 2, "split": "train", "category_id": 1,
         "sentences": [{"sent": "the red patch", "sent_id": 102}]},
        {"ref_id": 2, "ann_id": 13, "image_id": 3, "split": "train", "category_id": 1,
         "sentences": [{"sent": "a triangle", "sent_id": 103}]},
        {"ref_id": 3, "ann_id": 12, "image_id": 2, "split": "val", "category_id": 1,
         "sentences": [{"sent": "val sentence", "sent_id": 104}]},
    ]
    with open(data_dir / "refs(umd).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return img_dir


def record_fsyncs(monkeypatch) -> list[str]:
    """Patch os.fsync to record the path of every file and folder it flushes (Linux /proc)."""
    import os

    paths = []
    real = os.fsync

    def fsync(fd):
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return paths


def crash_when_renaming(monkeypatch, src) -> None:
    """Patch os.rename to raise KeyboardInterrupt (a killed process) when it would move ``src``."""
    import os

    real_rename = os.rename

    def rename(a, b):
        if os.fspath(a) == os.fspath(src):
            raise KeyboardInterrupt("killed")
        real_rename(a, b)

    monkeypatch.setattr(os, "rename", rename)
