"""Config, presets, validation, data sharding, checkpoint atomicity: the fast, in-process tests."""
import dataclasses
import json
import re
import types
import typing

import pytest
import torch

from grpo.checkpoint import COMPLETE, latest_checkpoint
from grpo.parallel import StepSampler
from grpo.recipe import (PRESETS, SECTIONS, build_config, build_parser, check_world_size, micro_batch_note,
                         parse_args, prompt_passes)


def test_overrides_flat_dotted_and_bare_bool():
    cfg = parse_args(["--max-steps", "7", "--grpo.kl_coef=0.02", "--resume", "--top-p", "0.9",
                      "--algo", "sft", "--output-dir", "x"])
    assert (cfg.train.max_steps, cfg.grpo.kl_coef, cfg.train.resume, cfg.rollout.top_p) == (7, 0.02, True, 0.9)
    assert (cfg.train.algo, cfg.train.output_dir, cfg.train.preset) == ("sft", "x", "tiny")
    # the resolved config round-trips through JSON
    again = type(cfg).from_dict(json.loads(cfg.to_json()))
    assert again == cfg


def test_every_preset_documents_its_launch_command():
    for name, fn in PRESETS.items():
        assert "train.py" in fn.__doc__, name
    help_text = build_parser().format_help()  # every field, with its value in the tiny preset and its help
    assert "--grpo.kl_coef VALUE [0.005] beta, weight of the KL-to-reference loss term" in " ".join(help_text.split())


@pytest.mark.parametrize("preset", ["seg_zero_3b", "seg_zero_7b"])
def test_real_presets_require_model_and_data_paths(preset):
    with pytest.raises(ValueError, match="model_path"):
        parse_args(["--preset", preset])
    with pytest.raises(ValueError, match="data_path"):
        parse_args(["--preset", preset, "--model-path", "/m"])
    cfg = parse_args(["--preset", preset, "--model-path", "/m", "--data-path", "/d"])
    # SPEC 8: 16 prompts, G = 8, lr 1e-6, KL 5e-3 k3, clip 0.2, 1 epoch of 9,000 samples
    assert (cfg.train.prompts_per_step, cfg.rollout.group_size, cfg.optim.lr) == (16, 8, 1e-6)
    assert (cfg.grpo.kl_coef, cfg.grpo.kl_estimator, cfg.grpo.clip_eps) == (5e-3, "k3", 0.2)
    assert cfg.train.max_steps == 562 and cfg.parallel.device == "cuda"
    # the released configs: micro-batches of one response -> seq-mean-token-mean; 1300 new tokens;
    # micro-batches of whole groups (G rows); bf16 compute
    assert (cfg.grpo.aggregation, cfg.rollout.max_new_tokens) == ("seq-mean-token-mean", 1300)
    assert cfg.grpo.micro_batch_size == cfg.rollout.group_size and cfg.parallel.mixed_precision
    assert (cfg.grpo.entropy_coef, cfg.optim.weight_decay, cfg.optim.max_grad_norm) == (1e-3, 0.01, 1.0)
    assert micro_batch_note(cfg, 8) is None


def test_tiny_preset_is_the_hard_reward_recipe_from_the_toy_checkpoint():
    cfg = build_config()
    assert (cfg.train.preset, cfg.grpo.aggregation, cfg.parallel.mixed_precision) == (
        "tiny", "seq-mean-token-mean", False)
    assert (cfg.model.model_path, cfg.model.sam2, cfg.train.warmstart_sft_steps) == ("toy", "toy", 0)
    assert (cfg.reward.soft_accuracy, cfg.reward.strict_format, cfg.rollout.temperature) == (False, True, 1.0)
    assert cfg.train.eval_every > 0 and cfg.data.val_path == "heldout" and cfg.data.heldout_size >= 64


def test_tiny_multi_preset_fits_six_objects_and_never_asks_for_nothing():
    from data import MultiObjectSynthetic
    from models.sft import sft_target
    from models.tiny import build_toy_tokenizer

    cfg = build_config(preset="tiny_multi")
    assert (cfg.train.task, cfg.data.data_path, cfg.model.model_path) == ("multi", "synthetic:4096:present", "toy")
    assert cfg.train.warmstart_sft_steps > 0 and cfg.train.eval_every > 0
    assert cfg.rollout.temperature == 0.7  # the departure its docstring measures (the default run samples at 1.0)
    # the longest answer of the scenes (6 objects) fits the response budget with its EOS
    tok = build_toy_tokenizer()
    scenes = MultiObjectSynthetic(300, seed=0, empty_fraction=0.0, min_shapes=6, max_shapes=6, multi_fraction=1.0)
    longest = max((scenes[i] for i in range(300)), key=lambda s: len(s.solution))
    assert len(longest.solution) == 6
    assert len(tok(sft_target(longest))["input_ids"]) + 1 <= cfg.rollout.max_new_tokens


