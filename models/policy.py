"""The Qwen2.5-VL policy: loading, prompt batches, and per-token log-probs of given responses.

What it implements (SPEC.md sections 1-2, DESIGN.md data flow steps 1 and 5):

- :func:`load_policy`: a Qwen2.5-VL checkpoint (hub id, downloaded directory, or our own export)
  with ``from_pretrained``; bf16 on GPU, fp32 on CPU; sdpa / flash-attention 2 / eager attention;
  the processor with optional min/max pixels. Missing weights are reported before any heavy work.
- :func:`prepare_inputs` -> :class:`PolicyBatch`: each image resized to 840 x 840 bilinear (SPEC
  section 1 step 1, aspect ratio not kept), chat template with the SPEC prompt, processor ->
  input_ids [B, P] LEFT-padded, attention_mask [B, P], pixel_values [sum of patches, C*2*14*14],
  image_grid_thw [B, 3].
- :func:`response_logprobs`: log pi(y_t | prompt, y_<t) [N, L] for N = B * G responses (row i uses
  prompt i // G), in one differentiable forward. Each image goes through the vision tower ONCE
  and its embeddings are shared by the G rows of its group. Logits are computed only at the L
  response positions. Temperature T scales the logits exactly as in sampling (softmax(z / T)).
- :class:`SegZeroPolicy`: model + processor + prompt variant, with ``complete`` (greedy decoding for
  evaluation) and ``rollout`` (G samples per prompt for GRPO), both on :mod:`models.rollout`.

Qwen2.5-VL rotary positions (3-D "M-RoPE"). A text token has the same position on the temporal,
height and width axes; an image token at merged-grid cell (h, w) has (s, s + h, s + w) where s is
the position after the preceding text; text after the image resumes at s + max(grid_h, grid_w).
Prompt positions come from the model's own ``get_rope_index`` (padding excluded). Response token
t of a row then has position ``next_pos + t`` on all three axes, where ``next_pos`` = (largest
prompt position) + 1 -- exactly what transformers' generation does with ``rope_deltas``
(``rope_deltas = next_pos - number of real prompt tokens``). Because positions skip padding,
left- and right-padded prompts give the same log-probs (tested); internally prompts are always
left-aligned so that the response occupies the last L columns.

Model code never imports torch.distributed. The training forward calls three pieces of the
model: ``get_image_features`` (vision tower), the input embedding, then ``forward`` on
``inputs_embeds``; :class:`ResponseLogProbs` makes that one module whose ``forward`` FSDP2 can wrap
as the root.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from models.configs import REAL_CONFIG_DIR, real_config_path  # noqa: F401  (re-exported)
from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.cache_utils import Cache, DynamicLayer

from data.image import resize_to_frame as data_resize_to_frame
from data.types import FRAME
from grpo import token_entropy, token_logprobs
from models.compat import CACHE_KWARG
from models.prompt import build_messages, check_task
from models.vision_attention import use_windowed_vision_attention

_WEIGHT_FILES = re.compile(r".*\.(safetensors|bin)$|.*\.index\.json$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ATTENTION = ("sdpa", "flash_attention_2", "eager")


# ----------------------------------------------------------------------------------------------
# Loading


def check_checkpoint(name_or_path: str) -> None:
    """Fail fast, before reading anything big, on paths that cannot hold a checkpoint."""
    if os.path.isdir(name_or_path):
        files = os.listdir(name_or_path)
        if "config.json" not in files:
            raise FileNotFoundError(
                f"{name_or_path!r} is a directory without config.json: not a Qwen2.5-VL checkpoint "
                "directory (it needs config.json, the *.safetensors weights and the processor files)."
            )
        if not any(_WEIGHT_FILES.match(f) for f in files):
            raise FileNotFoundError(
                f"{name_or_path!r} has a config.json but no weights (*.safetensors, *.bin or an "
                "*.index.json shard index). Download the full checkpoint into it, e.g. "
                f"`huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct --local-dir {name_or_path}`, "
                "or pass a hub id such as Qwen/Qwen2.5-VL-3B-Instruct."
            )
        return
    if os.path.exists(name_or_path):
        raise ValueError(f"{name_or_path!r} is a file; expected a checkpoint directory or a hub id")
    if not _HUB_ID.match(name_or_path):
        raise FileNotFoundError(
            f"{name_or_path!r} is neither an existing directory nor a hub id of the form "
            "'owner/name' (e.g. Qwen/Qwen2.5-VL-3B-Instruct)"
        )


def _resolve_dtype(dtype, device: str) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                 "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}")
        return names[dtype]
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a string or a torch.dtype, got {dtype!r}")
    return dtype


def load_policy(
    name_or_path: str | os.PathLike,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """(model, processor) of a Qwen2.5-VL checkpoint, model in eval mode on ``device``.

    Args:
        name_or_path: local checkpoint directory or hub id (``Qwen/Qwen2.5-VL-3B-Instruct``).
        device: "cpu", "cuda" or "cuda:K".
        dtype: default bf16 on CUDA, fp32 on CPU.
        attn_implementation: "sdpa" (default), "flash_attention_2" (needs the flash-attn
            package) or "eager".
        min_pixels / max_pixels: the image processor's pixel budget; the defaults of the
            checkpoint keep an 840 x 840 image at 900 tokens.
    """
    name_or_path = os.fspath(name_or_path)
    device = str(device)
    if not (device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device)):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:K', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if attn_implementation not in _ATTENTION:
        raise ValueError(f"attn_implementation must be one of {_ATTENTION}, got {attn_implementation!r}")
    if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError(
            "attn_implementation='flash_attention_2' needs the flash-attn package "
            "(`pip install flash-attn --no-build-isolation`); or use attn_implementation='sdpa'"
        )
    _check_pixels(min_pixels, max_pixels)
    check_checkpoint(name_or_path)

    torch_dtype = _resolve_dtype(dtype, device)
    processor = load_processor(name_or_path, min_pixels=min_pixels, max_pixels=max_pixels)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        name_or_path, dtype=torch_dtype, attn_implementation=attn_implementation
    )
    if attn_implementation == "sdpa":
        use_windowed_vision_attention(model)  # one attention call per vision block, not per window
    return model.to(device).eval(), processor


def _check_pixels(min_pixels: int | None, max_pixels: int | None) -> None:
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}")


def load_processor(name_or_path: str, *, min_pixels: int | None = None, max_pixels: int | None = None):
    """The checkpoint's processor, tokenizer padding on the left; min/max_pixels set the image
    processor's pixel budget (its ``size``), the checkpoint's own when None."""
    _check_pixels(min_pixels, max_pixels)
    processor = AutoProcessor.from_pretrained(name_or_path)
    if min_pixels or max_pixels:
        size = processor.image_processor.size
        processor = AutoProcessor.from_pretrained(name_or_path, size={
            "shortest_edge": min_pixels or size.shortest_edge, "longest_edge": max_pixels or size.longest_edge})
    processor.tokenizer.padding_side = "left"
    return processor


def local_checkpoint_dir(name_or_path: str) -> str:
    """A local directory holding the checkpoint: the path itself, or the hub snapshot of an id
    (downloaded into the Hugging Face cache on first use)."""
    check_checkpoint(name_or_path)
    if os.path.isdir(name_or_path):
        return name_or_path
    from huggingface_hub import snapshot_download

    return snapshot_download(name_or_path)


def config_from_file(path: str | os.PathLike) -> Qwen2_5_VLConfig:
    """A Qwen2_5_VLConfig from a config.json (e.g. ``real_config_path("3b")``)."""
    return Qwen2_5_VLConfig.from_json_file(os.fspath(path))


# ----------------------------------------------------------------------------------------------
# Prompt batches


@dataclass
class PolicyBatch:
    """B prompts ready for the model; every tensor's first dimension is B except pixel_values.

    Attributes:
        input_ids: [B, P] token ids, padded (left by default).
        attention_mask: [B, P] 1 = real token.
        mm_token_type_ids: [B, P] 0 = text, 1 = image token (what ``get_rope_index`` reads).
        pixel_values: [sum_i T_i*H_i*W_i, C*2*14*14] patches of all images, image after image.
        image_grid_thw: [B, 3] patch grid (T, H, W) of each image, before the 2 x 2 merge.
        queries: the B raw queries.
        image_sizes: the B ORIGINAL (width, height), for mapping answers back (SPEC 1 step 4).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    queries: list[str] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def to(self, device) -> "PolicyBatch":
        return PolicyBatch(
            self.input_ids.to(device), self.attention_mask.to(device),
            self.mm_token_type_ids.to(device), self.pixel_values.to(device),
            self.image_grid_thw.to(device), list(self.queries), list(self.image_sizes),
        )

    def patch_counts(self) -> list[int]:
        """Rows of pixel_values that belong to each image: T * H * W."""
        return self.image_grid_thw.prod(-1).tolist()

    def select(self, indices: Sequence[int]) -> "PolicyBatch":
        """The prompts ``indices`` as a new batch (padding columns no prompt needs are dropped)."""
        indices = [int(i) for i in indices]
        if not indices or any(i < 0 or i >= len(self) for i in indices):
            raise ValueError(f"indices must be a non-empty subset of range({len(self)}), got {indices}")
        pieces = torch.split(self.pixel_values, self.patch_counts())
        left = left_align(self)
        keep = left.attention_mask[indices].sum(-1).max()
        cols = slice(left.input_ids.shape[1] - int(keep), None)
        return PolicyBatch(
            left.input_ids[indices][:, cols], left.attention_mask[indices][:, cols],
            left.mm_token_type_ids[indices][:, cols], torch.cat([pieces[i] for i in indices]),
            self.image_grid_thw[indices], [self.queries[i] for i in indices],
            [self.image_sizes[i] for i in indices],
        )


