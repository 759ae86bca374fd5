"""Checkpoints: exact round trip of the per-rank state without pickle, and hostile directories.

In-process, one rank, no process group (torch.distributed.checkpoint saves as a single process).
"""
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from grpo.checkpoint import COMPLETE, latest_checkpoint, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _model_and_optimizer(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).square().sum().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_restores_weights_optimizer_rng_and_extra(tmp_path):
    model, optimizer = _model_and_optimizer(0)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    final = save_checkpoint(tmp_path, 7, model, optimizer, {"scheduler": {"last_epoch": 7}, "data_position": 56})
    assert final.name == "step_000007"
    assert sorted(os.listdir(final)) == [".metadata", "COMPLETE", "__0_0.distcp", "extra_rank00000.json",
                                         "rng_rank00000.safetensors"]
    expected = (random.random(), np.random.rand(), torch.rand(1).item())  # the draws after the save

    fresh, fresh_opt = _model_and_optimizer(5)
    extra = load_checkpoint(latest_checkpoint(tmp_path), fresh, fresh_opt)
    assert extra == {"step": 7, "scheduler": {"last_epoch": 7}, "data_position": 56}
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    assert torch.equal(fresh_opt.state[fresh.weight]["exp_avg"], optimizer.state[model.weight]["exp_avg"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


class _Payload:
    """A pickle that, when loaded by an unrestricted unpickler, creates the folder ``target``."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_planted_pickle_in_a_checkpoint_is_refused_and_never_loaded(tmp_path):
    model, optimizer = _model_and_optimizer(0)
    final = save_checkpoint(tmp_path, 2, model, optimizer, {})
    target = tmp_path / "pwned"
    with open(final / "extra_rank00000.pt", "wb") as f:  # unpickling it calls os.makedirs(target)
        pickle.dump(_Payload(str(target)), f)
    with pytest.raises(ValueError, match=r"holds files the trainer did not write: \['extra_rank00000.pt'\]"):
        load_checkpoint(final, model, optimizer)
    assert not target.exists()

    os.remove(final / "extra_rank00000.pt")
    (final / "notes").mkdir()
    with pytest.raises(ValueError, match=r"did not write: \['notes/'\].*trusted input"):
        load_checkpoint(final, model, optimizer)


def test_unreadable_state_files_are_a_clear_error(tmp_path):
    model, optimizer = _model_and_optimizer(0)
    final = save_checkpoint(tmp_path, 2, model, optimizer, {})
    (final / "extra_rank00000.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable extra_rank00000.json"):
        load_checkpoint(final, model, optimizer)
    (final / "extra_rank00000.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="is not a saved training state"):
        load_checkpoint(final, model, optimizer)
    os.remove(final / "rng_rank00000.safetensors")
    with pytest.raises(ValueError, match="resume with the same number of processes"):
        load_checkpoint(final, model, optimizer)


def test_latest_only_follows_step_folders_inside_the_root(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step_000002", "step_000010"):
        (root / name).mkdir(parents=True)
        (root / name / COMPLETE).write_text("x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / COMPLETE).write_text("x")
    (root / "latest").write_text("../elsewhere\n")
    assert latest_checkpoint(root) == root / "step_000010"  # numeric order, the pointer ignored
    (root / "step_x").mkdir()
    (root / "step_x" / COMPLETE).write_text("x")
    assert latest_checkpoint(root) == root / "step_000010"


def test_non_finite_weights_are_never_exported(tmp_path):
    from grpo.checkpoint import TrainingDiverged, export_hf, nonfinite_parameters

    model, _ = _model_and_optimizer(0)
    assert nonfinite_parameters(model) == []
    with torch.no_grad():
        model.bias[1] = float("nan")
    assert nonfinite_parameters(model) == ["bias"]
    with pytest.raises(TrainingDiverged, match=r"refusing to export .*hf_export: 1 parameter tensors hold NaN "
                                               r"or inf \(e.g. \['bias'\]\)"):
        export_hf(tmp_path / "hf_export", model, None)
    assert list(tmp_path.iterdir()) == []