def test_prompt_passes_and_the_micro_batch_note():
    # 2 prompts x G = 8: micro-batches of 4 -> [0-3] [4-7] (prompt 0) [8-11] [12-15] (prompt 1): 4;
    # of 8 -> 2; of 12 -> [0-11] (prompts 0, 1) + [12-15] (prompt 1): 3; of 16 -> 2
    assert [prompt_passes(2, 8, m) for m in (4, 8, 12, 16, 1)] == [4, 2, 3, 2, 16]
    # 2 strided mini-batches of 2 prompts x G = 4 (rows 0,2,4,6 and 1,3,5,7): micro-batches of 2
    # rows -> [0, 2] [4, 6] and [1, 3] [5, 7] -> 4 passes; of 4 rows -> 2 prompts in each -> 4
    assert prompt_passes(2, 4, 2, num_mini_batches=2) == 4 == prompt_passes(2, 4, 4, num_mini_batches=2)
    base = ["--preset", "seg_zero_3b", "--model-path", "/m", "--data-path", "/d"]
    cfg = parse_args(base + ["--micro-batch-size", "4"])  # 16 prompts on 8 ranks: 2 per rank
    note = micro_batch_note(cfg, 8)
    assert "micro_batch_size=4" in note and "4 prompt (and image) passes per rank instead of 2" in note
    assert micro_batch_note(parse_args(base + ["--micro-batch-size", "16"]), 8) is None
    assert micro_batch_note(parse_args(base + ["--group-size", "16"]), 8) is not None  # 8 < G = 16
    assert micro_batch_note(parse_args(base + ["--micro-batch-size", "4", "--algo", "sft"]), 8) is None


def test_print_config_prints_the_resolved_config_and_loads_nothing(capsys, tmp_path):
    import torch.distributed as dist

    import train

    out = tmp_path / "never"
    assert train.main(["--preset", "seg_zero_7b", "--model-path", "/no/model", "--data-path", "/no/data",
                       "--print-config", "--lr", "2e-6", "--output-dir", str(out)]) is None
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["preset"] == "seg_zero_7b" and printed["optim"]["lr"] == 2e-6
    assert printed["model"]["model_path"] == "/no/model" and printed["rollout"]["max_new_tokens"] == 1300
    assert printed["parallel"]["ref_cpu_offload"] is True
    assert type(parse_args([])).from_dict(printed) == parse_args(
        ["--preset", "seg_zero_7b", "--model-path", "/no/model", "--data-path", "/no/data", "--lr", "2e-6",
         "--output-dir", str(out)])
    assert not out.exists() and not dist.is_initialized()
    with pytest.raises(ValueError, match="lr"):  # still validated
        train.main(["--print-config", "--lr", "-1"])


@pytest.mark.parametrize("args,field", [
    (["--lr", "-1"], "lr"), (["--group-size", "1"], "group_size"), (["--top-p", "0"], "top_p"),
    (["--clip-eps", "1.5"], "clip_eps"), (["--kl-estimator", "k9"], "kl_estimator"),
    (["--max-steps", "0"], "max_steps"), (["--temperature", "nan"], "temperature"),
    (["--aggregation", "mean"], "aggregation"), (["--algo", "dpo"], "algo"),
    (["--resume", "maybe"], "resume"), (["--max-steps", "two"], "max_steps"),
])
def test_out_of_range_values_name_the_field(args, field):
    with pytest.raises(ValueError, match=field):
        parse_args(args)


FLOAT_FIELDS = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)
                if typing.get_type_hints(cls)[f.name] is float]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_non_finite_numbers_are_refused_naming_the_option(name, value):
    assert {"weight_decay", "adv_eps", "lr", "kl_coef"} <= set(FLOAT_FIELDS)
    option = "--" + name.replace("_", "-")
    with pytest.raises(ValueError, match=rf"^config field {name}={float(value)!r} \({option}\): "):
        parse_args([option, value])


