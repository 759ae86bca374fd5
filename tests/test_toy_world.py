"""The toy world: shipped checkpoints give their build figures, the builders run, the validation
hook scores a perfect / empty predictor 100 / 0, the best-checkpoint pointer, the curves PNG, and
the default run's hard rewards pay nothing for degenerate answers."""
import json

import numpy as np
import pytest
import torch

from data import SyntheticDataset
from eval.validate import BestPointer, validate
from rewards import format_answer, score_completions


# ------------------------------------------------------------------------- degenerate answers

def _solution():
    return {"bbox": [300, 310, 420, 400], "points": [[340, 350], [390, 360]]}


@pytest.mark.parametrize("name, answer", [
    ("zero-area box at the centre", ([499, 499, 499, 499], [[499, 499], [499, 499]])),
    ("whole-image box", ([0, 0, 839, 839], [[100, 100], [700, 700]])),
    ("points outside the box", ([300, 310, 420, 400], [[10, 10], [800, 800]])),
    ("box elsewhere", ([600, 600, 700, 700], [[650, 650], [660, 660]])),
])
def test_hard_rewards_pay_nothing_for_degenerate_answers(name, answer):
    sol = _solution()
    good = format_answer(sol["bbox"], sol["points"], reasoning="r")
    bad = format_answer(answer[0], answer[1], reasoning="r")
    rb = score_completions([good, bad], [sol, sol], strict=True, soft=False, think=True)
    # the ground-truth answer earns all five terms: 1 + 1 + 1 + 1 + 1
    assert float(rb.total[0]) == 5.0
    accuracy_bad = sum(float(rb.terms[k][1]) for k in ("bbox_iou", "bbox_l1", "point_l1"))
    if name == "points outside the box":
        # the box is exact (IoU 1 > 0.5, L1 0 < 10) but the point term requires both points inside
        assert (float(rb.terms["bbox_iou"][1]), float(rb.terms["point_l1"][1])) == (1.0, 0.0)
    else:
        assert accuracy_bad == 0.0, (name, {k: float(v[1]) for k, v in rb.terms.items()})
    assert float(rb.total[1]) <= 4.0


# ------------------------------------------------------------------------- validation hook

class _Oracle:
    """complete(): the ground-truth answer (perfect) or an unparseable text (empty), by image."""

    def __init__(self, samples, perfect: bool):
        self.answers = {s.image.tobytes(): format_answer(s.solution["bbox"], s.solution["points"], reasoning="r")
                        for s in samples}
        self.perfect = perfect

    def complete(self, images, queries, *, max_new_tokens, greedy=True):
        return [self.answers[im.tobytes()] if self.perfect else "no answer" for im in images]


class _MaskLookup:
    """segment_batch(): the ground-truth mask of the image (a perfect segmenter)."""

    def __init__(self, samples):
        self.masks = {s.image.tobytes(): s.mask.astype(bool) for s in samples}

    def segment_batch(self, images, bboxes, points, mode="box+points"):
        return [self.masks[im.tobytes()] for im in images]


@pytest.mark.parametrize("perfect, giou", [(True, 100.0), (False, 0.0)])
def test_validation_perfect_and_empty(tmp_path, perfect, giou):
    source = SyntheticDataset(6, seed=3)
    samples = [source[i] for i in range(6)]
    rep = validate(_Oracle(samples, perfect), _MaskLookup(samples), source, tmp_path / "val",
                   batch_size=4, max_new_tokens=8)
    assert (rep["val/giou"], rep["val/ciou"]) == (giou, giou)
    assert rep["val/parse_fail"] == (0.0 if perfect else 1.0)
    assert rep["val/iou_proxy"] == (1.0 if perfect else 0.0)
    assert rep["val/reward/total"] == (5.0 if perfect else 0.0)
    assert len((tmp_path / "val" / "predictions.jsonl").read_text().splitlines()) == 6  # recomputable