def resize_to_frame(image, frame: int = FRAME) -> Image.Image:
    """SPEC section 1 step 1 (:func:`data.image.resize_to_frame`) for a PIL image or a uint8
    [H, W, 3] array, returned as a PIL image for the processor."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    elif not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a PIL image or a uint8 [H, W, 3] array, got {type(image).__name__}")
    return Image.fromarray(data_resize_to_frame(image, frame))


def prepare_inputs(
    processor,
    images: Sequence,
    queries: Sequence[str],
    *,
    with_example: bool = True,
    think: bool = True,
    task: str = "single",
    frame: int = FRAME,
    padding_side: str = "left",
) -> PolicyBatch:
    """B (image, query) pairs -> a :class:`PolicyBatch` (see the module docstring)."""
    if len(images) != len(queries) or len(images) == 0:
        raise ValueError(f"need as many images as queries (> 0), got {len(images)} and {len(queries)}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    sizes = [(im.width, im.height) if isinstance(im, Image.Image) else (im.shape[1], im.shape[0])
             for im in images]
    framed = [resize_to_frame(im, frame) for im in images]
    texts = [
        processor.apply_chat_template(
            build_messages(q, with_example=with_example, think=think, task=task),
            tokenize=False, add_generation_prompt=True,
        )
        for q in queries
    ]
    tokenizer = processor.tokenizer
    old_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        enc = processor(text=texts, images=framed, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = old_side
    return PolicyBatch(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        mm_token_type_ids=enc["mm_token_type_ids"],
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"],
        queries=list(queries),
        image_sizes=sizes,
    )


def left_align(batch: PolicyBatch) -> PolicyBatch:
    """The same batch with every prompt's real tokens moved to the right end (left padding).

    A stable sort of each row on its mask moves pad columns first and keeps token order.
    """
    mask = batch.attention_mask
    order = torch.sort(mask, dim=1, stable=True).indices  # [B, P]: pads first, then tokens
    return PolicyBatch(
        batch.input_ids.gather(1, order), mask.gather(1, order),
        batch.mm_token_type_ids.gather(1, order), batch.pixel_values, batch.image_grid_thw,
        list(batch.queries), list(batch.image_sizes),
    )


# ----------------------------------------------------------------------------------------------
# Positions, image features, log-probs


def prompt_positions(model, batch: PolicyBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D rotary positions of the prompts and the first response position.

    Returns:
        position_ids: [3, B, P] (padding columns hold 0; they are masked out of attention).
        next_pos: [B] = max prompt position + 1, the position of response token 0 on all 3 axes.
    """
    position_ids, rope_deltas = model.model.get_rope_index(
        batch.input_ids,
        mm_token_type_ids=batch.mm_token_type_ids,
        image_grid_thw=batch.image_grid_thw,
        attention_mask=batch.attention_mask,
    )
    # rope_deltas [B, 1] = (max position + 1) - (number of real tokens)
    next_pos = rope_deltas.view(-1).to(batch.device) + batch.attention_mask.sum(-1)  # [B]
    return position_ids.to(batch.device), next_pos


