"""train.py end to end, in subprocesses: 2 gloo ranks == 1 rank, exact resume, artifacts, errors.

All runs: tiny random Qwen2.5-VL, synthetic data, CPU, a few tokens per response.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
# A step that moves the parameters by an amount proportional to the gradient (SGD, not AdamW whose
# first step is lr * sign(g) and would hide a wrong gradient scale). Random tiny policy: rewards are
# 0, so the gradient comes from the entropy bonus (and KL, 0 at the first step), normalised by the
# GLOBAL token count.
SMALL = ["--model-path", "tiny", "--sam2", "", "--warmstart-sft-steps", "0", "--heldout-size", "0",
         "--max-new-tokens", "6",
         "--group-size", "2", "--prompts-per-step", "2", "--micro-batch-size", "2",
         "--entropy-coef", "0.1", "--progress", "false"]


TEARDOWN_ABORT = "terminate called without an active exception"
"""A rank aborting while the gloo process group is torn down at exit, after the run has finished
(seen once in many 2-rank runs on 2 shared cores; not understood yet): such a run is repeated once
from scratch, and the repetition must exit cleanly."""


def run(args, nproc=1, check=True):
    cmd = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--standalone", str(ROOT / "train.py")] if nproc > 1 else [sys.executable, str(ROOT / "train.py")])
    args = [str(a) for a in args]
    res = subprocess.run(cmd + args, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0 and nproc > 1 and TEARDOWN_ABORT in res.stderr and "--resume" not in args:
        out = Path(args[args.index("--output-dir") + 1]) if "--output-dir" in args else None
        if out is not None and out.exists():
            import shutil

            shutil.rmtree(out)
        res = subprocess.run(cmd + args, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, res.stderr[-4000:]
    return res


def weights(run_dir):
    return load_file(str(Path(run_dir) / "hf_export" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.dist
def test_two_ranks_equal_one_rank_after_one_step(tmp_path):
    common = SMALL + ["--max-steps", "1", "--optimizer", "sgd", "--lr", "50", "--max-grad-norm", "0"]
    run(common + ["--output-dir", tmp_path / "one"], nproc=1)
    run(common + ["--output-dir", tmp_path / "two"], nproc=2)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    from models.tiny import save_tiny_qwen

    init = load_file(str(Path(save_tiny_qwen(tmp_path / "init", seed=0)) / "model.safetensors"))
    assert init.keys() == one.keys()
    moved = max((one[k] - init[k]).abs().max().item() for k in one if k in init)
    assert moved > 1e-3  # the step did something (a wrong gradient scale would show)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    m1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert m1[-1]["num_tokens"] == m2[-1]["num_tokens"]  # same samples, whatever the split
    assert m1[-1]["entropy"] == pytest.approx(m2[-1]["entropy"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize("nproc", [1, 2])
def test_gather_once_computes_plain_fsdp_bit_for_bit(tmp_path, nproc):
    # two optimizer steps per rollout (two mini-batches) and a KL term: the gathered parameters must
    # be dropped after each optimizer step and gathered again, and the reference pass gathers too
    common = SMALL + ["--max-steps", "2", "--num-mini-batches", "2", "--kl-coef", "0.5", "--lr", "1e-2"]
    run(common + ["--gather-once", "false", "--output-dir", tmp_path / "plain"], nproc=nproc)
    run(common + ["--gather-once", "true", "--output-dir", tmp_path / "gathered"], nproc=nproc)
    plain, gathered = weights(tmp_path / "plain"), weights(tmp_path / "gathered")
    for k in plain:
        assert torch.equal(plain[k], gathered[k]), k
    rows = [[{k: v for k, v in json.loads(x).items() if not k.startswith(("time/", "tokens_per_s", "peak_memory"))}
             for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("plain", "gathered")]
    assert rows[0] == rows[1]
    assert rows[0][-1]["optimizer_steps"] == 2 and rows[0][-1]["kl"] > 0 and rows[0][0]["grad_norm"] > 0


@pytest.mark.slow
@pytest.mark.dist
def test_bf16_step_on_two_ranks_has_ratio_one_and_logs_the_sampler_mismatch(tmp_path):
    # --mixed-precision on CPU + gloo: bf16 rollout, reference and training forward, fp32 gradient
    # reduction and master weights (the GPU precision path); pi_old = the training forward itself
    run(SMALL + ["--max-steps", "1", "--mixed-precision", "true", "--output-dir", tmp_path], nproc=2)
    assert json.loads((tmp_path / "config.json").read_text())["parallel"]["mixed_precision"] is True
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["clipfrac"] == 0 and row["approx_kl_old"] == 0
    assert 0 <= row["rollout_logp_diff_mean"] <= row["rollout_logp_diff_max"] < 1
    assert row["skipped_steps"] == 0 and row["grad_norm"] > 0
    assert {v.dtype for v in weights(tmp_path).values()} == {torch.float32}  # fp32 master weights


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """4 steps straight vs 2 steps + --resume + 2 more (AdamW: its state must be restored too)."""
    base = tmp_path_factory.mktemp("resume")
    common = SMALL + ["--lr", "1e-2", "--checkpoint-every", "2", "--heldout-size", "2"]
    run(common + ["--max-steps", "4", "--output-dir", base / "straight"])
    run(common + ["--max-steps", "2", "--output-dir", base / "split"])
    res = run(common + ["--max-steps", "4", "--output-dir", base / "split", "--resume"])
    return base, res


@pytest.mark.slow
def test_resume_continues_exactly(resumed):
    base, _ = resumed
    a, b = weights(base / "straight"), weights(base / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the resumed run started at step 2: its 'train' rows are steps 1, 2 then 3, 4
    rows = [json.loads(x) for x in (base / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["phase"] == "train"] == [1, 2, 3, 4]


@pytest.mark.slow
def test_run_writes_metrics_checkpoints_config_and_loadable_export(resumed):
    base, _ = resumed
    out = base / "straight"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["max_steps"] == 4 and cfg["rollout"]["group_size"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for key in ("loss", "kl", "entropy", "clipfrac", "grad_norm", "zero_var_group_frac",
                "response_len_mean", "reward/total", "reward/bbox_iou", "reward/thinking_format",
                "tokens_per_s", "time/rollout", "time/reward", "time/reference", "time/update",
                "peak_memory_bytes", "lr", "epoch", "rollout_logp_diff_mean", "rollout_logp_diff_max"):
        assert key in rows[-1], key
    assert rows[-1]["epoch"] == pytest.approx(4 * 2 / 4096)  # 4 steps x 2 prompts / 4096 samples (tiny preset)
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_000004"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_000002", "step_000004"]
    assert len((out / "heldout.jsonl").read_text().splitlines()) == 2  # start and end reports

    from data import SyntheticDataset
    from models.loading import load_policy
    from models.policy import SegZeroPolicy

    model, processor = load_policy(out / "hf_export")
    exported = weights(out)
    loaded = dict(model.named_parameters())
    assert len(loaded) == len(exported)
    for name, p in loaded.items():  # every loaded parameter is one of the exported tensors
        assert any(v.shape == p.shape and torch.equal(v, p.detach()) for v in exported.values()), name
    sample = SyntheticDataset(1, seed=5)[0]
    texts = SegZeroPolicy(model, processor).complete([sample.image], [sample.query], max_new_tokens=4)
    assert len(texts) == 1 and isinstance(texts[0], str)

    # ... and the one-image inference command runs on it (with the toy SAM2: no SAM2 weights here)
    import cv2

    from models import infer

    image_path = base / "scene.png"
    cv2.imwrite(str(image_path), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
    rc = infer.main(["--image", str(image_path), "--query", sample.query, "--output-dir", str(base / "infer"),
                     "--model-path", str(out / "hf_export"), "--sam2", "toy", "--device", "cpu",
                     "--max-new-tokens", "8"])
    assert rc == 0
    mask = cv2.imread(str(base / "infer" / "mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == sample.image.shape[:2]
    assert json.loads((base / "infer" / "prediction.json").read_text())["model_path"] == str(out / "hf_export")


@pytest.mark.slow
def test_sft_baseline_runs_and_lowers_its_loss(tmp_path):
    # SFT on the ground-truth answer text: 3 steps on the SAME batch (1 sample repeated via a
    # 2-sample dataset and 2 prompts per step = every step sees both samples) must lower the NLL.
    run(["--model-path", "tiny", "--algo", "sft", "--max-steps", "3", "--num-synthetic", "2", "--prompts-per-step", "2",
         "--lr", "3e-3", "--heldout-size", "0", "--progress", "false", "--export-hf", "false",
         "--max-new-tokens", "96", "--output-dir", tmp_path])
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (tmp_path / "checkpoints" / "step_000003" / "COMPLETE").is_file()


def test_setup_mistakes_are_one_line_and_exit_code_2(tmp_path):
    for args, expected in [(["--model-path", tmp_path / "no_such_model"], "no_such_model"),
                           (["--data-path", tmp_path / "no_such_data"], "no_such_data': not 'synthetic[:N][:FAMILY]' "
                                                                        "and no such path")]:
        res = run(SMALL + args + ["--output-dir", tmp_path / "o"], check=False)
        assert res.returncode == 2, res.stderr[-2000:]
        assert "Traceback" not in res.stderr
        lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and expected in lines[0], res.stderr[-2000:]


@pytest.mark.slow
def test_a_run_whose_steps_are_all_skipped_fails_and_exports_nothing(tmp_path):
    # an entropy weight of 1e300 is a finite config value, but the float32 loss is -inf at every step
    res = run(SMALL + ["--entropy-coef", "1e300", "--max-steps", "2", "--output-dir", tmp_path], check=False)
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == (
        "error: every step of this run (1..2) was skipped: the loss or the gradients were not finite, nothing "
        "was learned and nothing is exported; lower the learning rate or check the other numbers of the config")
    assert "Traceback" not in res.stderr
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [1.0, 1.0]
    assert not (tmp_path / "hf_export").exists()


@pytest.mark.slow
def test_warm_start_interrupted_then_rerun_and_stale_export_refused(tmp_path):
    # what a kill during the warm start leaves: its rows of steps 1, 2 and no export yet
    # and its held-out report row
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "phase": "warmstart_sft", "loss": 9.0})
                                                    + "\n" for s in (1, 2)))
    (tmp_path / "heldout.jsonl").write_text(json.dumps({"title": "initial policy", "stale": True}) + "\n")
    common = SMALL[2:] + ["--max-steps", "1", "--output-dir", tmp_path]  # SMALL without its warm-start 0
    res = run(common + ["--warmstart-sft-steps", "2", "--heldout-size", "2"], check=False)
    assert res.returncode == 2 and "holds an earlier run (metrics.jsonl, heldout.jsonl)" in res.stderr
    run(common + ["--warmstart-sft-steps", "2", "--heldout-size", "2", "--resume"])  # the killed run, continued
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in rows] == [("warmstart_sft", 1), ("warmstart_sft", 2), ("train", 1)]
    assert all(r.get("loss") != 9.0 for r in rows)  # the interrupted attempt's rows were replaced
    held = [json.loads(x) for x in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    assert [r["title"] for r in held] == ["initial policy", "grpo start (step 0)", "grpo end (step 1)"]
    assert "stale" not in held[0]
    recorded = json.loads((tmp_path / "warmstart_sft" / "warmstart.json").read_text())
    assert recorded["train"]["warmstart_sft_steps"] == 2

    res = run(common + ["--warmstart-sft-steps", "3", "--resume"], check=False)  # a stale export
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "holds a warm start made with other settings ((then, now): {'train.warmstart_sft_steps': (2, 3)})" \
        in res.stderr


@pytest.mark.dist
def test_batch_not_divisible_across_ranks_fails_before_work(tmp_path):
    res = run(SMALL + ["--prompts-per-step", "3", "--output-dir", tmp_path], nproc=2, check=False)
    assert res.returncode != 0
    assert "prompts_per_step=3 is not divisible by the 2 ranks" in res.stderr