class _ObjectsOracle:
    """complete(): the ground-truth object list (perfect), "[]" (nothing, for every image) or an
    unparseable text; segment_objects(): the image's ground-truth union mask for every object."""

    def __init__(self, samples, answer: str):
        from rewards import format_objects_answer

        self.task = "multi"
        self.answers = {s.image.tobytes(): format_objects_answer(s.solution, reasoning="r") for s in samples}
        self.masks = {s.image.tobytes(): s.mask.astype(bool) for s in samples}
        self.answer = answer

    def complete(self, images, queries, *, max_new_tokens, greedy=True):
        return [{"perfect": self.answers[im.tobytes()], "nothing": "<think> r </think><answer>[]</answer>",
                 "unparseable": "no answer"}[self.answer] for im in images]

    def segment_objects(self, images, boxes, points, mode="box+points"):
        return [np.stack([self.masks[im.tobytes()]] * len(b)) if len(b) else np.zeros((0, *im.shape[:2]), bool)
                for im, b in zip(images, boxes)]


@pytest.mark.parametrize("answer", ["perfect", "nothing", "unparseable"])
def test_validation_multi_object(tmp_path, answer):
    """Multi-object validation by hand: 8 scenes, 2 of them with an empty target (IoU 1 for "[]")."""
    from data import MultiObjectSynthetic

    source = MultiObjectSynthetic(8, seed=3)
    samples = [source[i] for i in range(len(source))]
    empty = sum(not s.solution for s in samples)
    assert empty == 2  # the hand-computed figures below rely on it
    oracle = _ObjectsOracle(samples, answer)
    rep = validate(oracle, oracle, source, tmp_path / "val", batch_size=3, max_new_tokens=8, task="multi")
    # reward totals: 7 for the exact list (3 + 3 + 1); "[]" earns format 1 + non-repeat 1 and, as in the
    # released code, no accuracy even on an empty target; "no answer" only the non-repeat 1 (no sentence repeats)
    expected = {"perfect": (100.0, 100.0, 0.0, 1.0, 100.0, 100.0, 7.0 * 6 / 8 + 2.0 * 2 / 8),
                "nothing": (100.0 * 2 / 8, 0.0, 0.0, 2 / 8, 100.0, 0.0, 2.0),
                "unparseable": (0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}[answer]
    giou, ciou, fail, proxy, no_target, target, total = expected
    assert rep["val/giou"] == pytest.approx(giou) and rep["val/ciou"] == pytest.approx(ciou)
    assert rep["val/parse_fail"] == fail and rep["val/iou_proxy"] == pytest.approx(proxy)
    assert (rep["val/no_target_acc"], rep["val/target_acc"]) == (no_target, target)
    assert {k[11:] for k in rep if k.startswith("val/reward/")} == {"multi_object_format", "multi_object_accuracy",
                                                                   "non_repeat", "total"}
    assert rep["val/reward/total"] == pytest.approx(total)
    assert len((tmp_path / "val" / "predictions.jsonl").read_text().splitlines()) == 8


def test_best_pointer(tmp_path):
    best = BestPointer(tmp_path)
    assert best.update(0, {"val/giou": 40.0, "val/ciou": 41.0}, "start")
    assert not best.update(10, {"val/giou": 39.0, "val/ciou": 50.0}, "ckpt10")
    assert best.update(20, {"val/giou": 45.5, "val/ciou": 44.0}, "ckpt20")
    assert not best.update(30, {"val/giou": 45.5, "val/ciou": 44.0}, "ckpt30")  # a tie keeps the earlier
    data = json.loads((tmp_path / "best.json").read_text())
    assert (data["step"], data["val/giou"], data["checkpoint"]) == (20, 45.5, "ckpt20")
    assert BestPointer(tmp_path).giou == 45.5  # read back (resume)


def test_curves_png(tmp_path):
    from PIL import Image

    from grpo.plot import plot_run

    rows = [{"step": 0, "phase": "val", "val/giou": 40.0, "val/ciou": 42.0, "val/iou_proxy": 0.5}]
    rows += [{"step": k, "phase": "train", "reward/bbox_iou": 0.1 * k, "kl": 0.01 * k,
              "response_len_mean": 70 + k, "response_len_min": 60, "response_len_max": 80 + k} for k in range(1, 6)]
    rows += [{"step": 5, "phase": "val", "val/giou": 48.0, "val/ciou": 47.0, "val/iou_proxy": 0.6}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_run(tmp_path)
    img = np.asarray(Image.open(out))
    assert img.shape == (600, 1120, 3) and (img < 250).any()


# ------------------------------------------------------------------------- builders (a few steps)

def test_sam2_builder_few_steps(tmp_path):
    from models.toy import load_toy_sam2, train_sam2

    res = train_sam2(tmp_path / "sam2.safetensors", steps=2, batch=2, prompt_steps=2, prompt_batch=2, heldout=2,
                     log=lambda *_: None)
    seg = load_toy_sam2(tmp_path / "sam2.safetensors")
    assert 0.0 <= res["giou_gt_prompts"] <= 100.0
    s = SyntheticDataset(1, seed=10_000)[0]
    mask = seg.segment(s.image, [10, 10, 100, 100], [[50, 50], [60, 60]])
    assert mask.shape == s.mask.shape and mask.dtype == bool


def test_sam2_prompt_phase_teaches_the_prompt_position():
    """The prompt phase makes a random-weight decoder fill the prompted box (best-of-3 IoU ~0.02 at
    initialisation; 0.39 after 250 steps in the build, 0.70 after its 1000)."""
    from models.toy import _decode, _featureless, build_toy_sam2_model, train_sam2_prompt_phase

    model = build_toy_sam2_model(0)
    before = {k: v.clone() for k, v in model.sam_mask_decoder.state_dict().items()}
    trunk = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    best = train_sam2_prompt_phase(model, steps=300, batch=16, seed=1, log=lambda *_: None)
    assert best > 0.25
    assert all(torch.equal(v, model.image_encoder.state_dict()[k]) for k, v in trunk.items())  # not touched
    assert any(not torch.equal(v, model.sam_mask_decoder.state_dict()[k]) for k, v in before.items())
    # two fresh boxes on the featureless image: each box's cells score higher than the other box's
    model.eval()
    feats = _featureless(model, 2)  # [2, 8, 64, 64], [2, 16, 32, 32], [2, 64, 16, 16]
    boxes = torch.tensor([[40.0, 40.0, 90.0, 90.0], [150.0, 150.0, 210.0, 200.0]])
    with torch.no_grad():
        low, _ = _decode(model, feats, boxes, None)  # [2, 3, 64, 64] logits, cell centres 4 i + 2
    inside = [low[0, :, 10:22, 10:22].mean(), low[1, :, 38:50, 38:50].mean()]
    outside = [low[0, :, 38:50, 38:50].mean(), low[1, :, 10:22, 10:22].mean()]
    assert inside[0] > outside[0] and inside[1] > outside[1]


def test_aux_head_columns_tile_the_targets():
    from data.synthetic import COLORS, KINDS, SIZES
    from models.toy import _AUX_OUT, AUX_COLUMNS

    widths = {k: c.stop - c.start for k, c in AUX_COLUMNS.items()}
    assert widths == {"is_shape": 1, "color": len(COLORS), "kind": len(KINDS), "size": len(SIZES), "box": 4,
                      "centre": 2} == {"is_shape": 1, "color": 6, "kind": 7, "size": 2, "box": 4, "centre": 2}
    starts = [c.start for c in AUX_COLUMNS.values()]
    assert starts == [0, 1, 7, 14, 16, 20] and _AUX_OUT == 22  # contiguous, in this order


def test_aux_loss_weights_the_kind_cross_entropy():
    import torch.nn.functional as F

    from models.forward import image_embeddings
    from models.policy import SegZeroPolicy
    from models.toy import _AUX_OUT, TOY_POLICY_DIR, aux_loss, token_targets

    policy = SegZeroPolicy.from_pretrained(str(TOY_POLICY_DIR))
    ds = SyntheticDataset(2, seed=10_000)
    samples, labels = zip(*[ds.scene(i) for i in range(2)])
    head = torch.nn.Linear(policy.model.config.text_config.hidden_size, _AUX_OUT)
    with torch.no_grad():
        one = aux_loss(policy, head, samples, labels)
        three = aux_loss(policy, head, samples, labels, kind_weight=3.0)
        batch = policy.prepare([s.image for s in samples], [s.query for s in samples])
        kind_logits = head(torch.cat(image_embeddings(policy.model, batch)))[:, 7:14]
    kinds = torch.cat([token_targets(s, lab)["kind"] for s, lab in zip(samples, labels)])
    assert (kinds >= 0).sum() > 0
    assert float(three - one) == pytest.approx(2 * float(F.cross_entropy(kind_logits, kinds, ignore_index=-100)),
                                               rel=1e-5)


def test_vision_report_of_a_constant_head_hand_computed():
    from data.types import FRAME
    from models.policy import SegZeroPolicy
    from models.toy import _AUX_OUT, TOY_POLICY_DIR, token_targets, vision_report

    policy = SegZeroPolicy.from_pretrained(str(TOY_POLICY_DIR))
    ds = SyntheticDataset(3, seed=10_000)
    scenes = [ds.scene(i) for i in range(3)]
    head = torch.nn.Linear(policy.model.config.text_config.hidden_size, _AUX_OUT)
    with torch.no_grad():  # every token answers: colour 1, kind 2, size 0, box (0.25, 0.25, 0.75, 0.75), centre (0.5, 0.5)
        head.weight.zero_()
        head.bias.zero_()
        head.bias[1 + 1] = head.bias[7 + 2] = head.bias[14 + 0] = 1.0
        head.bias[16:20] = torch.tensor([0.25, 0.25, 0.75, 0.75])
        head.bias[20:22] = 0.5
    rep = vision_report(policy, head, scenes, batch_size=2)
    t = [token_targets(s, lab) for s, lab in scenes]
    rows = torch.cat([x["is_shape"] for x in t]) > 0
    box, centre = torch.cat([x["box"] for x in t])[rows], torch.cat([x["centre"] for x in t])
    assert rep["shape_tokens"] == int(rows.sum()) > 0
    assert rep["box_error"] == pytest.approx(
        float((torch.tensor([0.25, 0.25, 0.75, 0.75]) - box).abs().mean()) * FRAME, abs=0.06)
    assert rep["centre_error"] == pytest.approx(float((0.5 - centre).abs().mean()) * FRAME, abs=0.06)
    for name, key, cls in (("colour", "color", 1), ("kind", "kind", 2), ("size", "size", 0)):
        assert rep[name] == pytest.approx(float((torch.cat([x[key] for x in t])[rows] == cls).float().mean()), abs=1e-4)


def test_policy_builder_few_steps(tmp_path):
    from models.policy import load_policy
    from models.toy import GROUNDING_RECIPE, POLICY_RECIPE, build_policy

    recipe = dict(POLICY_RECIPE, vision_steps=2, steps=2, batch=2, warmup=1, max_len=8, kind_weight=2.0)
    grounding = [dict(GROUNDING_RECIPE, steps=2, batch=2), dict(GROUNDING_RECIPE, steps=1, batch=2, data_seed=7)]
    res = build_policy(tmp_path / "policy", recipe=recipe, grounding=grounding, heldout=2, eval_every=0,
                       log=lambda *_: None)
    assert 0.0 <= res["box_iou"] <= 1.0 and set(res) >= {"first_pick", "per_scene_box_iou"}
    model, processor = load_policy(str(tmp_path / "policy"))
    assert model.config.text_config.hidden_size == 128
    build = json.loads((tmp_path / "policy" / "build.json").read_text())
    assert build["recipe"]["steps"] == 2 and build["recipe"]["kind_weight"] == 2.0
    assert set(build["pretrained"]["vision"]) == {"box_error", "centre_error", "colour", "kind", "size", "shape_tokens"}
    assert [(r["steps"], r["data_seed"]) for r in build["grounding_recipes"]] == [(2, 40_000), (1, 7)]
    assert len(build["rounds"]) == 2
    assert build["rounds"][-1]["result"]["per_scene_box_iou"] == res["per_scene_box_iou"]
    assert 0.0 <= build["pretrained"]["result"]["box_iou"] <= 1.0
    assert build["result"]["per_scene_box_iou"] == res["per_scene_box_iou"]
    assert [p.name for p in tmp_path.iterdir()] == ["policy"]  # the temporary phase folders are gone


# ------------------------------------------------------------------------- shipped checkpoints

def test_shipped_toy_sam2_gives_its_build_figures():
    from safetensors import safe_open

    from models.toy import TOY_SAM2_PATH, heldout_samples, load_toy_sam2, sam2_gt_prompt_giou

    with safe_open(str(TOY_SAM2_PATH), "pt") as f:
        built = json.loads(f.metadata()["result"])
    giou, ciou = sam2_gt_prompt_giou(load_toy_sam2(), heldout_samples())
    assert abs(giou - built["giou_gt_prompts"]) < 0.05 and abs(ciou - built["ciou_gt_prompts"]) < 0.05
    # the bar of the toy world (a random-weight SAM2 of this shape scores ~0, one that segments the
    # union of the shapes whatever the prompt ~29)
    assert giou >= 90.0 and ciou >= 90.0
    assert TOY_SAM2_PATH.stat().st_size < 8 * 2 ** 20


def test_shipped_toy_policy_gives_its_build_figures():
    from models.policy import SegZeroPolicy
    from models.toy import TOY_POLICY_DIR, box_iou_report, heldout_samples

    build = json.loads((TOY_POLICY_DIR / "build.json").read_text())
    built = build["result"]
    policy = SegZeroPolicy.from_pretrained(str(TOY_POLICY_DIR))
    n = 16  # the first 16 of the 64 held-out scenes (the build prints all 64)
    rep = box_iou_report(policy, heldout_samples()[:n], max_new_tokens=build["grounding_recipes"][-1]["max_len"])
    expected = built["per_scene_box_iou"][:n]
    assert np.allclose(rep["ious"], expected, atol=2e-3), (rep["ious"], expected)
    assert sum((TOY_POLICY_DIR / f).stat().st_size for f in ("model.safetensors",)) < 8 * 2 ** 20


# ------------------------------------------------------------------------- toy tokenizer and head

def test_toy_tokenizer_writes_each_coordinate_as_one_token():
    from models.tiny import build_toy_tokenizer

    tok = build_toy_tokenizer()
    text = format_answer([0, 75, 840, 409], [[12, 3], [799, 800]], reasoning="the red star is the target.")
    ids = tok(text)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    for v in ("0", "75", "840", "409", "12", "3", "799", "800"):
        assert v in pieces, (v, pieces)
    assert tok.decode(ids) == text
    assert tok.tokenize("8400") == ["840", "0"]  # longest match first; 8400 is not a coordinate


def test_toy_output_rows_read_a_position_linearly():
    """Output rows s (v_hat, -v_hat^2 / 2): h = (b x_hat, b, 0, ...) puts the argmax at x_hat * 840 and
    the logit gap to a neighbour d away is s b (d / 840)^2 / 2 (hand-computed: s = 200, b = 10,
    d = 42 -> 200 * 10 * 0.0025 / 2 = 2.5)."""
    from models.tiny import COORDINATE_LOGIT_SCALE, TOY_COORDINATES, build_toy_qwen

    model, processor = build_toy_qwen(0)
    ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids([str(v) for v in range(TOY_COORDINATES)]))
    rows = model.get_output_embeddings().weight.detach()[ids]  # [841, hidden]
    assert COORDINATE_LOGIT_SCALE == 200.0
    for x in (0, 123, 420, 840):
        h = torch.zeros(rows.shape[1])
        h[0], h[1] = 10.0 * x / 840, 10.0
        logits = rows @ h
        assert int(logits.argmax()) == x
        if x + 42 <= 840:
            assert float(logits[x] - logits[x + 42]) == pytest.approx(2.5, rel=1e-4)


# ------------------------------------------------------------------------- grounding diagnosis

def test_coordinate_slots_read_the_eight_coordinates_in_order():
    from models.tiny import build_toy_tokenizer
    from models.toy import ANSWER_SLOTS, coordinate_slots

    tok = build_toy_tokenizer()
    # coordinates 1 and 2 are the same tokens as the key digits of "points_1" / "points_2"
    text = format_answer([1, 2, 840, 409], [[2, 1], [799, 0]], reasoning="the 2 red stars is the target.")
    ids = torch.tensor(tok(text)["input_ids"])
    slots = coordinate_slots(tok, ids)
    # the reasoning's "2" is a coordinate token too but not an answer coordinate
    assert [v for _, v in slots] == [1, 2, 840, 409, 2, 1, 799, 0]
    assert len(ANSWER_SLOTS) == 8
    assert all(tok.convert_ids_to_tokens(int(ids[t])) == str(v) for t, v in slots)


def test_nearest_left_edge_hand_computed():
    from models.toy import nearest_left_edge

    label = np.zeros((100, 200), dtype=np.uint8)
    label[10:20, 20:40] = 1    # left edge 20 -> 20 * 840 / 200 = 84
    label[50:60, 100:150] = 2  # left edge 100 -> 420
    label[70:90, 160:170] = 3  # left edge 160 -> 672
    assert nearest_left_edge(0, label) == 0
    assert nearest_left_edge(251, label) == 0 and nearest_left_edge(253, label) == 1  # midpoint 252
    assert nearest_left_edge(600, label) == 2


def test_grounding_report_on_the_shipped_policy():
    from models.policy import SegZeroPolicy
    from models.toy import ANSWER_SLOTS, TOY_POLICY_DIR, grounding_report

    ds = SyntheticDataset(6, seed=10_000)
    scenes = [ds.scene(i) for i in range(len(ds))]
    rep = grounding_report(SegZeroPolicy.from_pretrained(str(TOY_POLICY_DIR)), scenes, batch_size=4)
    assert list(rep["slot_median_error"]) == list(ANSWER_SLOTS)
    assert all(0 <= e <= 840 for e in rep["slot_median_error"].values())
    assert rep["chance"] == pytest.approx(np.mean([1 / len(s.meta["shapes"]) for s, _ in scenes]))
    assert rep["first_pick"] in {k / 6 for k in range(7)} and rep["scenes"] == 6


def test_grounding_report_spread_of_each_slot():
    from models.policy import SegZeroPolicy
    from models.toy import ANSWER_SLOTS, TOY_POLICY_DIR, grounding_report

    ds = SyntheticDataset(2, seed=10_000)
    rep = grounding_report(SegZeroPolicy.from_pretrained(str(TOY_POLICY_DIR)), [ds.scene(i) for i in range(2)])
    assert list(rep["slot_median_std"]) == list(ANSWER_SLOTS)
    # a distribution over 0..840 has a standard deviation of at most 420 (half at each end)
    assert all(0 < v <= 420 for v in rep["slot_median_std"].values())


def test_sampling_report_at_a_vanishing_temperature_is_the_greedy_report():
    from models.policy import SegZeroPolicy
    from models.toy import TOY_POLICY_DIR, box_iou_report, sampling_report

    policy = SegZeroPolicy.from_pretrained(str(TOY_POLICY_DIR))
    ds = SyntheticDataset(4, seed=10_000)
    scenes = [ds.scene(i) for i in range(4)]
    greedy = box_iou_report(policy, [s for s, _ in scenes], batch_size=4)
    rep = sampling_report(policy, scenes, group_size=2, temperature=1e-4, batch_size=4)
    assert rep["greedy_box_iou"] == pytest.approx(greedy["box_iou"])
    assert rep["greedy_hit"] == pytest.approx(greedy["iou_gt_0.5"])
    # every sample is the greedy answer: the same figures, no group with both a hit and a miss
    assert rep["sampled_box_iou"] == pytest.approx(rep["greedy_box_iou"])
    assert rep["sampled_hit"] == rep["greedy_hit"] and rep["sampled_pick"] == rep["greedy_pick"]
    assert rep["greedy_miss_sample_hits"] == 0 and rep["mixed_groups"] == 0
    hot = sampling_report(policy, scenes, group_size=2, temperature=1.0, batch_size=4)
    assert hot == sampling_report(policy, scenes, group_size=2, temperature=1.0, batch_size=4)  # seeded
    assert hot["sampled_box_iou"] != rep["sampled_box_iou"]  # T = 1 samples other answers


def test_query_report_groups_the_greedy_box_iou_by_template_and_shape_count():
    from data.synthetic import QUERY_TEMPLATES, query_template
    from models.policy import SegZeroPolicy
    from models.toy import TOY_POLICY_DIR, box_iou_report, query_report

    policy = SegZeroPolicy.from_pretrained(str(TOY_POLICY_DIR))
    ds = SyntheticDataset(8, seed=10_000)
    scenes = [ds.scene(i) for i in range(8)]
    rep = query_report(policy, scenes, batch_size=4)
    ious = box_iou_report(policy, [s for s, _ in scenes], batch_size=4)["ious"]
    assert rep["box_iou"] == pytest.approx(np.mean(ious))
    assert 0 <= rep["picked"] <= 1 and len(rep["picked_median_error"]) == 4
    assert rep["target_median_width"] == np.median([s.solution["bbox"][2] - s.solution["bbox"][0] for s, _ in scenes])
    n_picked = round(rep["picked"] * 8)
    assert n_picked >= 1 and rep["picked"] == n_picked / 8
    assert rep["picked_box_iou"] * n_picked + (rep["missed_box_iou"] or 0) * (8 - n_picked) == pytest.approx(
        sum(ious), abs=1e-3)  # every answer of these scenes parses
    templates = [query_template(s.query) for s, _ in scenes]
    assert list(rep["by_template"]) == [t for t in QUERY_TEMPLATES if t in templates]
    for name, groups, keys in (("template", rep["by_template"], templates),
                               ("shapes", rep["by_shapes"], [len(s.meta["shapes"]) for s, _ in scenes])):
        assert sum(g["scenes"] for g in groups.values()) == 8, name
        for key, g in groups.items():
            mine = [iou for k, iou in zip(keys, ious) if k == key]
            assert g["scenes"] == len(mine)
            assert g["box_iou"] == pytest.approx(np.mean(mine), abs=1e-4)
            assert g["hit"] == pytest.approx(np.mean([i > 0.5 for i in mine]), abs=1e-4)


def test_vision_probe_reads_colour_and_size_from_the_shipped_image_tokens():
    from models.policy import SegZeroPolicy
    from models.toy import TOY_POLICY_DIR, vision_probe

    policy = SegZeroPolicy.from_pretrained(str(TOY_POLICY_DIR))
    train = [SyntheticDataset(32, seed=30_000).scene(i) for i in range(32)]
    test = [SyntheticDataset(16, seed=10_000).scene(i) for i in range(16)]
    rep = vision_probe(policy, train, test, steps=200)
    assert list(rep) == ["colour", "kind", "size"]
    assert [rep[k]["classes"] for k in rep] == [6, 7, 2]
    assert len({r["test_tokens"] for r in rep.values()}) == 1 and rep["colour"]["test_tokens"] > 50
    # the toy policy's vision phase taught the tokens their shape's colour and size (models.toy)
    assert rep["colour"]["accuracy"] > 0.9 > 0.5 > rep["colour"]["majority"]
    assert rep["size"]["accuracy"] > rep["size"]["majority"] + 0.1
    assert rep == vision_probe(policy, train, test, steps=200)  # seeded


def test_diagnose_command_prints_every_requested_report(capsys):
    from models.toy import main

    main(["diagnose", "--scenes", "4", "--by-query", "--probe", "8"])
    rep = json.loads(capsys.readouterr().out)
    assert rep["scenes"] == 4 and "sampling" not in rep
    assert sum(g["scenes"] for g in rep["queries"]["by_template"].values()) == 4
    assert list(rep["probe"]) == ["colour", "kind", "size"]
    for bad in (["--scenes", "0"], ["--probe", "-1"]):
        with pytest.raises(SystemExit):
            main(["diagnose", *bad])
    assert "--scenes must be >= 1" in capsys.readouterr().err
    for what, bad, message in (("diagnose", ["--threads", "0"], "--threads must be >= 1"),
                               ("policy", ["--vision-steps", "-1"], "--vision-steps must be >= 0"),
                               ("policy", ["--kind-weight", "-1"], "--kind-weight must be >= 0")):
        with pytest.raises(SystemExit):
            main([what, "--out", "unused", *bad])
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------------- grounding phase

def test_target_token_mask_hand_computed():
    from models.toy import target_token_mask

    mask = np.zeros((80, 80), dtype=np.uint8)  # 8 x 8 cells of 10 x 10 pixels
    mask[0:10, 0:10] = 1   # cell 0 fully
    mask[0:10, 10:11] = 1  # 10 % of cell 1 (the bar is >= 10 %)
    mask[20:22, 20:24] = 1  # 8 % of cell 2 * 8 + 2 = 18
    sel = target_token_mask(mask)
    assert sel.shape == (64,) and sel.dtype == torch.bool
    assert sel.nonzero().view(-1).tolist() == [0, 1]
    small = np.zeros((80, 80), dtype=np.uint8)
    small[20:22, 20:24] = 1  # no cell reaches 10 %: the most covered one
    small[35, 35] = 1
    assert target_token_mask(small).nonzero().view(-1).tolist() == [18]


def test_answer_aux_targets_read_the_query_and_the_target():
    from data.synthetic import COLORS, KINDS, SIZES
    from models.toy import answer_aux_targets

    ds = SyntheticDataset(40, seed=3, reasoning_fraction=0.0)
    seen_none = False
    for s in ds:
        classes, centre = answer_aux_targets(s)
        words = s.query.split()
        shape = s.meta["shapes"][s.meta["target"]]
        assert classes[0] == (list(COLORS).index(shape["color"]) + 1 if shape["color"] in words else 0)
        assert classes[1] == (list(KINDS).index(shape["kind"]) + 1 if shape["kind"] in words else 0)
        assert classes[2] == (list(SIZES).index(shape["size"]) + 1 if shape["size"] in words else 0)
        assert classes[3:] == [list(COLORS).index(shape["color"]), list(KINDS).index(shape["kind"]),
                               list(SIZES).index(shape["size"])]
        ys, xs = np.nonzero(s.mask)
        assert centre == pytest.approx([xs.mean() / s.mask.shape[1], ys.mean() / s.mask.shape[0]])
        seen_none |= classes[0] == 0
    assert seen_none  # some referring queries name no colour ("the star")


def test_ground_policy_few_steps(tmp_path):
    from safetensors.torch import load_file

    from models.policy import SegZeroPolicy
    from models.toy import TOY_POLICY_DIR, ground_policy

    rec = ground_policy(TOY_POLICY_DIR, tmp_path / "g", steps=2, batch=2, heldout=2, eval_every=1, max_len=64,
                        log=lambda *_: None)
    assert json.loads((tmp_path / "g" / "ground.json").read_text())["recipe"]["steps"] == 2
    assert [h["step"] for h in rec["history"]] == [1]
    assert set(rec["result"]) >= {"box_iou", "first_pick", "x1_median_error", "per_scene_box_iou"}
    before = load_file(str(TOY_POLICY_DIR / "model.safetensors"))
    after = load_file(str(tmp_path / "g" / "model.safetensors"))
    assert set(after) == set(before)  # the same Qwen2.5-VL: the auxiliary heads are not saved
    assert any(not torch.equal(before[k], after[k]) for k in before)
    SegZeroPolicy.from_pretrained(str(tmp_path / "g"))


def test_aligned_aux_loss_scores_classes_against_the_word_embeddings():
    from models.policy import SegZeroPolicy
    from models.toy import _AUX_OUT, TOY_POLICY_DIR, _attribute_word_ids, aux_loss

    policy = SegZeroPolicy.from_pretrained(str(TOY_POLICY_DIR))
    tok = policy.processor.tokenizer
    ids = _attribute_word_ids(tok)
    assert tok.convert_ids_to_tokens(ids[:3].tolist()) == ["Ġred", "Ġgreen", "Ġblue"] and len(ids) == 15
    ds = SyntheticDataset(2, seed=5)
    scenes = [ds.scene(i) for i in range(2)]
    torch.manual_seed(0)
    head = torch.nn.Linear(128, _AUX_OUT)
    head.word_scale = torch.nn.Parameter(torch.tensor(10.0))
    args = (policy, head, [s for s, _ in scenes], [lab for _, lab in scenes])
    aligned = aux_loss(*args, aligned=True)
    aligned.backward()
    # the class columns of the linear head are unused; the word embeddings get the gradient
    assert head.weight.grad[1:16].abs().sum() == 0 and head.weight.grad[0].abs().sum() > 0
    assert policy.model.get_input_embeddings().weight.grad[ids].abs().sum() > 0
    assert head.word_scale.grad is not None
    assert not torch.isclose(aligned.detach(), aux_loss(*args).detach())