def image_embeddings(model, batch: PolicyBatch) -> tuple[torch.Tensor, ...]:
    """Vision tower output of each image: B tensors [T*H*W / 4, hidden] (one per prompt)."""
    out = model.get_image_features(batch.pixel_values, batch.image_grid_thw)
    return tuple(out.pooler_output)


def _check_responses(batch: PolicyBatch, response_ids, response_mask, group_size: int) -> None:
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if response_ids.dim() != 2 or response_ids.shape != response_mask.shape:
        raise ValueError(
            f"response_ids and response_mask must both be [N, L], got {tuple(response_ids.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    if response_ids.shape[0] != len(batch) * group_size:
        raise ValueError(
            f"{response_ids.shape[0]} responses for {len(batch)} prompts x group_size {group_size}"
        )


def response_logprobs(
    model,
    batch: PolicyBatch,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    group_size: int,
    temperature: float = 1.0,
    return_entropy: bool = False,
    *,
    shared_prefix: bool = True,
):
    """Per-token log-probs (and optionally entropies) of given responses; differentiable.

    Args:
        batch: B prompts (any padding side).
        response_ids: [N, L] with N = B * group_size; row i answers prompt i // group_size.
        response_mask: [N, L] 1 = real response token (a prefix of each row, ending at EOS).
        temperature: T of softmax(logits / T); use the sampling temperature.
        shared_prefix: True (default): each prompt is computed once and its G responses attend to
            that one copy (:func:`shared_prefix_logprobs`); False: the plain path, N rows of
            [prompt | response] (:func:`plain_logprobs`). Same results (tests/test_perf_parity.py).
            Under transformers' own gradient checkpointing (``model.gradient_checkpointing_enable``,
            which drops caches) the plain path is used whatever this flag says.

    Returns:
        logp [N, L] float32 (and entropy [N, L] float32 when ``return_entropy``). Positions where
        response_mask is 0 hold the values of whatever token is there; callers mask them.
    """
    _check_responses(batch, response_ids, response_mask, group_size)
    # transformers' checkpointing (a ``gradient_checkpointing`` flag on its layers) drops caches
    hf_checkpointing = (model.training and torch.is_grad_enabled()
                        and any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()))
    if shared_prefix and not hf_checkpointing:
        return shared_prefix_logprobs(model, batch, response_ids, response_mask, group_size,
                                      temperature, return_entropy)
    return plain_logprobs(model, batch, response_ids, response_mask, group_size, temperature,
                          return_entropy)


