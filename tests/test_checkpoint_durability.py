"""grpo.checkpoint: damaged checkpoints are clear errors, saves are flushed to disk and never leave
a step missing, and a resume takes the newest complete checkpoint.

In-process, one rank, no process group (torch.distributed.checkpoint saves as a single process).
"""
import os
import shutil
from pathlib import Path

import pytest
import torch

from grpo import checkpoint as ckpt
from grpo.checkpoint import COMPLETE, check_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from helpers import crash_when_renaming, record_fsyncs

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _model_and_optimizer(seed, shape=(3, 2)):
    torch.manual_seed(seed)
    model = torch.nn.Linear(*shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, shape[0])).square().sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.fixture
def saved(tmp_path):
    model, optimizer = _model_and_optimizer(0)
    return save_checkpoint(tmp_path / "checkpoints", 2, model, optimizer, {})


def _damaged(saved, name, damage):
    copy = saved.parent / name
    shutil.copytree(saved, copy)
    damage(copy)
    return copy


def test_a_folder_missing_its_files_is_refused_before_loading(saved):
    for name, damage, expected in [
        ("no_metadata", lambda p: os.remove(p / ".metadata"), "has no .metadata"),
        ("no_shard", lambda p: os.remove(p / "__0_0.distcp"), r"has no model and optimizer shards"),
        ("no_marker", lambda p: os.remove(p / COMPLETE), "is incomplete"),
        ("no_rng", lambda p: os.remove(p / "rng_rank00000.safetensors"), "has no rng_rank00000.safetensors: it "
                   "is damaged.*resume with the same number"),
    ]:
        path = _damaged(saved, name, damage)
        with pytest.raises(ValueError, match=f"checkpoint {str(path)!r} " + expected):
            check_checkpoint(path, world_size=1)
        model, optimizer = _model_and_optimizer(1)
        with pytest.raises(ValueError, match=expected):
            load_checkpoint(path, model, optimizer)
    # a checkpoint of 1 rank lacks the state of rank 1
    with pytest.raises(ValueError, match=r"has no extra_rank00001.json / rng_rank00001.safetensors: it is damaged, "
                                         r"or was written by a run of fewer ranks than this run's 2"):
        check_checkpoint(saved, world_size=2)
    check_checkpoint(saved, world_size=1)


def test_what_torch_cannot_load_is_a_value_error_naming_the_checkpoint(saved, capsys):
    def truncate(p):
        data = (p / "__0_0.distcp").read_bytes()
        (p / "__0_0.distcp").write_bytes(data[: len(data) // 2])

    cases = [(_damaged(saved, "truncated", truncate), _model_and_optimizer(1), r"\(EOFError"),
             (_damaged(saved, "bad_metadata", lambda p: (p / ".metadata").write_bytes(b"junk")),
              _model_and_optimizer(1), r"metadata"),
             (saved, _model_and_optimizer(1, shape=(4, 2)), r"Size mismatch between saved torch.Size\(\[2, 3\]\)")]
    for path, (model, optimizer), cause in cases:
        with pytest.raises(ValueError, match=rf"checkpoint {str(path)!r} could not be loaded into this model and "
                                             rf"optimizer .*{cause}.*resume only with the model and settings"):
            load_checkpoint(path, model, optimizer)
    assert "Traceback" not in capsys.readouterr().err  # torch's own logged tracebacks are held back


def test_save_flushes_every_file_and_folder_it_writes(tmp_path, monkeypatch):
    paths = record_fsyncs(monkeypatch)
    model, optimizer = _model_and_optimizer(0)
    root = tmp_path / "checkpoints"
    final = save_checkpoint(root, 3, model, optimizer, {"data_position": 6})
    tmp = str(root / "step_000003.tmp")
    for name in ("extra_rank00000.json.tmp", "rng_rank00000.safetensors", "COMPLETE.tmp"):
        assert f"{tmp}/{name}" in paths, (name, paths)
    assert tmp in paths  # the folder's entries, before the rename
    assert str(root / "latest.tmp") in paths and str(root) in paths  # the pointer and the renames
    assert (root / "latest").read_text() == "step_000003\n" and (final / COMPLETE).is_file()


def test_resaving_a_step_keeps_the_old_folder_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    model, optimizer = _model_and_optimizer(0)
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 2, model, optimizer, {})
    save_checkpoint(root, 4, model, optimizer, {"first": True})
    save_checkpoint(root, 4, model, optimizer, {"second": True})  # resumed at the final step: saved again
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000002", "step_000004"]

    crash_when_renaming(monkeypatch, root / "step_000004.tmp")
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, 4, model, optimizer, {"third": True})
    monkeypatch.undo()
    # the step's earlier folder is still on disk, whole (set aside), and a resume finds a complete one
    assert (root / "step_000004.old" / COMPLETE).is_file()
    assert (root / "step_000004.tmp" / COMPLETE).is_file()
    assert latest_checkpoint(root) == root / "step_000002"
    # the next save of that step cleans up
    save_checkpoint(root, 4, model, optimizer, {"fourth": True})
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000002", "step_000004"]
    fresh, fresh_opt = _model_and_optimizer(1)
    assert load_checkpoint(latest_checkpoint(root), fresh, fresh_opt)["fourth"] is True


def test_latest_is_the_newest_complete_step_whatever_the_pointer_says(tmp_path):
    root = tmp_path
    for step in (2, 4, 6):
        (root / f"step_{step:06d}").mkdir()
    for step in (2, 4):
        (root / f"step_{step:06d}" / COMPLETE).write_text(f"{step}\n")
    (root / "latest").write_text("step_000002\n")  # a crash between step 4's rename and its pointer update
    assert latest_checkpoint(root) == root / "step_000004"  # step 6 is not complete: skipped
    (root / "latest").write_text("step_000006\n")
    assert latest_checkpoint(root) == root / "step_000004"
    os.remove(root / "latest")
    assert latest_checkpoint(root) == root / "step_000004"


def test_export_replaces_an_earlier_export_only_once_the_new_one_is_in_place(tmp_path, monkeypatch):
    from models.tiny import build_tiny_qwen

    model, processor = build_tiny_qwen(seed=0)
    out = tmp_path / "hf_export"
    ckpt.export_hf(out, model, processor, extra_files={"run.txt": "first"})
    paths = record_fsyncs(monkeypatch)
    crash_when_renaming(monkeypatch, tmp_path / "hf_export.tmp")
    with pytest.raises(KeyboardInterrupt):
        ckpt.export_hf(out, model, processor, extra_files={"run.txt": "second"})
    assert str(tmp_path / "hf_export.tmp" / "model.safetensors") in paths  # flushed before the rename
    assert (tmp_path / "hf_export.old" / "run.txt").read_text() == "first"
    monkeypatch.undo()
    ckpt.export_hf(out, model, processor, extra_files={"run.txt": "third"})
    assert (out / "run.txt").read_text() == "third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_export"]
    assert Path(out / "model.safetensors").is_file()
