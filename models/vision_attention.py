"""Qwen2.5-VL vision attention over all windows in ONE attention call (instead of one per window).

The Qwen2.5-VL vision tower attends within windows (8 x 8 patches of 14 px, i.e. 112 x 112 px)
in most blocks and within each whole image in the others; the sequence is all images' patches
concatenated, window after window, delimited by ``cu_seqlens`` [W + 1]. With ``sdpa`` transformers
splits the sequence and calls attention once per window: an 840 x 840 image has 3,600 patches in
~64 windows, so 16 images x 32 blocks make ~30,000 small attention calls per vision forward. On an
H200 that loop is bound by the host launching kernels (measured, docs/PERFORMANCE.md).

:func:`windowed_sdpa` computes the same thing with one ``scaled_dot_product_attention`` call per
block: the W windows are gathered into a padded batch [W, heads, Lmax, head_dim] (Lmax = the
longest window), keys past a window's length are masked out, and the outputs are scattered back
to sequence order. For each window w and query i of it:

    out[i] = sum_j softmax_j(q_i . k_j * scale) v_j      over the keys j of window w only

which is exactly the per-window attention (padded keys get weight exp(-inf) = 0; padded query rows
are computed and dropped). No host synchronisation: the gather and scatter indices are computed on
the device from ``cu_seqlens``; Lmax comes from transformers (``max_length_q``, one ``.item()``
per block, as in its flash-attention path).

transformers passes ``cu_seqlens`` to an attention function only when the implementation's NAME
contains "flash" (``is_flash_attention_requested``), so the function is registered under
:data:`WINDOWED_SDPA` ("sdpa_windows_flash_api"); the kernel is torch's sdpa. It is set on the
vision tower only (:func:`use_windowed_vision_attention`); the language model keeps its own.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

WINDOWED_SDPA = "sdpa_windows_flash_api"


def windowed_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask=None,
                  scaling: float | None = None, dropout: float = 0.0, cu_seq_lens_q: torch.Tensor | None = None,
                  cu_seq_lens_k: torch.Tensor | None = None, max_length_q: int | None = None,
                  max_length_k: int | None = None, is_causal: bool = False, **kwargs):
    """Attention within the windows of ``cu_seq_lens_q``, one sdpa call.

    Args:
        query, key, value: [1, heads, S, head_dim] (the vision tower's layout).
        cu_seq_lens_q: [W + 1] window boundaries (int); ``cu_seq_lens_k`` must be the same.
        max_length_q: the longest window (a Python int).
    Returns:
        ([1, S, heads, head_dim], None), the layout transformers' attention functions return.
    """
    assert cu_seq_lens_q is not None and query.shape[0] == 1 and not is_causal, "vision windows only"
    assert cu_seq_lens_k is None or cu_seq_lens_k is cu_seq_lens_q or torch.equal(cu_seq_lens_k, cu_seq_lens_q)
    seq = query.shape[2]
    cu = cu_seq_lens_q.to(device=query.device, dtype=torch.long)
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]  # [W], [W]
    lmax = int(max_length_q) if max_length_q is not None else int(lengths.max())
    slot = torch.arange(lmax, device=query.device)  # [Lmax]
    valid = slot[None, :] < lengths[:, None]  # [W, Lmax]
    gather = (starts[:, None] + slot[None, :]).clamp_(max=seq - 1)  # [W, Lmax] token index of each slot

    def windows(x):  # [1, H, S, D] -> [W, H, Lmax, D]
        return x[0][:, gather].transpose(0, 1)

    mask = valid[:, None, None, :]  # [W, 1, 1, Lmax]: a query sees only its window's real keys
    out = F.scaled_dot_product_attention(windows(query), windows(key), windows(value), attn_mask=mask,
                                         dropout_p=dropout, scale=scaling)  # [W, H, Lmax, D]
    token = torch.arange(seq, device=query.device)  # [S]
    window_of = torch.searchsorted(cu[1:], token, right=True)  # [S]
    flat = window_of * lmax + (token - starts[window_of])  # [S] position in the [W * Lmax] slots
    out = out.transpose(1, 2).reshape(-1, out.shape[1], out.shape[3])[flat]  # [S, H, D]
    return out.unsqueeze(0), None


def use_windowed_vision_attention(model) -> None:
    """Make the vision tower of a Qwen2.5-VL ``model`` use :func:`windowed_sdpa` (registered once).

    The tower's modules get their own copy of the vision config with the new attention name; the
    model's ``config.vision_config`` keeps its own (``sdpa``), so ``save_pretrained``, exports and
    models built from that config never see a name that only this process has registered.
    """
    from transformers import AttentionInterface

    if WINDOWED_SDPA not in AttentionInterface._global_mapping:
        AttentionInterface.register(WINDOWED_SDPA, windowed_sdpa)
    visual = getattr(model, "model", model).visual
    shared = visual.config
    if shared._attn_implementation == WINDOWED_SDPA:
        return
    own = copy.copy(shared)
    own._attn_implementation = WINDOWED_SDPA
    for module in visual.modules():
        if getattr(module, "config", None) is shared:
            module.config = own


def vision_attention_of(model) -> str:
    """The attention implementation the vision tower of ``model`` runs."""
    return getattr(model, "model", model).visual.config._attn_implementation
