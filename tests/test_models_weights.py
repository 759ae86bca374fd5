"""models.weights: checkpoint names, the meta-device build and the file-by-file sharded load."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.weights import build_on_meta, load_weights, materialize, module_name, random_checkpoint, weight_files

REPO = Path(__file__).resolve().parent.parent


def test_module_name_maps_released_names_to_the_module_tree():
    assert module_name("model.layers.0.mlp.up_proj.weight") == "model.language_model.layers.0.mlp.up_proj.weight"
    assert module_name("model.embed_tokens.weight") == "model.language_model.embed_tokens.weight"
    assert module_name("model.norm.weight") == "model.language_model.norm.weight"
    assert module_name("visual.blocks.3.attn.qkv.bias") == "model.visual.blocks.3.attn.qkv.bias"
    assert module_name("visual.merger.mlp.0.weight") == "model.visual.merger.mlp.0.weight"
    assert module_name("lm_head.weight") == "lm_head.weight"
    # names already in the module layout pass unchanged
    assert module_name("model.language_model.layers.1.self_attn.q_proj.weight") == \
        "model.language_model.layers.1.self_attn.q_proj.weight"
    assert module_name("model.visual.patch_embed.proj.weight") == "model.visual.patch_embed.proj.weight"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    info = random_checkpoint(path, "tiny")
    assert info["params"] == 207_584 and info["bytes"] > 0
    return path


def test_meta_build_and_file_by_file_load_equal_from_pretrained(tiny_ckpt):
    from models.loading import config_from_file, load_policy

    expected, _ = load_policy(str(tiny_ckpt), device="cpu")
    model = build_on_meta(config_from_file(tiny_ckpt / "config.json"))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {b.device.type for b in model.buffers()} == {"cpu"}  # rotary tables are computed, not loaded
    assert model.lm_head.weight is model.get_input_embeddings().weight  # the tiny config ties them
    materialize(model, "cpu")
    stats = load_weights(model, tiny_ckpt)
    assert stats["files"] == 1
    got = dict(model.state_dict())
    for name, value in expected.state_dict().items():
        assert torch.equal(got[name], value), name


def test_own_aligned_storage_moves_misaligned_views_and_keeps_ties():
    from models.loading import own_aligned_storage

    base = torch.arange(40, dtype=torch.float32)
    lin = torch.nn.Linear(4, 4, bias=False)
    lin.weight = torch.nn.Parameter(base[6:22].view(4, 4))  # 24 bytes past the buffer's start
    tied = torch.nn.Module()
    tied.a, tied.b = lin, torch.nn.Linear(4, 4, bias=False)
    tied.b.weight = lin.weight
    tied.register_buffer("table", base[1:5])
    assert lin.weight.data_ptr() % 64 == 24
    assert own_aligned_storage(tied) == 2  # the shared weight once, the buffer
    assert lin.weight.data_ptr() % 64 == 0 and tied.table.data_ptr() % 64 == 0
    assert tied.b.weight is tied.a.weight
    assert torch.equal(lin.weight, torch.arange(6, 22, dtype=torch.float32).view(4, 4))
    assert torch.equal(tied.table, torch.arange(1, 5, dtype=torch.float32))
    assert own_aligned_storage(tied) == 0


def test_load_policy_computes_what_the_meta_build_computes(tiny_ckpt):
    """The from_pretrained path (load_policy) and the meta build + file-by-file load give the same
    response log-probs bit for bit: load_policy's CPU weights are in owned, 64-byte-aligned storage."""
    import numpy as np

    from models.loading import config_from_file, load_policy
    from models.policy import SegZeroPolicy

    full = SegZeroPolicy(*load_policy(str(tiny_ckpt), device="cpu"))
    assert all(p.data_ptr() % 64 == 0 for p in full.model.parameters())
    model = build_on_meta(config_from_file(tiny_ckpt / "config.json"))
    materialize(model, "cpu")
    load_weights(model, tiny_ckpt)
    meta = SegZeroPolicy(model.eval(), full.processor)
    rs = np.random.RandomState(0)
    batch = full.prepare([rs.randint(0, 256, (840, 840, 3), dtype=np.uint8)], ["the red circle"])
    ids = torch.randint(0, 500, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(full.logprobs(batch, ids, mask, 2), meta.logprobs(batch, ids, mask, 2))


def test_sharded_files_and_index_are_read_in_order(tmp_path, tiny_ckpt):
    from models.loading import config_from_file

    path = tmp_path / "sharded"
    info = random_checkpoint(path, "tiny", max_shard_size="200KB")
    files = weight_files(path)
    assert len(files) > 1 and os.path.isfile(path / "model.safetensors.index.json")
    model = build_on_meta(config_from_file(path / "config.json"))
    materialize(model, "cpu")
    assert load_weights(model, path)["files"] == len(files)
    assert info["params"] == sum(p.numel() for p in model.parameters())


def test_a_checkpoint_that_does_not_match_is_refused_with_the_names(tmp_path, tiny_ckpt):
    from safetensors.torch import load_file, save_file

    from models.loading import config_from_file

    broken = tmp_path / "broken"
    broken.mkdir()
    tensors = load_file(tiny_ckpt / "model.safetensors")
    tensors.pop("model.norm.weight")
    tensors["visual.extra.weight"] = torch.zeros(2)
    save_file(tensors, broken / "model.safetensors")
    (broken / "config.json").write_text((tiny_ckpt / "config.json").read_text())
    model = build_on_meta(config_from_file(broken / "config.json"))
    materialize(model, "cpu")
    with pytest.raises(ValueError, match=r"missing \['model.language_model.norm.weight'\].*"
                                         r"unexpected \['visual.extra.weight'\]"):
        load_weights(model, broken)
    (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        weight_files(broken)


@pytest.mark.dist
def test_two_ranks_build_on_meta_and_load_shards_like_one_full_model(tiny_ckpt, tmp_path):
    """train.build_policy on 2 gloo ranks (meta build, FSDP2, file-by-file load) gives the log-probs
    of the unsharded from_pretrained model, exactly."""
    script = tmp_path / "worker.py"
    script.write_text(f'''
import numpy as np, torch, train
from grpo.parallel import init_distributed, shutdown
from grpo.recipe import build_config
from models.loading import load_policy
from models.policy import SegZeroPolicy
info = init_distributed("cpu")
cfg = build_config({{"model_path": "{tiny_ckpt}", "data_path": "synthetic", "device": "cpu", "activation_checkpointing": True,
                     "mixed_precision": False}}, preset="seg_zero_3b")
policy = train.build_policy(cfg, info, "{tiny_ckpt}", frozen=False)
full = SegZeroPolicy(*load_policy("{tiny_ckpt}", device="cpu"))
rs = np.random.RandomState(0)
batch = policy.prepare([rs.randint(0, 256, (840, 840, 3), dtype=np.uint8)], ["the red circle"])
ids = torch.randint(0, 500, (2, 5), generator=torch.Generator().manual_seed(0))
mask = torch.ones(2, 5, dtype=torch.long)
with torch.no_grad():
    got = policy.logprobs(batch, ids, mask, 2)
    want = full.logprobs(batch, ids, mask, 2)
assert torch.equal(got, want), (got - want).abs().max()
open(f"{tmp_path}/rank{{info.rank}}.equal", "w").close()
shutdown()
''')
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.equal")) == ["rank0.equal", "rank1.equal"]
