"""Loading a Qwen2.5-VL checkpoint: model and processor, with the path checked before heavy work.

:func:`load_policy` takes a hub id, a downloaded directory, or our own export; bf16 on GPU, fp32 on
CPU; sdpa / flash-attention 2 / eager attention; the processor with optional min/max pixels.
Missing weights are reported before anything big is read; a damaged *.safetensors file is reported
as a ValueError naming it.
"""
from __future__ import annotations

import importlib.util
import os
import re

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from models.vision_attention import use_windowed_vision_attention

_WEIGHT_FILES = re.compile(r".*\.(safetensors|bin)$|.*\.index\.json$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ATTENTION = ("sdpa", "flash_attention_2", "eager")


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

    Raises FileNotFoundError / ValueError for a path that cannot hold a checkpoint
    (:func:`check_checkpoint`), and ValueError naming the file for a *.safetensors weights file
    that safetensors cannot read (e.g. truncated).
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
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            name_or_path, dtype=torch_dtype, attn_implementation=attn_implementation
        )
    except SafetensorError as exc:  # a truncated or damaged *.safetensors file
        raise ValueError(damaged_weights_message(name_or_path, exc)) from exc
    if attn_implementation == "sdpa":
        use_windowed_vision_attention(model)  # one attention call per vision block, not per window
    model = model.to(device)
    if device == "cpu":
        own_aligned_storage(model)
    return model.eval(), processor


def damaged_weights_message(name_or_path: str, exc: Exception) -> str:
    """What to say when ``from_pretrained`` fails with ``exc`` (a SafetensorError) on the weights of
    ``name_or_path``: names the *.safetensors files of a local directory whose header safetensors
    cannot read (each is opened, nothing is loaded), else the checkpoint."""
    cause = " ".join(str(exc).split())
    bad = []
    if os.path.isdir(name_or_path):
        for name in sorted(os.listdir(name_or_path)):
            if name.endswith(".safetensors"):
                try:
                    with safe_open(os.path.join(name_or_path, name), framework="pt"):
                        pass
                except (SafetensorError, OSError):
                    bad.append(os.path.join(name_or_path, name))
    where = ", ".join(repr(b) for b in bad) if bad else f"a *.safetensors file of {name_or_path!r}"
    return (f"{where} is not a readable safetensors file ({cause}); it may be truncated (an interrupted "
            f"download or copy): download or copy the checkpoint again")


#: byte alignment of the storage that CPU kernels get their fastest (and reproducible) path on
_ALIGNMENT = 64


def own_aligned_storage(model: torch.nn.Module) -> int:
    """Copy every parameter and buffer of ``model`` whose data does not start on a 64-byte boundary
    into fresh storage (which torch allocates aligned); returns how many were copied.

    ``from_pretrained`` can leave CPU weights as views into the buffer the checkpoint file was read
    into (transformers 5.25: every tensor of a safetensors file at the same offset, 24 bytes past a
    64-byte boundary). CPU matmul kernels round differently for operands at such addresses (the
    response log-probs of the tiny model move by 1e-6), so the same weights would compute different
    numbers here than when models.weights loads them into FSDP2 shards. With owned, aligned storage
    both paths compute the same numbers bit for bit, and the model no longer holds the file's
    buffer.
    """
    copied = 0
    with torch.no_grad():
        for module in model.modules():
            for name, t in list(module._parameters.items()) + list(module._buffers.items()):
                if t is None or t.device.type != "cpu" or t.data_ptr() % _ALIGNMENT == 0:
                    continue
                fresh = t.detach().clone(memory_format=torch.contiguous_format)
                if name in module._parameters:
                    t.data = fresh  # keeps the Parameter object, so tied weights stay tied
                else:
                    module._buffers[name] = fresh
                copied += 1
    return copied


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
