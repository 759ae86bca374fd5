"""evaluate.py and eval.loop: metrics by hand through the real pipeline code, resume after a crash
and after a torn line, 2 ranks == 1 rank, bad samples counted, and the tiny end-to-end command."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import evaluate
from data import SyntheticDataset
from data.types import BadSampleError, Sample
from eval.loop import evaluate_shard, shard_indices
from eval.results import merge_predictions, read_predictions, rank_file, table_from_predictions, table_from_records
from models.pipeline import SegZeroPipeline
from rewards import format_answer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ListSource:
    """A SampleSource over a list; a BadSampleError item is raised when indexed (a corrupt file)."""

    def __init__(self, items):
        self.items = items
        self.ids = [item.sample_id if isinstance(item, BadSampleError) else item.id for item in items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        item = self.items[index]
        if isinstance(item, BadSampleError):
            raise item
        return item


class OraclePolicy:
    """Answers a fixed completion per image (looked up by the image's bytes)."""

    def __init__(self, answers):  # {image bytes: completion}
        self.answers = answers

    def complete(self, images, queries, *, max_new_tokens, greedy):
        assert greedy
        return [self.answers[image.tobytes()] for image in images]


class BoxSegmenter:
    """A segmenter whose mask is the prompt box, inclusive: rows y1..y2, columns x1..x2."""

    def segment_batch(self, images, bboxes, points, mode="box+points"):
        masks = []
        for image, (x1, y1, x2, y2) in zip(images, bboxes):
            mask = np.zeros(image.shape[:2], dtype=bool)
            mask[y1:y2 + 1, x1:x2 + 1] = True
            masks.append(mask)
        return masks


def answer(bbox, points):
    return format_answer(bbox, points, reasoning="looking at the shapes")


def hand_dataset():
    """Three readable samples with hand-checkable IoUs and one corrupt one."""
    # a: 210 x 420 image (840 frame -> x / 2, y / 4); target rows 10..19, cols 10..29 (200 px).
    #    answer box [20, 40, 38, 76] -> [10, 10, 19, 19]: 100 px inside the target -> I 100, U 200.
    img_a = np.full((210, 420, 3), 1, np.uint8)
    gt_a = np.zeros((210, 420), np.uint8)
    gt_a[10:20, 10:30] = 1
    # b: 420 x 420 (-> / 2); target rows 50..59, cols 50..59 (100 px), column 64 rows 50..59 "ignore".
    #    answer box [110, 100, 128, 118] -> [55, 50, 64, 59] (100 px): I = 5 cols x 10 = 50;
    #    U = 100 + 100 - 50 = 150, minus the 10 ignore pixels = 140.
    img_b = np.full((420, 420, 3), 2, np.uint8)
    gt_b = np.zeros((420, 420), np.uint8)
    gt_b[50:60, 50:60] = 1
    gt_b[50:60, 64] = 255
    # c: no parseable answer: I = 0, U = target area 100.
    img_c = np.full((100, 100, 3), 3, np.uint8)
    gt_c = np.zeros((100, 100), np.uint8)
    gt_c[0:10, 0:10] = 1
    samples = [
        Sample(id="a", image=img_a, query="short one", mask=gt_a, is_sentence=False),
        Sample(id="b", image=img_b, query="a longer sentence", mask=gt_b, is_sentence=True),
        BadSampleError("d", "d.jpg", "cannot identify image file"),
        Sample(id="c", image=img_c, query="another sentence", mask=gt_c, is_sentence=True),
    ]
    policy = OraclePolicy({
        img_a.tobytes(): answer([20, 40, 38, 76], [[24, 48], [30, 60]]),
        img_b.tobytes(): answer([110, 100, 128, 118], [[115, 105], [120, 110]]),
        img_c.tobytes(): "<think>no idea</think> <answer>none</answer>",
    })
    return ListSource(samples), SegZeroPipeline(policy, BoxSegmenter())


def test_metrics_by_hand_through_the_pipeline(tmp_path):
    source, pipeline = hand_dataset()
    logs = []
    stats = evaluate_shard(pipeline, source, str(tmp_path), batch_size=2, log=logs.append)
    assert (stats.num_evaluated, stats.num_bad) == (3, 1)
    assert any("'d'" in line and "cannot identify" in line for line in logs)
    records = {r.id: r for r in merge_predictions(str(tmp_path))}
    assert (records["a"].intersection, records["a"].union, records["a"].bbox) == (100, 200, [10, 10, 19, 19])
    assert (records["b"].intersection, records["b"].union, records["b"].bbox) == (50, 140, [55, 50, 64, 59])
    assert (records["c"].intersection, records["c"].union, records["c"].status) == (0, 100, "no_json")
    assert records["d"].status == "bad_sample" and "cannot identify" in records["d"].reason
    assert records["a"].reasoning == "looking at the shapes"
    assert records["a"].bbox_840 == [20, 40, 38, 76]
    table = table_from_predictions(str(tmp_path))
    # gIoU = (100/200 + 50/140 + 0) / 3 = (0.5 + 0.357143) / 3 = 28.571 %
    # cIoU = (100 + 50 + 0) / (200 + 140 + 100) = 150 / 440 = 34.091 %
    assert table["all"]["gIoU"] == pytest.approx(100 * (0.5 + 50 / 140) / 3)
    assert table["all"]["cIoU"] == pytest.approx(100 * 150 / 440)
    assert table["all"]["parse_failure_rate"] == pytest.approx(100 / 3)
    assert (table["all"]["num_samples"], table["all"]["num_bad"]) == (3, 1)
    # sentence rows: b and c -> gIoU (0.357143 + 0) / 2 = 17.857 %, cIoU 50 / 240 = 20.833 %
    assert table["sentence query"]["gIoU"] == pytest.approx(100 * (50 / 140) / 2)
    assert table["sentence query"]["cIoU"] == pytest.approx(100 * 50 / 240)
    assert table["short query"]["gIoU"] == pytest.approx(50.0)


def test_run_prints_what_the_file_recomputes_and_draws_panels(tmp_path, capsys):
    source, pipeline = hand_dataset()
    out = str(tmp_path / "run")
    args = evaluate.parse_args(["--model-path", "unused", "--data-path", "hand", "--output-dir", out,
                                "--visualize-first", "1", "--visualize-worst", "2", "--device", "cpu"])
    table = evaluate.run(args, pipeline=pipeline, source=source)
    printed = capsys.readouterr().out
    assert "28.6" in printed and "34.1" in printed and "bad sample 'd'" in printed
    assert table == table_from_predictions(out)
    evaluate.main(["--recompute", out])
    assert capsys.readouterr().out.splitlines()[1:] == printed.split("metrics:")[0].strip().splitlines()[-4:]
    saved = json.load(open(os.path.join(out, "metrics.json")))["table"]
    assert saved["all"]["cIoU"] == pytest.approx(100 * 150 / 440)
    index = open(os.path.join(out, "vis", "index.html")).read()
    pngs = sorted(f for f in os.listdir(os.path.join(out, "vis")) if f.endswith(".png"))
    # first 1: a; worst 2: c (IoU 0), b (0.357); a (0.5) is not among the worst two
    assert pngs == ["0000000_a.png", "0000001_b.png", "0000003_c.png"]
    assert index.index("0000003_c.png") < index.rindex("0000001_b.png")
    assert all(name in index for name in pngs)


def test_resume_rejects_other_settings(tmp_path):
    source, pipeline = hand_dataset()
    out = str(tmp_path)
    base = ["--model-path", "m", "--data-path", "hand", "--output-dir", out, "--device", "cpu"]
    evaluate.run(evaluate.parse_args(base), pipeline=pipeline, source=source, log=lambda s: None)
    with pytest.raises(ValueError, match="prompt_mode"):
        evaluate.run(evaluate.parse_args(base + ["--prompt-mode", "box"]), pipeline=pipeline, source=source)


def test_limit_then_a_larger_limit_resumes(tmp_path):
    source, pipeline = hand_dataset()
    out = str(tmp_path)
    base = ["--model-path", "m", "--data-path", "hand", "--output-dir", out, "--device", "cpu"]
    small = evaluate.run(evaluate.parse_args(base + ["--limit", "2"]), pipeline=pipeline, source=source,
                         log=lambda s: None)
    assert small["all"]["num_samples"] == 2 and small["all"]["gIoU"] == pytest.approx(100 * (0.5 + 50 / 140) / 2)
    calls = []
    counting = lambda images, queries: calls.append(len(images)) or pipeline(images, queries)  # noqa: E731
    full = evaluate.run(evaluate.parse_args(base), pipeline=counting, source=source, log=lambda s: None)
    assert calls == [1]  # only c (index 3) reaches the pipeline; d (index 2) is unreadable
    assert full == table_from_predictions(out)
    assert (full["all"]["num_samples"], full["all"]["num_bad"]) == (3, 1)
    assert table_from_predictions(out, limit=2) == small


def test_bad_arguments():
    with pytest.raises(ValueError, match="--model-path is required"):
        evaluate.parse_args(["--data-path", "synthetic", "--output-dir", "x"])
    with pytest.raises(ValueError, match="batch-size"):
        evaluate.parse_args(["--preset", "tiny", "--output-dir", "x", "--batch-size", "0"])
    with pytest.raises(ValueError, match="CONFIG::CHECKPOINT with both parts"):
        evaluate.parse_args(["--model-path", "m", "--data-path", "d", "--output-dir", "x", "--sam2", "c::"])
    # without --preset tiny, SAM2 is the authors' hub model
    args = evaluate.parse_args(["--model-path", "m", "--data-path", "d", "--output-dir", "x"])
    assert (args.sam2, args.think, args.with_example) == ("facebook/sam2-hiera-large", True, True)
    args = evaluate.parse_args(["--model-path", "m", "--data-path", "d", "--output-dir", "x", "--think", "false",
                                "--with-example", "false"])
    assert (args.think, args.with_example) == (False, False)
    # --preset tiny fills in only what is not named
    args = evaluate.parse_args(["--preset", "tiny", "--model-path", "runs/tiny/hf_export", "--output-dir", "x"])
    assert (args.model_path, args.sam2, args.data_path) == ("runs/tiny/hf_export", "toy", "synthetic:8")
    args = evaluate.parse_args(["--preset", "tiny", "--sam2", "facebook/sam2-hiera-tiny", "--output-dir", "x"])
    assert (args.model_path, args.sam2) == ("tiny", "facebook/sam2-hiera-tiny")
    with pytest.raises(ValueError, match="CONFIG::CHECKPOINT with both parts"):
        evaluate.parse_args(["--preset", "tiny", "--output-dir", "x", "--sam2", "::ckpt.pt"])
    with pytest.raises(ValueError):
        shard_indices(10, 2, 2)
    assert list(shard_indices(7, 1, 3)) == [1, 4]


# ---------------------------------------------------------------- synthetic set, oracle answers

def oracle_setup(num=7):
    """SyntheticDataset with the ground-truth answer of each sample and a box segmenter:
    nontrivial IoUs (box vs shape), one unparseable answer (index 2) and one corrupt sample (5)."""
    synthetic = SyntheticDataset(num, seed=3)
    items, answers = [], {}
    for i in range(num):
        s = synthetic[i]
        if i == 5:
            items.append(BadSampleError(s.id, "image.png", "truncated file"))
            continue
        sol = s.solution
        answers[s.image.tobytes()] = "garbage" if i == 2 else answer(sol["bbox"], sol["points"])
        items.append(s)
    return ListSource(items), SegZeroPipeline(OraclePolicy(answers), BoxSegmenter())


class CrashAfter:
    """Wraps a pipeline; raises on call number ``calls + 1`` (a run killed mid-way)."""

    def __init__(self, pipeline, calls):
        self.pipeline, self.calls = pipeline, calls

    def __call__(self, images, queries):
        if self.calls == 0:
            raise KeyboardInterrupt("simulated kill")
        self.calls -= 1
        return self.pipeline(images, queries)


def comparable(records):
    return [{k: v for k, v in vars(r).items() if k not in ("seconds", "rank")} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    source, pipeline = oracle_setup()
    out = str(tmp_path_factory.mktemp("ref"))
    evaluate_shard(pipeline, source, out, batch_size=2, log=None)
    records = merge_predictions(out)
    return records, table_from_records(records)


def test_oracle_reference_is_nontrivial(reference):
    records, table = reference
    assert len(records) == 7 and table["all"]["num_bad"] == 1 and table["all"]["num_samples"] == 6
    ious = [r.iou for r in records if r.status == "ok"]
    assert len(ious) == 5 and all(0.3 < v < 1.0 for v in ious)  # a box covers more than its shape
    assert records[2].status == "no_json" and records[2].iou == 0.0
    assert table["all"]["parse_failure_rate"] == pytest.approx(100 / 6)


def test_interrupted_run_resumes_to_the_same_table(tmp_path, reference):
    source, pipeline = oracle_setup()
    out = str(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        evaluate_shard(CrashAfter(pipeline, 2), source, out, batch_size=2, log=None)
    assert len(read_predictions(out)) == 4  # two whole batches survived
    with open(rank_file(out, 0), "a") as f:
        f.write('{"index": 4, "id": "synthetic-3-4", "query": "the bl')  # torn by the kill
    with pytest.warns(UserWarning):
        stats = evaluate_shard(pipeline, source, out, batch_size=3, log=None)
    assert (stats.num_skipped, stats.num_evaluated, stats.num_bad) == (4, 2, 1)
    records = merge_predictions(out)
    assert comparable(records) == comparable(reference[0])
    assert table_from_records(records) == reference[1]
    again = evaluate_shard(pipeline, source, out, batch_size=2, log=None)  # nothing left to do
    assert again.num_evaluated == again.num_bad == 0 and again.num_skipped == 7


def test_two_ranks_equal_one(tmp_path, reference):
    source, pipeline = oracle_setup()
    out = str(tmp_path)
    done = set()  # as evaluate.run does: computed before any rank writes
    stats = [evaluate_shard(pipeline, source, out, rank=r, world_size=2, batch_size=2, done=done, log=None)
             for r in (0, 1)]
    assert [s.num_assigned for s in stats] == [4, 3]
    assert {r.rank for r in read_predictions(out)} == {0, 1}
    records = merge_predictions(out)
    assert comparable(records) == comparable(reference[0])
    assert table_from_records(records) == reference[1]


# ------------------------------------------------------------------------- the real command

def run_cli(args, nproc=1, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    if nproc == 1:
        cmd = [sys.executable, os.path.join(ROOT, "evaluate.py")] + args
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               os.path.join(ROOT, "evaluate.py")] + args
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def nan_to_none(table):
    return {name: {k: (None if v != v else v) for k, v in row.items()} for name, row in table.items()}


@pytest.mark.slow
@pytest.mark.dist
def test_tiny_preset_one_and_two_ranks_and_recompute(tmp_path, capsys):
    common = ["--preset", "tiny", "--data-path", "synthetic:5", "--max-new-tokens", "8", "--batch-size", "2"]
    evaluate.main(common + ["--output-dir", str(tmp_path / "one"), "--visualize-first", "1"])
    one = capsys.readouterr().out
    two = run_cli(common + ["--output-dir", str(tmp_path / "two")], nproc=2)
    table_one = table_from_predictions(str(tmp_path / "one"))
    table_two = table_from_predictions(str(tmp_path / "two"))
    assert nan_to_none(table_one) == nan_to_none(table_two) and table_one["all"]["num_samples"] == 5
    records_one, records_two = (read_predictions(str(tmp_path / d)) for d in ("one", "two"))
    assert [r.completion for r in records_one] == [r.completion for r in records_two]
    assert {r.rank for r in records_two} == {0, 1}

    def table_lines(text):
        return [line for line in text.splitlines() if line.startswith(("all ", "short", "sentence"))]

    assert len(table_lines(one)) == 3 and table_lines(one) == table_lines(two)
    evaluate.main(["--recompute", str(tmp_path / "one")])
    assert table_lines(capsys.readouterr().out) == table_lines(one)
    assert os.path.exists(tmp_path / "one" / "vis" / "index.html")


def test_command_line_mistake_is_one_line_without_traceback(tmp_path):
    res = subprocess.run([sys.executable, "evaluate.py", "--data-path", "synthetic", "--output-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: --model-path is required (or --preset tiny)"


def test_unparsed_answer_on_an_empty_target_scores_zero():
    from types import SimpleNamespace

    from eval.loop import score_prediction

    empty = Sample(id="e", image=np.zeros((4, 5, 3), np.uint8), query="nothing", mask=np.zeros((4, 5), np.uint8))
    common = dict(completion="", reasoning=None, bbox_840=None, points_840=None, bbox=None, points=None)
    unparsed = SimpleNamespace(status="no_json", mask=np.zeros((4, 5), bool), **common)
    parsed_empty = SimpleNamespace(status="ok", mask=np.zeros((4, 5), bool), **common)
    # I = U = 0 in both cases; a parsed empty prediction of an empty target is right (IoU 1), an
    # unparseable answer never earns IoU (SPEC 7)
    rec = score_prediction(0, empty, unparsed, 0.0)
    assert (rec.intersection, rec.union, rec.iou) == (0, 0, 0.0)
    assert score_prediction(0, empty, parsed_empty, 0.0).iou == 1.0
    assert table_from_records([rec])["all"]["gIoU"] == 0.0


def test_query_empty_after_normalisation_is_a_counted_bad_sample(tmp_path):
    class Source:
        ids = ["dots"]

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return Sample(id="dots", image=np.zeros((4, 4, 3), np.uint8), query="...",
                          mask=np.ones((4, 4), np.uint8))

    def pipeline(images, queries):  # never reached: the sample is refused before the models run
        raise AssertionError(f"pipeline called with {queries}")

    stats = evaluate_shard(pipeline, Source(), str(tmp_path), log=None)
    assert (stats.num_evaluated, stats.num_bad) == (0, 1)
    (rec,) = read_predictions(str(tmp_path))
    assert rec.status == "bad_sample" and "empty after normalisation" in rec.reason


# ------------------------------------------------- LISA folders: empty targets, ignore protocols

def write_lisa_sample(folder, name, shapes, height, width):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(folder / f"{name}.jpg")
    (folder / f"{name}.json").write_text(json.dumps(
        {"text": [f"find {name}"], "is_sentence": False, "shapes": shapes}))


def lisa_eval_setup(root):
    """A LISA folder of three files and a fake pipeline keyed by image height:

    a (16 x 20): target x 2..9, y 2..5 (32 px), "Ignore" x 10..13, y 2..5 (16 px);
                 predicted x 2..11, y 2..5 (40 px)
    b (10 x 12): every shape "Flag" -> empty target; predicted empty (parsed)
    c (8 x 8):   no shapes -> empty target; predicted x 0..1, y 0..1 (4 px)
    """
    folder = root / "ReasonSeg" / "val"
    write_lisa_sample(folder, "a", [{"label": "target", "points": [[2, 2], [9, 2], [9, 5], [2, 5]]},
                                    {"label": "Ignore", "points": [[10, 2], [13, 2], [13, 5], [10, 5]]}],
                      16, 20)
    write_lisa_sample(folder, "b", [{"label": "Flag", "points": [[0, 0], [11, 0], [11, 9]]},
                                    {"label": "flag", "points": [[1, 1], [5, 1], [5, 5]]}], 10, 12)
    write_lisa_sample(folder, "c", [], 8, 8)
    predicted = {16: np.zeros((16, 20), bool), 10: np.zeros((10, 12), bool), 8: np.zeros((8, 8), bool)}
    predicted[16][2:6, 2:12] = True
    predicted[8][0:2, 0:2] = True

    def pipeline(images, queries):
        from types import SimpleNamespace

        return [SimpleNamespace(status="ok", mask=predicted[image.shape[0]], completion="", reasoning=None,
                                bbox_840=None, points_840=None, bbox=None, points=None) for image in images]

    return root / "ReasonSeg", pipeline


def test_lisa_empty_targets_are_evaluated_under_both_ignore_protocols(tmp_path):
    data, pipeline = lisa_eval_setup(tmp_path)
    base = ["--model-path", "m", "--data-path", str(data), "--split", "val", "--device", "cpu"]
    out = str(tmp_path / "exclude")
    table = evaluate.run(evaluate.parse_args(base + ["--output-dir", out]), pipeline=pipeline,
                         log=lambda s: None)
    records = {r.id: r for r in read_predictions(out)}
    # exclude: a: I = 32; U = the 40 predicted px minus the 8 of them on ignore (x 10..11) = 32
    #          b: I = U = 0, a parsed empty prediction of an empty target -> IoU 1
    #          c: I = 0, U = 4 -> IoU 0
    assert [(records[k].intersection, records[k].union, records[k].iou) for k in "abc"] == [
        (32, 32, 1.0), (0, 0, 1.0), (0, 4, 0.0)]
    assert all(r.status == "ok" for r in records.values())
    # gIoU (1 + 1 + 0) / 3 = 66.67 %, cIoU 32 / (32 + 0 + 4) = 88.89 %, 3 samples, none bad
    assert (table["all"]["num_samples"], table["all"]["num_bad"]) == (3, 0)
    assert table["all"]["gIoU"] == pytest.approx(100 * 2 / 3)
    assert table["all"]["cIoU"] == pytest.approx(100 * 32 / 36)
    config = json.load(open(os.path.join(out, "run_config.json")))
    assert config["ignore_regions"] == "exclude"
    # resuming the same directory under the other protocol is refused
    with pytest.raises(ValueError, match="ignore_regions"):
        evaluate.run(evaluate.parse_args(base + ["--output-dir", out, "--ignore-regions", "as-target"]),
                     pipeline=pipeline, log=lambda s: None)

    out = str(tmp_path / "as-target")
    table = evaluate.run(evaluate.parse_args(base + ["--output-dir", out, "--ignore-regions", "as-target"]),
                         pipeline=pipeline, log=lambda s: None)
    records = {r.id: r for r in read_predictions(out)}
    # as-target: a: target x 2..13 (48 px), I = 40, U = 48; b and c as above
    assert [(records[k].intersection, records[k].union) for k in "abc"] == [(40, 48), (0, 0), (0, 4)]
    # gIoU (40/48 + 1 + 0) / 3 = 61.11 %, cIoU 40 / (48 + 4) = 76.92 %
    assert table["all"]["gIoU"] == pytest.approx(100 * (40 / 48 + 1) / 3)
    assert table["all"]["cIoU"] == pytest.approx(100 * 40 / 52)
    assert json.load(open(os.path.join(out, "metrics.json")))["config"]["ignore_regions"] == "as-target"
    with pytest.raises(SystemExit):  # argparse refuses an unknown protocol
        evaluate.parse_args(base + ["--output-dir", out, "--ignore-regions", "include"])


def test_user_mistakes_are_one_line_and_exit_code_2(tmp_path, capsys):
    import pickle

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    refer = tmp_path / "refer" / "refcocog"  # a refs pickle that wants to import code
    refer.mkdir(parents=True)
    (refer / "instances.json").write_text('{"images": [], "annotations": []}')
    with open(refer / "refs(umd).p", "wb") as f:
        pickle.dump([os.system], f)
    tiny = ["--preset", "tiny", "--output-dir", str(tmp_path / "out")]
    cases = [
        (tiny + ["--device", "tpu"], "error: --device 'tpu': use cpu, cuda or cuda:K"),
        (["--preset", "tiny", "--output-dir", str(a_file)],
         f"error: --output-dir {str(a_file)!r} exists and is not a directory; pass a directory"),
        (["--preset", "tiny", "--output-dir", "/sys/seg_zero_eval"], "error: --output-dir '/sys/seg_zero_eval': "
                                                                      "cannot write in '/sys'"),
        (tiny + ["--data-path", str(tmp_path / "refer")], "refs(umd).p: not a readable refs file (UnpicklingError: "
                                                     "refused to load global 'posix.system'"),
    ]
    if not __import__("torch").cuda.is_available():
        cases.append((tiny + ["--device", "cuda"], "error: --device 'cuda' requested but this machine has 0 "
                                                   "CUDA device(s); use --device cpu"))
    for argv, expected in cases:
        assert evaluate.cli(argv) == 2, argv
        out, err = capsys.readouterr()
        assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, (argv, err)