def test_values_of_the_wrong_type_are_refused():
    # from a config.json (Config.from_dict) values arrive as JSON, not as command-line strings
    cfg = json.loads(build_config().to_json())
    for section, name, value, what in [("rollout", "group_size", [8], "expected an integer"),
                                       ("rollout", "group_size", 8.5, "expected an integer"),
                                       ("rollout", "group_size", True, "expected an integer"),
                                       ("optim", "lr", None, "expected a number"),
                                       ("train", "output_dir", 3, "expected text"),
                                       ("optim", "weight_decay", float("inf"), "must be a finite number")]:
        bad = json.loads(json.dumps(cfg))
        bad[section][name] = value
        with pytest.raises(ValueError, match=f"config field {name}=.*: {what}"):
            type(build_config()).from_dict(bad)


def test_unknown_option_and_preset():
    with pytest.raises(ValueError, match="unrecognized arguments: --learning-rate 1"):
        parse_args(["--learning-rate", "1"])
    with pytest.raises(ValueError, match="unknown preset"):
        parse_args(["--preset", "huge"])


def test_batch_not_divisible_across_ranks():
    cfg = build_config({"prompts_per_step": 3})
    check_world_size(cfg, 1)
    check_world_size(cfg, 3)
    with pytest.raises(ValueError, match="prompts_per_step=3 is not divisible by the 2 ranks"):
        check_world_size(cfg, 2)


def test_step_sampler_is_rank_split_of_one_global_order():
    # 10 samples, 4 prompts per step: step 2 covers stream positions 8..11 = epoch 0 [8, 9] and
    # epoch 1 [0, 1]; rank 0 of 2 takes positions 8, 9 and rank 1 takes 10, 11.
    one = StepSampler(10, 4, rank=0, world_size=1, seed=3)
    r0, r1 = (StepSampler(10, 4, rank=r, world_size=2, seed=3) for r in (0, 1))
    for step in range(5):
        assert r0.indices(step) + r1.indices(step) == one.indices(step)
    assert r0.positions(2) == [8, 9] and r1.positions(2) == [10, 11]
    assert sorted(one.stream_index(p) for p in range(10)) == list(range(10))  # an epoch is a permutation
    assert one.epoch(5) == 2.0  # 5 steps x 4 prompts / 10 samples
    with pytest.raises(ValueError, match="empty"):
        StepSampler(0, 4, 0, 1, 0)
    with pytest.raises(ValueError, match=r"rank 2 is not one of the 2 ranks \(0..1\)"):
        StepSampler(10, 4, 2, 2, 0)


def test_empty_dataset_is_a_clear_error(monkeypatch, tmp_path):
    import data
    import train

    monkeypatch.setattr(data, "open_dataset", lambda *a, **k: [])
    cfg = build_config({"data_path": str(tmp_path)})
    with pytest.raises(ValueError, match="training set is empty"):
        train.build_data(cfg, types.SimpleNamespace(world_size=1, rank=0))


def test_incomplete_checkpoint_is_never_latest(tmp_path):
    (tmp_path / "step_000002").mkdir()
    (tmp_path / "step_000002" / COMPLETE).write_text("2")
    (tmp_path / "step_000004.tmp").mkdir()  # a crash mid-write of step 4
    (tmp_path / "step_000006").mkdir()  # a folder without the marker
    assert latest_checkpoint(tmp_path).name == "step_000002"
    (tmp_path / "latest").write_text("step_000006\n")  # a pointer to an incomplete folder
    assert latest_checkpoint(tmp_path).name == "step_000002"
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_scheduler_warmup_then_cosine():
    import train

    cfg = build_config({"warmup_steps": 2, "lr_schedule": "cosine", "max_steps": 4, "lr": 1.0})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = train.build_scheduler(cfg, opt)
    lrs = []
    for _ in range(4):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    # warmup (s+1)/2: 0.5, 1.0; cosine over 2 steps: progress 0 -> 1.0, progress 0.5 -> 0.5
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.5])


