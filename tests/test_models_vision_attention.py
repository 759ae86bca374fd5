"""models.vision_attention: all vision windows in one sdpa call == one call per window."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.vision_attention import WINDOWED_SDPA, use_windowed_vision_attention, vision_attention_of, windowed_sdpa


def _per_window(q, k, v, cu, scale):
    """The reference: transformers' sdpa path, one attention call per window."""
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        outs.append(F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=scale))
    return torch.cat(outs, dim=2).transpose(1, 2)  # [1, S, H, D]


@pytest.mark.parametrize("lengths", [[4, 4, 4], [64, 32, 64, 16, 1], [7]])
def test_equals_one_call_per_window_with_unequal_windows(lengths):
    g = torch.Generator().manual_seed(sum(lengths))
    seq, heads, dim = sum(lengths), 3, 8
    q, k, v = (torch.randn(1, heads, seq, dim, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    got, none = windowed_sdpa(None, q, k, v, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                              max_length_q=max(lengths), max_length_k=max(lengths))
    want = _per_window(q, k, v, cu, 0.3)
    assert none is None and got.shape == (1, seq, heads, dim)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    w = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * w).sum(), (q, k, v))
    want_grads = torch.autograd.grad((want * w).sum(), (q, k, v))
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_a_key_outside_its_window_has_no_influence():
    # window 0 = tokens 0..1, window 1 = tokens 2..4: changing token 3's key and value leaves
    # window 0's outputs bit for bit unchanged
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g) for _ in range(3))
    cu = torch.tensor([0, 2, 5])
    base = windowed_sdpa(None, q, k, v, cu_seq_lens_q=cu, max_length_q=3)[0]
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 3] += 5.0
    v2[:, :, 3] -= 7.0
    moved = windowed_sdpa(None, q, k2, v2, cu_seq_lens_q=cu, max_length_q=3)[0]
    assert torch.equal(moved[:, :2], base[:, :2])
    assert not torch.equal(moved[:, 2:], base[:, 2:])


def test_tiny_vision_tower_features_and_gradients_unchanged():
    from models.batch import prepare_inputs
    from models.tiny import build_tiny_qwen

    windowed, processor = build_tiny_qwen(seed=0)  # sdpa: the windowed vision attention is on
    assert vision_attention_of(windowed) == WINDOWED_SDPA
    assert windowed.config.text_config._attn_implementation == "sdpa"
    assert windowed.config.vision_config._attn_implementation == "sdpa"  # what is saved / exported
    loop = copy.deepcopy(windowed)
    loop.model.visual.config._attn_implementation = "sdpa"  # transformers' one call per window
    assert vision_attention_of(loop) == "sdpa" and vision_attention_of(windowed) == WINDOWED_SDPA
    rs = np.random.RandomState(0)
    batch = prepare_inputs(processor, [rs.randint(0, 256, (840, 840, 3), dtype=np.uint8) for _ in range(2)],
                           ["a", "b"])
    outs = []
    for model in (windowed, loop):
        feats = model.get_image_features(batch.pixel_values, batch.image_grid_thw)
        feats = feats if torch.is_tensor(feats) else torch.cat(list(getattr(feats, "pooler_output", feats)))
        feats.pow(2).sum().backward()
        outs.append((feats.detach(), {n: p.grad for n, p in model.model.visual.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-6)
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(grad, outs[1][1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_use_is_idempotent_and_leaves_the_language_model_alone():
    from models.tiny import build_tiny_qwen

    model, _ = build_tiny_qwen(seed=0, attn_implementation="eager")
    assert vision_attention_of(model) == "eager"
    use_windowed_vision_attention(model)
    use_windowed_vision_attention(model)
    assert vision_attention_of(model) == WINDOWED_SDPA
    assert model.config.text_config._attn_implementation == "eager"
    assert all(m.config is model.model.visual.config for m in model.model.visual.modules() if hasattr(m, "config"))


def test_a_model_built_from_the_config_of_a_windowed_model_works(tmp_path):
    # exports build a fresh model from model.config and save it: the windowed name must not be there
    from transformers import Qwen2_5_VLForConditionalGeneration

    from models.tiny import build_tiny_qwen

    model, _ = build_tiny_qwen(seed=0)
    fresh = Qwen2_5_VLForConditionalGeneration._from_config(model.config)
    fresh.save_pretrained(tmp_path)
    assert WINDOWED_SDPA not in (tmp_path / "config.json").read_text()
