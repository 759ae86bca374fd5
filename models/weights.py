"""Qwen2.5-VL weights on disk: build on the meta device, load a checkpoint shard file by shard file,
and write randomly initialised checkpoints of the real 3B / 7B shapes.

Loading for training (train.py, real checkpoints), in this order:

1. :func:`build_on_meta` -- the model class from ``config.json`` with every PARAMETER on the meta
   device (no memory) and every buffer real (the rotary ``inv_freq`` tables are computed in
   ``__init__`` and are not in checkpoints).
2. the caller shards it (FSDP2 ``fully_shard``), then :func:`materialize` allocates only this
   rank's shards on the device (``to_empty``) and puts the buffers back.
3. :func:`load_weights` reads the ``*.safetensors`` files ONE AT A TIME (CPU memory: one file, at
   most ~4-5 GB for the released checkpoints) and copies each tensor into the local shard of its
   parameter (``set_model_state_dict`` with ``full_state_dict=True``: each rank keeps its slice).

So a rank never holds the whole model on its device, only its shards plus one tensor in flight
(``transformers``' ``from_pretrained`` followed by sharding puts the whole model on every GPU
first: 15 GB for 7B in bf16). The result equals ``from_pretrained`` + sharding exactly (tested).

Checkpoint names. Released Qwen2.5-VL checkpoints (and ``save_pretrained`` of transformers 5) use
the original names ``model.layers.*``, ``model.embed_tokens.*``, ``model.norm.*``, ``visual.*``,
``lm_head.*``; the module tree of transformers 5 is ``model.language_model.*`` / ``model.visual.*``
/ ``lm_head.*``. :func:`module_name` maps one to the other; names already in the module layout
pass unchanged. A checkpoint that leaves a parameter unset (other than an ``lm_head`` tied to the
embedding) or has tensors of no parameter is refused with the names.
"""
from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

_LEGACY_TEXT = re.compile(r"^model\.(?!language_model\.|visual\.)")
_LEGACY_VISION = re.compile(r"^visual\.")


def module_name(checkpoint_name: str) -> str:
    """Checkpoint tensor name -> parameter name in transformers 5's Qwen2.5-VL module tree.

    ``model.layers.0.mlp.up_proj.weight`` -> ``model.language_model.layers.0.mlp.up_proj.weight``;
    ``visual.blocks.0.norm1.weight`` -> ``model.visual.blocks.0.norm1.weight``; others unchanged.
    """
    if _LEGACY_VISION.match(checkpoint_name):
        return "model." + checkpoint_name
    if _LEGACY_TEXT.match(checkpoint_name):
        return "model.language_model." + checkpoint_name[len("model."):]
    return checkpoint_name