def _prompt_embeddings(model, batch: PolicyBatch, group_size: int) -> torch.Tensor:
    """Input embeddings [B * group_size, P, hidden] of the (left-aligned) prompts, image slots filled.

    Built here rather than inside forward: image features go into the PROMPT's image slots only. A
    sampled response may contain an image-placeholder id; during decoding it was embedded as a
    plain token, so it must be here too (forward would count it as a slot). Each image is encoded
    once; with group_size > 1 its features are shared by the G copies of its prompt.
    """
    per_image = image_embeddings(model, batch)  # B tensors [tokens_i, hidden]
    shared = torch.cat([per_image[i // group_size] for i in range(len(batch) * group_size)])
    input_ids = batch.input_ids.repeat_interleave(group_size, 0)  # [B*G, P]
    image_slots = input_ids == model.config.image_token_id  # [B*G, P]
    if int(image_slots.sum()) != shared.shape[0]:
        raise ValueError(f"{int(image_slots.sum())} image slots in the prompts but {shared.shape[0]} image features")
    embeds = model.get_input_embeddings()(input_ids)  # [B*G, P, hidden]
    return embeds.masked_scatter(image_slots.unsqueeze(-1), shared.to(embeds.dtype))


def plain_logprobs(model, batch, response_ids, response_mask, group_size, temperature=1.0,
                   return_entropy=False):
    """The plain path: N rows of [prompt | response], prompt computed G times (the reference).

    One forward over [N, P + L] (positions [3, N, P + L]); logits of the last L + 1 columns only.
    """
    batch = left_align(batch)
    num_rows, resp_len = response_ids.shape
    pos, next_pos = prompt_positions(model, batch)  # [3, B, P], [B]
    pos = pos.repeat_interleave(group_size, dim=1)  # [3, N, P]
    steps = torch.arange(resp_len, device=batch.device)
    resp_pos = (next_pos.repeat_interleave(group_size)[:, None] + steps)  # [N, L]
    position_ids = torch.cat([pos, resp_pos.unsqueeze(0).expand(3, -1, -1)], dim=2)  # [3, N, P+L]
    attention_mask = torch.cat(
        [batch.attention_mask.repeat_interleave(group_size, 0), response_mask.to(batch.attention_mask.dtype)], 1
    )  # [N, P+L]
    prompt_embeds = _prompt_embeddings(model, batch, group_size)  # [N, P, hidden]
    inputs_embeds = torch.cat([prompt_embeds, model.get_input_embeddings()(response_ids)], 1)  # [N, P+L, hidden]
    out = model(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=resp_len + 1,  # hidden states of the last L+1 columns only
    )
    # column P-1+t predicts response token t: drop the last column's prediction
    logits = out.logits[:, :-1]  # [N, L, V]
    logp = token_logprobs(logits, response_ids, temperature)
    if return_entropy:
        return logp, token_entropy(logits, temperature)
    return logp


class _CaptureLayer(DynamicLayer):
    """Cache layer for the prompt pass: keeps the LAST keys/values it was given and returns them.

    Overwriting instead of appending makes it safe under non-reentrant activation checkpointing:
    the backward replay of a block calls ``update`` again with the same values and gets the same
    shapes back (an appending cache would double the prompt).
    """

    def update(self, key_states, value_states, *args, **kwargs):
        self.is_initialized = True
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class _SharedPrefixLayer(DynamicLayer):
    """Cache layer for the response pass: a fixed prefix [N, kv_heads, P, head_dim] that is never written.

    ``update`` returns cat(prefix, new) along the sequence without storing anything, so a replay
    (activation checkpointing) sees exactly what the first pass saw.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.is_initialized = True
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, *args, **kwargs):
        return (torch.cat([self.keys, key_states], dim=-2),  # [N, kv_heads, P + L', head_dim]
                torch.cat([self.values, value_states], dim=-2))


def shared_prefix_logprobs(model, batch, response_ids, response_mask, group_size, temperature=1.0,
                           return_entropy=False):
    """Training forward where the G responses of a prompt attend to ONE copy of the prompt.

    1. Prompt pass, B rows: ``inputs_embeds`` [B, P] (each image encoded once), positions
       [3, B, P]; its keys/values are captured per layer ([B, kv_heads, P, head_dim]) and the logits
       of the last column kept: they predict response token 0 of each of the G samples.
    2. The captured keys/values are expanded to N = B * G rows with ``repeat_interleave``
       (differentiable: the backward sums the G rows' gradients into the one prompt).
    3. Response pass, N rows: response tokens 0..L-2 (token L-1 predicts nothing we need) at
       positions ``next_pos + t`` on the three rotary axes, attending to the expanded prefix
       (attention mask [N, P + L - 1] = prompt mask, then response mask). Its logits [N, L-1, V]
       predict response tokens 1..L-1. With L = 1 the pass still runs, on token 0 (W = 1 column
       instead of L - 1 = 0), and its one prediction is dropped from the result but stays in the
       autograd graph (a zero gradient): the model is called the same number of times, forward
       and backward, whatever the response lengths, so under FSDP2 every rank issues the same
       all-gathers and reduce-scatters even when all responses of one rank are one token long.
    4. Log-probs by ``grpo.token_logprobs`` (chunked) on each of the two logit tensors; the
       results [N, 1] and [N, W] are concatenated (not the logits) and cut to [N, L].

    Why prefix sharing rather than packing. Seg-Zero prompts are ~1000 tokens (900 of them image
    tokens) and answers ~300: the plain path computes N * (P + L) = G * 1300 token positions per
    prompt, this one P + G * L = 1000 + G * 300, i.e. 10400 -> 3400 for G = 8 (3.1x fewer MLP and
    projection FLOPs; attention likewise). Packing [prompt, response] segments without padding
    would still compute each prompt G times unless the responses of a group are packed after one
    prompt, which needs a tree-shaped (block) attention mask: sdpa has no variable-length kernel, so
    that mask is a dense [T, T] boolean tensor and sdpa falls back to its slow math kernel. Prefix
    sharing keeps ordinary causal masks, so sdpa / flash-attention run their fast kernels. What
    remains is the padding inside each pass: prompts of one batch differ by the query length only
    (tens of tokens), responses are padded to the longest of the batch (callers can sort rows by
    length into micro-batches to cut it).

    Exactness: the same arithmetic as :func:`plain_logprobs` (the prompt's hidden states of the G
    copies there are identical to the one copy here); parity of log-probs and of the gradients on
    every parameter is tested in fp32. Under FSDP2 this calls the root ``forward`` twice: the root
    must keep its parameters gathered between them (``reshard_after_forward=False`` on the root,
    as grpo.parallel.shard_model does).
    """
    batch = left_align(batch)
    num_rows, resp_len = response_ids.shape
    num_layers = model.config.text_config.num_hidden_layers
    pos, next_pos = prompt_positions(model, batch)  # [3, B, P], [B]

    # 1. prompt pass: B rows, once
    capture = Cache(layers=[_CaptureLayer() for _ in range(num_layers)])
    out = model(
        inputs_embeds=_prompt_embeddings(model, batch, 1),  # [B, P, hidden]
        attention_mask=batch.attention_mask,
        position_ids=pos,
        **{CACHE_KWARG: capture},
        use_cache=True,
        logits_to_keep=1,
    )
    first = out.logits[:, -1:].repeat_interleave(group_size, 0)  # [N, 1, V]: predicts token 0
    logp_first = token_logprobs(first, response_ids[:, :1], temperature)  # [N, 1]
    ent_first = token_entropy(first, temperature) if return_entropy else None

    # 2. expand the prompt keys/values to the N rows (samples of a prompt adjacent)
    prefix = Cache(layers=[
        _SharedPrefixLayer(layer.keys.repeat_interleave(group_size, 0),  # [N, kv_heads, P, head_dim]
                           layer.values.repeat_interleave(group_size, 0))
        for layer in capture.layers
    ])
    del capture, out

    # 3. response pass: tokens 0..W-1 on top of the shared prefix, W = L-1 (1 when L = 1: step 3)
    width = max(resp_len - 1, 1)
    inputs = response_ids[:, :width]  # [N, W]
    targets = response_ids[:, 1:] if resp_len > 1 else inputs  # [N, W]; for L = 1 a stand-in, dropped
    steps = torch.arange(width, device=batch.device)
    resp_pos = next_pos.repeat_interleave(group_size)[:, None] + steps  # [N, W]
    attention_mask = torch.cat(
        [batch.attention_mask.repeat_interleave(group_size, 0),
         response_mask[:, :width].to(batch.attention_mask.dtype)], 1,
    )  # [N, P + W]
    out = model(
        inputs_embeds=model.get_input_embeddings()(inputs),  # [N, W, hidden]
        attention_mask=attention_mask,
        position_ids=resp_pos.unsqueeze(0).expand(3, -1, -1),  # [3, N, W]
        **{CACHE_KWARG: prefix},
        use_cache=True,
    )
    logits = out.logits  # [N, W, V]: column t predicts response token t + 1
    logp = torch.cat([logp_first, token_logprobs(logits, targets, temperature)], 1)[:, :resp_len]  # [N, L]
    if return_entropy:
        return logp, torch.cat([ent_first, token_entropy(logits, temperature)], 1)[:, :resp_len]
    return logp


# ----------------------------------------------------------------------------------------------
# The policy object


@dataclass
class Rollout:
    """G sampled responses for each of B prompts (samples of one prompt are adjacent rows).

    Attributes:
        response_ids: [N, L] N = B * G; after a row's EOS the ids are pad.
        response_mask: [N, L] 1 up to and including the first EOS (any of ``eos_token_ids``).
        logp: [N, L] float32 log-probs of the sampled tokens under softmax(logits / T).
        texts: N decoded completions (special tokens removed).
        batch: the B prompts.
        group_size: G.
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logp: torch.Tensor
    texts: list[str]
    batch: PolicyBatch
    group_size: int


class ResponseLogProbs(nn.Module):
    """The training forward as a module: ``forward(...)`` = :func:`response_logprobs` of ``self.model``.

    Why a module: under FSDP2 the trainer shards each vision and decoder block, then THIS module as
    the root (grpo.parallel.shard_model). The training forward calls pieces of the model outside
    the model's own ``forward`` (the vision tower, the input embedding, the decoder with a prefix
    cache); as the root's ``forward`` they all run with the root's parameters gathered, and the
    backward hooks cover them. Calling it is calling :func:`response_logprobs` (same arguments,
    same result), sharded or not.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: PolicyBatch, response_ids: torch.Tensor, response_mask: torch.Tensor,
                group_size: int, temperature: float = 1.0, return_entropy: bool = False):
        out = response_logprobs(self.model, batch, response_ids, response_mask, group_size,
                                temperature=temperature, return_entropy=return_entropy)
        # FSDP2 hooks the root's outputs for its backward; a view output could lose that hook to a
        # later in-place op, so views ([N, L] slices of a wider result) are returned as copies
        own = [t if t._base is None else t.clone() for t in (out if return_entropy else (out,))]
        return tuple(own) if return_entropy else own[0]


class SegZeroPolicy:
    """Qwen2.5-VL + its processor + the prompt variant: the object the trainer and pipeline use.

    ``model`` is the Hugging Face model (decoding, export); ``logprobs`` is the training forward
    module around it (:class:`ResponseLogProbs`), the unit the trainer shards and checkpoints.
    """

    def __init__(self, model, processor, *, with_example: bool = True, think: bool = True, task: str = "single"):
        self.model = model
        self.logprobs = ResponseLogProbs(model)
        self.processor = processor
        self.with_example = with_example
        self.think = think
        self.task = check_task(task)  # "single" (SPEC 2) or "multi" (the object-list prompt, SPEC 9)
        tok = processor.tokenizer
        self.eos_token_id = int(tok.convert_tokens_to_ids("<|im_end|>"))
        # Every id that ends a response: <|im_end|> first, then those of the generation config
        # (Qwen2.5-VL-Instruct: [<|im_end|>, <|endoftext|>]), as transformers' generate stops.
        config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        config_eos = [] if config_eos is None else [config_eos] if isinstance(config_eos, int) else list(config_eos)
        self.eos_token_ids = list(dict.fromkeys([self.eos_token_id, *map(int, config_eos)]))
        self.pad_token_id = int(tok.pad_token_id if tok.pad_token_id is not None else self.eos_token_id)

    @classmethod
    def from_pretrained(cls, name_or_path, *, with_example=True, think=True, task="single", **load_kwargs):
        model, processor = load_policy(name_or_path, **load_kwargs)
        return cls(model, processor, with_example=with_example, think=think, task=task)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, images, queries, *, padding_side: str = "left") -> PolicyBatch:
        return prepare_inputs(
            self.processor, images, queries, with_example=self.with_example, think=self.think, task=self.task,
            padding_side=padding_side,
        ).to(self.device)

    def decode(self, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
        """Texts of the masked responses, special tokens (EOS) removed."""
        rows = [ids[: int(n)].tolist() for ids, n in zip(response_ids.cpu(), response_mask.sum(-1).cpu())]
        return self.processor.tokenizer.batch_decode(rows, skip_special_tokens=True)

    def response_logprobs(self, batch, response_ids, response_mask, group_size, temperature=1.0,
                          return_entropy=False):
        return self.logprobs(batch, response_ids, response_mask, group_size,
                             temperature=temperature, return_entropy=return_entropy)

    def rollout(self, images, queries, group_size: int, *, max_new_tokens: int, temperature: float = 1.0,
                top_p: float = 1.0, greedy: bool = False,
                generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Rollout:
        """G responses per (image, query), sampled (or greedy) with the shared-prefix engine.

        ``generator``: one for the batch or one per prompt (see :func:`models.rollout.generate`)."""
        from models.rollout import generate  # models.rollout imports this module

        batch = self.prepare(images, queries)
        out = generate(
            self.model, batch, group_size, max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id, greedy=greedy,
            temperature=temperature, top_p=top_p, generator=generator,
        )
        texts = self.decode(out.response_ids, out.response_mask)
        return Rollout(out.response_ids, out.response_mask, out.logp, texts, batch, group_size)

    def complete(self, images, queries, *, max_new_tokens: int = 1024, greedy: bool = True,
                 temperature: float = 1.0, top_p: float = 1.0) -> list[str]:
        """One completion per (image, query): greedy by default (SPEC section 1 step 2)."""
        return self.rollout(images, queries, 1, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_p=top_p, greedy=greedy).texts