class _ToyTrainModel(torch.nn.Module):
    """Stands in for the policy's training forward (models.forward.ResponseLogProbs, the module
    train.make_logprob_fn calls), on per-prompt features [L, 3] held in buffer.prompts."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(3, 5)

    def forward(self, features, response_ids, response_mask, group_size, temperature, return_entropy):
        from grpo import token_logprobs_and_entropy

        logits = self.head(features).expand(group_size, -1, -1)  # [G, L, V]
        logp, ent = token_logprobs_and_entropy(logits, response_ids, temperature)
        return (logp, ent) if return_entropy else logp


@pytest.mark.parametrize("epochs,minis", [(1, 1), (2, 1), (1, 2)])
def test_old_logprobs_are_the_trainers_own_forward(epochs, minis):
    import train
    from grpo import RolloutBuffer

    cfg = build_config({"ppo_epochs": epochs, "num_mini_batches": minis, "kl_coef": 0.0, "group_size": 2,
                        "micro_batch_size": 2})
    model = _ToyTrainModel()
    g = torch.Generator().manual_seed(1)
    buf = RolloutBuffer(
        response_ids=torch.randint(0, 5, (4, 3), generator=g), response_mask=torch.ones(4, 3),
        rollout_logp=torch.zeros(4, 3),  # deliberately NOT the policy's log-probs (a sampler mismatch)
        rewards=torch.tensor([0.0, 1.0, 1.0, 0.0]), advantages=torch.tensor([-1.0, 1.0, 1.0, -1.0]),
        group_ids=torch.tensor([0, 0, 1, 1]), prompts=[torch.randn(3, 3, generator=g) for _ in range(2)])
    with torch.no_grad():
        initial = train.make_logprob_fn(model, cfg, entropy=False)(buf)[0]  # log pi_old, before any step
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = train.update(model, opt, buf, cfg, train.build_update_config(cfg))
    assert metrics["optimizer_steps"] == epochs * minis
    if epochs * minis == 1:  # pi_old = the update's own forward: no extra pass, ratio exactly 1
        assert buf.old_logp is None
        assert metrics["clipfrac"] == 0 and metrics["approx_kl_old"] == 0
    else:  # pi_old = the trainer's own forward at the start of the update, at the sampling temperature
        torch.testing.assert_close(buf.old_logp, initial)
    # the sampler reported 0 everywhere: |logp_train - 0| over the 12 valid tokens
    assert metrics["rollout_logp_diff_mean"] == pytest.approx(initial.abs().mean().item(), rel=1e-6)
    assert metrics["rollout_logp_diff_max"] == pytest.approx(initial.abs().max().item(), rel=1e-6)


def test_read_sample_skips_unusable_samples_deterministically(capsys):
    import numpy as np

    import train
    from data.types import BadSampleError, Sample

    class Source:
        ids = ["bad-query", "empty-mask", "unreadable", "good"]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 2:
                raise BadSampleError("unreadable", "x.jpg", "cannot decode")
            mask = np.zeros((4, 4), np.uint8)
            if i == 3:
                mask[1, 2] = 1
            return Sample(id=self.ids[i], image=np.zeros((4, 4, 3), np.uint8),
                          query="..." if i == 0 else "the shape", mask=mask)

    class InOrder:  # stream position p -> dataset index p
        def stream_index(self, position):
            return position

    sample = train.read_sample(Source(), InOrder(), 0)
    assert sample.id == "good"
    # ground truth from the mask, in the 840 frame: pixel (x=2, y=1) of a 4 x 4 image
    # -> int(2 * 840 / 4 + 0.5) = 420, int(1 * 840 / 4 + 0.5) = 210
    assert sample.solution == {"bbox": [420, 210, 420, 210], "points": [[420, 210], [420, 210]]}
    out = capsys.readouterr().out
    assert "index 0" in out and "empty after normalisation" in out
    assert "index 1" in out and "index 2" in out and "cannot decode" in out


def test_read_sample_skips_a_lisa_empty_target(tmp_path, capsys):
    """An all-"flag" LISA file is an empty target: evaluation scores it, training has no box to
    take from it, so it is reported and the next stream position is used."""
    import numpy as np
    from PIL import Image

    import train
    from data import LisaReasonSeg

    for name, label in (("a", "Flag"), ("b", "target")):
        Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(tmp_path / f"{name}.jpg")
        (tmp_path / f"{name}.json").write_text(json.dumps({"text": ["the thing"], "is_sentence": False,
                                                           "shapes": [{"label": label, "points": [
                                                               [2, 1], [5, 1], [5, 2], [2, 2]]}]}))

    class InOrder:
        def stream_index(self, position):
            return position

    source = LisaReasonSeg(tmp_path)
    assert not source[0].mask.any()  # the reader keeps it (no BadSampleError)
    sample = train.read_sample(source, InOrder(), 0)
    assert sample.id == "b"
    # b: target x 2..5, y 1..2 of an 8 x 4 image; box [2, 1, 5, 2] -> x * 105, y * 210:
    # int(2 * 840 / 8 + 0.5) = 210, int(1 * 840 / 4 + 0.5) = 210, 525, 420
    assert sample.solution["bbox"] == [210, 210, 525, 420]
    out = capsys.readouterr().out
    assert "skipping bad sample at index 0" in out and "empty mask" in out


# ---------------------------------------------------------------------------------------------
# train.py's command line: a user mistake is one line on stderr and exit code 2, no traceback
# (in-process: every case below fails before the process group would be created)


def _user_mistakes(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["--group-size", "0"], "config field group_size=0 (--group-size): GRPO needs at least 2"),
        (["--lr", "nan"], "config field lr=nan (--lr): must be a finite number"),
        (["--lr", "1e39"], "config field lr=1e+39 (--lr): must be > 0 and representable in float32"),
        (["--warmstart-lr", "1e39"], "config field warmstart_lr=1e+39 (--warmstart-lr): must be > 0 and "
                                     "representable in float32"),
        (["--weight-decay", "inf"], "config field weight_decay=inf (--weight-decay): must be a finite number"),
        (["--adv-eps", "inf"], "config field adv_eps=inf (--adv-eps): must be a finite number"),
        (["--seed", "-1"], "config field seed=-1 (--seed): must be in [0, 8388608)"),
        (["--seed", str(2**23)], "config field seed=8388608 (--seed): must be in [0, 8388608)"),
        (["--data-seed", "-1"], "config field data_seed=-1 (--data-seed): must be in [0, 2**31)"),
        (["--min-pixels", "1000", "--max-pixels", "100"],
         "config field min_pixels=1000 (--min-pixels): must be <= max_pixels (100)"),
        (["--max-steps", "two"], "config field max_steps='two': expected a number (int)"),
        (["--resume", "maybe"], "config field resume='maybe': expected true or false"),
        (["--top-p", "0"], "config field top_p=0.0 (--top-p): must be in (0, 1]"),
        (["--kl-estimator", "k9"], "config field kl_estimator='k9' (--kl-estimator): use k1, k2 or k3"),
        (["--device", "tpu"], "config field device='tpu' (--device): use auto, cpu or cuda"),
        (["--preset", "huge"], "config field preset='huge': unknown preset"),
        (["--preset"], "argument --preset: expected one argument"),
        (["--learning-rate", "1"], "unrecognized arguments: --learning-rate 1"),
        (["stray"], "unrecognized arguments: stray"),
        (["--max-steps"], "argument --max-steps/--max_steps/--train.max_steps: expected one argument"),
        (["--preset", "seg_zero_3b"], "config field model_path='' (--model-path): a model path is required"),
        (["--preset", "seg_zero_3b", "--model-path", "/m"], "config field data_path='' (--data-path)"),
        (["--output-dir", str(a_file)], f"--output-dir {str(a_file)!r} exists and is not a directory"),
        (["--output-dir", str(a_file / "sub")], f"{str(a_file)!r} is not a directory"),
        (["--output-dir", "/sys/seg_zero_run"], "cannot write in '/sys'"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "config field device='cuda' but no CUDA device is available"))
    return cases


def test_user_mistakes_are_one_line_and_exit_code_2(tmp_path, capsys):
    import train

    cases = _user_mistakes(tmp_path)
    assert len(cases) >= 19
    for argv, expected in cases:
        run_dir = [] if "--output-dir" in argv else ["--output-dir", str(tmp_path / "run")]
        assert train.cli(run_dir + argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("error: "), (argv, err)
        assert expected in err, (argv, err)
    assert not (tmp_path / "run").exists()


def test_warm_start_export_is_reused_only_with_the_same_settings(tmp_path):
    import train

    cfg = build_config({"warmstart_sft_steps": 3, "seed": 1})
    export = tmp_path / "warmstart_sft"
    export.mkdir()
    with pytest.raises(ValueError, match=r"warmstart_sft holds a warm start made with unknown settings "
                                         r"\(no readable warmstart.json\); delete that folder"):
        train.check_warmstart_export(export, train.warmstart_settings(cfg))
    (export / "warmstart.json").write_text(json.dumps(train.warmstart_settings(cfg)))
    train.check_warmstart_export(export, train.warmstart_settings(cfg))  # same settings: reused
    for changed, key, then_now in [({"warmstart_sft_steps": 4}, "train.warmstart_sft_steps", "(3, 4)"),
                                   ({"seed": 2}, "train.seed", "(1, 2)"),
                                   ({"model_path": "/other"}, "model.model_path", f"({cfg.model.model_path!r}, '/other')")]:
        other = build_config({"warmstart_sft_steps": 3, "seed": 1, **changed})
        with pytest.raises(ValueError, match=re.escape(f"{{'{key}': {then_now}}}")):
            train.check_warmstart_export(export, train.warmstart_settings(other))
    # what does not change the warm start (the GRPO learning rate, the number of GRPO steps) is ignored
    train.check_warmstart_export(export, train.warmstart_settings(build_config(
        {"warmstart_sft_steps": 3, "seed": 1, "lr": 0.5, "max_steps": 7})))