def weight_files(path: str | os.PathLike) -> list[str]:
    """The safetensors files of a checkpoint directory, in the index's order (or the single file)."""
    path = os.fspath(path)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no 'weight_map' object; the index file is damaged")
        files = list(dict.fromkeys(weight_map.values()))
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{path!r} has no *.safetensors weights (other formats are not read "
                                "by the sharded loader; convert with save_pretrained)")
    missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise FileNotFoundError(f"{path!r}: weight files named by the index are missing: {missing}")
    return [os.path.join(path, f) for f in files]


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside the block, every parameter a module registers is created on the meta device (shape
    and dtype only); buffers are created normally."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            kind = type(module._parameters[name])
            module._parameters[name] = kind(module._parameters[name].to("meta"),
                                            requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build_on_meta(config, *, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa") -> nn.Module:
    """Qwen2_5_VLForConditionalGeneration of ``config`` with parameters on meta, buffers real."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from models.vision_attention import use_windowed_vision_attention

    config._attn_implementation = attn_implementation
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in the master dtype
    try:
        with parameters_on_meta():
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    if attn_implementation == "sdpa":
        use_windowed_vision_attention(model)
    model.tie_weights()  # lm_head IS the embedding when the config ties them (3B; not 7B)
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    assert tied == bool(config.tie_word_embeddings), "lm_head / embedding tying does not match the config"
    return model


def materialize(model: nn.Module, device: torch.device | str, buffer_device: torch.device | str | None = None
                ) -> nn.Module:
    """Allocate the (possibly sharded) meta parameters on ``device`` (uninitialised) and put the
    real buffers on ``buffer_device`` (default ``device``). Call after ``fully_shard`` so that only
    this rank's shards are allocated. With FSDP2 CPU offload the parameters live on the CPU while
    the buffers (rotary tables) must be where the compute is: ``device="cpu"``,
    ``buffer_device="cuda"``."""
    buffers = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    first_of: dict[int, str] = {}
    tied = []  # (name, name of the parameter it shares) e.g. lm_head.weight -> the embedding
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first_of:
            tied.append((name, first_of[id(p)]))
        else:
            first_of[id(p)] = name
    model.to_empty(device=device)
    for name, source in tied:  # to_empty of a plain module makes a new tensor per module: tie again
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        if getattr(module, leaf) is not model.get_parameter(source):
            setattr(module, leaf, model.get_parameter(source))
    for name, value in buffers.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        module._buffers[leaf] = value.to(buffer_device or device)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike, *, log=None) -> dict:
    """Copy a checkpoint into ``model``'s parameters, one safetensors file at a time.

    ``model``: materialised (not meta), sharded with FSDP2 or not. Every rank reads every file and
    keeps its own slices. Returns {"files": n, "tensors": n, "seconds": s}. ValueError names the
    parameters the checkpoint misses and the tensors that match no parameter.
    """
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    params = {_state_dict_name(name) for name, _ in model.named_parameters(remove_duplicate=False)}
    tied = {_state_dict_name(name) for name in _tied_names(model)}
    seen: set[str] = set()
    unexpected: list[str] = []
    start = time.perf_counter()
    files = weight_files(path)
    for i, file in enumerate(files):
        tensors = load_file(file, device="cpu")
        part = {}
        for key, value in tensors.items():
            name = module_name(key)
            if name in params:
                part[name] = value
            else:
                unexpected.append(key)
        del tensors
        seen.update(part)  # before the call: set_model_state_dict adds the model's other keys to ``part``
        set_model_state_dict(model, part, options=StateDictOptions(full_state_dict=True, strict=False))
        del part
        if log:
            log(f"loaded {os.path.basename(file)} ({i + 1}/{len(files)})")
    missing = sorted(params - seen - tied)
    if missing or unexpected:
        raise ValueError(f"checkpoint {os.fspath(path)!r} does not match the model: missing "
                         f"{missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)}), "
                         f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} "
                         f"({len(unexpected)})")
    return {"files": len(files), "tensors": len(seen), "seconds": time.perf_counter() - start}


def _state_dict_name(name: str) -> str:
    """Parameter name -> its state-dict key (activation checkpointing wraps blocks in a module
    whose name the state dict leaves out)."""
    return name.replace("_checkpoint_wrapped_module.", "")


def _tied_names(model: nn.Module) -> set[str]:
    """Parameter names that share storage with an earlier parameter (lm_head tied to the embedding)."""
    first: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied.add(name)
        else:
            first[id(p)] = name
    return tied


# --------------------------------------------------------------------------------------------------
# Random checkpoints of the real shapes (no weights can be downloaded here)


def random_checkpoint(out_dir: str | os.PathLike, shape: str, *, device: str = "cpu",
                      dtype: torch.dtype = torch.bfloat16, seed: int = 0, max_shard_size: str = "5GB") -> dict:
    """Write a randomly initialised Qwen2.5-VL checkpoint directory of ``shape`` ("3b", "7b" or
    "tiny") that :func:`models.loading.load_policy` and the sharded loader read like a released one.

    The processor is the tiny byte-level tokenizer + Qwen2.5-VL image processor (the real
    tokenizer files cannot be downloaded here), with the config's special-token ids set to that
    tokenizer's; the image processor's defaults give the real 900 image tokens per 840 x 840
    image. Parameters are built on ``device`` (fast random init on a GPU) and saved in ``dtype``.
    Returns {"params": n, "seconds": s, "bytes": on-disk size}.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    from models.tiny import build_tiny_qwen

    start = time.perf_counter()
    if shape == "tiny":
        model, processor = build_tiny_qwen(seed=seed)
    else:
        config, processor = real_shape_config(shape)
        torch.manual_seed(seed)
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    processor.save_pretrained(out_dir)
    params = sum(p.numel() for p in model.parameters())
    del model
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    return {"params": params, "seconds": time.perf_counter() - start, "bytes": size}


def real_shape_config(shape: str):
    """(config, processor) of a real shape with the tiny tokenizer's special-token ids.

    ``shape``: "3b" or "7b" (models/configs), or "3b-proxy" / "7b-proxy": the same widths,
    vocabulary and 840 x 840 image with 2 decoder and 2 vision blocks (runs on a CPU in minutes).
    """
    from models.configs import real_config_path
    from models.loading import config_from_file
    from models.tiny import real_shape_processor, tiny_qwen_config

    processor = real_shape_processor()
    proxy = shape.endswith("-proxy")
    config = config_from_file(real_config_path(shape.removesuffix("-proxy")))
    if proxy:  # the real widths, vocabulary and image size; 2 decoder and 2 vision blocks
        config.text_config.num_hidden_layers = 2
        if isinstance(getattr(config.text_config, "layer_types", None), list):
            config.text_config.layer_types = config.text_config.layer_types[:2]
        config.vision_config.depth = 2
        config.vision_config.fullatt_block_indexes = [1]  # block 0 windowed, block 1 full, as in the real tower
    ids = tiny_qwen_config(processor.tokenizer)
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        setattr(config, name, getattr(ids, name))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, name, getattr(ids.text_config, name))
    return config, processor
