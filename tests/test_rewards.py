"""Hand-computed checks of the answer parser and the five Seg-Zero rewards (SPEC.md sections 3-4).

Box areas use inclusive pixels: [0, 0, 99, 99] is 100 x 100 = 10000 pixels.
"""
import json
import math

import numpy as np
import pytest

from rewards import (
    MAX_ABS_COORD,
    STATUSES,
    TERM_NAMES,
    bbox_iou_reward,
    bbox_l1_reward,
    box_iou,
    format_answer,
    parse_answer,
    point_l1_reward,
    score_completions,
    seg_zero_reward,
    segmentation_format_reward,
    thinking_format_reward,
)

GT = {"bbox": [0, 0, 99, 99], "points": [[20, 30], [70, 60]]}


def answer(bbox=(0, 0, 99, 99), p1=(20, 30), p2=(70, 60), think="the object", raw=None):
    """A completion in the expected format; ``raw`` replaces the JSON text verbatim."""
    body = raw if raw is not None else json.dumps({"bbox": list(bbox), "points_1": list(p1), "points_2": list(p2)})
    prefix = f"<think>{think}</think> " if think is not None else ""
    return f"{prefix}<answer>{body}</answer>"


def terms(completion, solution=GT, soft=False):
    return (
        thinking_format_reward(completion),
        segmentation_format_reward(completion),
        bbox_iou_reward(completion, solution, soft=soft),
        bbox_l1_reward(completion, solution, soft=soft),
        point_l1_reward(completion, solution, soft=soft),
    )


# ---------------------------------------------------------------------------------------------
# parse_answer


def test_parse_expected_format():
    parsed = parse_answer('<think> a dog </think>\n<answer>{"bbox": [1, 2, 30.5, 40], "points_1": [5, 6], "points_2": [7, 8]}</answer>')
    assert parsed.ok and parsed.status == "ok" and parsed.answer_block
    assert parsed.bbox == [1.0, 2.0, 30.5, 40.0]
    assert parsed.points == [[5.0, 6.0], [7.0, 8.0]]
    assert parsed.reasoning == "a dog"


@pytest.mark.parametrize(
    "completion, status",
    [
        ("", "no_json"),
        ("<think>x</think><answer>no json here</answer>", "no_json"),
        # truncated generation: the object never closes
        ('<think>x</think><answer>{"bbox": [1, 2, 3', "no_json"),
        # single quotes are not JSON (SPEC section 3)
        ("<answer>{'bbox': [1, 2, 3, 4], 'points_1': [1, 2], 'points_2': [3, 4]}</answer>", "invalid_json"),
        ('<answer>{"bbox": [1, 2, 3, 4], "points_1": [1, 2], "points_2": [3, 4],}</answer>', "invalid_json"),
        ('<answer>{"bbox": [1, 2, 3, 4], "points_1": [1, 2]}</answer>', "missing_keys"),
        ('<answer>{"Bbox": [1, 2, 3, 4], "points_1": [1, 2], "points_2": [3, 4]}</answer>', "missing_keys"),
        ('<answer>{"bbox": [1, 2, 3], "points_1": [1, 2], "points_2": [3, 4]}</answer>', "bad_shape"),
        ('<answer>{"bbox": [1, 2, 3, 4], "points_1": [1, 2, 3], "points_2": [3, 4]}</answer>', "bad_shape"),
        ('<answer>{"bbox": "1, 2, 3, 4", "points_1": [1, 2], "points_2": [3, 4]}</answer>', "bad_shape"),
        ('<answer>{"bbox": [NaN, 2, 3, 4], "points_1": [1, 2], "points_2": [3, 4]}</answer>', "bad_values"),
        ('<answer>{"bbox": [1, 2, 3, Infinity], "points_1": [1, 2], "points_2": [3, 4]}</answer>', "bad_values"),
        ('<answer>{"bbox": [1, 2, 3, 1e400], "points_1": [1, 2], "points_2": [3, 4]}</answer>', "bad_values"),  # json -> inf
        ('<answer>{"bbox": [1, 2, 3, 100000.5], "points_1": [1, 2], "points_2": [3, 4]}</answer>', "bad_values"),
        ('<answer>{"bbox": [1, 2, 3, 4], "points_1": [true, 2], "points_2": [3, 4]}</answer>', "bad_values"),
        ('<answer>{"bbox": [1, 2, 3, 4], "points_1": ["1", 2], "points_2": [3, 4]}</answer>', "bad_values"),
        ('<answer>{"bbox": [1, 2, 3, 4], "points_1": [null, 2], "points_2": [3, 4]}</answer>', "bad_values"),
        # a 5000-digit integer: Python's json refuses it (int max str digits) -> not a crash
        ('<answer>{"bbox": [1, 2, 3, ' + "9" * 5000 + '], "points_1": [1, 2], "points_2": [3, 4]}</answer>', "invalid_json"),
        # 4000 digits decode to an int that overflows float conversion: caught as a bad value
        ('<answer>{"bbox": [1, 2, 3, ' + "9" * 4000 + '], "points_1": [1, 2], "points_2": [3, 4]}</answer>', "bad_values"),
        # deep nesting: json.loads raises RecursionError, caught
        ('<answer>{"bbox": ' + "[" * 100_000 + "]" * 100_000 + "}</answer>", "invalid_json"),
    ],
)
def test_parse_failures(completion, status):
    parsed = parse_answer(completion)
    assert parsed.status == status and status in STATUSES
    assert not parsed.ok


def test_magnitude_bound_is_inclusive_and_negative_coordinates_are_numbers():
    parsed = parse_answer(answer(bbox=(-MAX_ABS_COORD, -5, MAX_ABS_COORD, 99.5)))
    assert parsed.ok and parsed.bbox == [-1e5, -5.0, 1e5, 99.5]


def test_parse_fields_independently():
    # good box, NaN point: the box survives, the points do not
    parsed = parse_answer(answer(raw='{"bbox": [0, 0, 99, 99], "points_1": [NaN, 1], "points_2": [3, 4]}'))
    assert parsed.status == "bad_values" and parsed.bbox == [0, 0, 99, 99] and parsed.points is None
    parsed = parse_answer(answer(raw='{"bbox": [0, 0, 99], "points_1": [1, 1], "points_2": [3, 4]}'))
    assert parsed.status == "bad_shape" and parsed.bbox is None and parsed.points == [[1, 1], [3, 4]]


def test_extraction_rule():
    obj = '{"bbox": [0, 0, 99, 99], "points_1": [20, 30], "points_2": [70, 60]}'
    # no answer block: the first {...} of the whole completion is used
    parsed = parse_answer(f"<think>x</think> {obj}")
    assert parsed.ok and not parsed.answer_block
    # an answer block exists: braces in the reasoning are ignored
    parsed = parse_answer('<think>maybe {"bbox": [1, 1, 2, 2]}</think><answer>' + obj + "</answer>")
    assert parsed.ok and parsed.bbox == [0, 0, 99, 99]
    # an answer block without JSON: no fall-back to the reasoning's braces
    assert parse_answer("<think>" + obj + "</think><answer>none</answer>").status == "no_json"
    # two answer blocks: the first one counts
    assert parse_answer("<answer>nothing</answer><answer>" + obj + "</answer>").status == "no_json"
    # nested braces: the first brace-free {...} is the inner object
    parsed = parse_answer("<answer>{\"answer\": " + obj + "}</answer>")
    assert parsed.ok and parsed.points == [[20, 30], [70, 60]]
    parsed = parse_answer('<answer>{"bbox": [0, 0, 99, 99], "meta": {"a": 1}, "points_1": [1, 2], "points_2": [3, 4]}</answer>')
    assert parsed.status == "missing_keys" and parsed.json_object == {"a": 1}
    # no <think> block: reasoning is None
    assert parse_answer(obj).reasoning is None


def test_single_quotes_lenient_for_inference_only():
    completion = "<think>x</think><answer>{'bbox': [0, 0, 99, 99], 'points_1': [20, 30], 'points_2': [70, 60]}</answer>"
    strict = parse_answer(completion)
    assert strict.status == "invalid_json" and not strict.quotes_repaired
    lenient = parse_answer(completion, single_quotes=True)
    assert lenient.ok and lenient.quotes_repaired and lenient.bbox == [0, 0, 99, 99]
    # the rewards stay strict: only the thinking format is earned
    assert terms(completion) == (1.0, 0.0, 0.0, 0.0, 0.0)
    assert seg_zero_reward(completion, GT) == 1.0


def test_parse_rejects_non_string():
    with pytest.raises(TypeError, match="NoneType"):
        parse_answer(None)


@pytest.mark.parametrize("unit", ["<answer>", "<think>", "<think></think><answer>", "</think> <answer>",
                                  "<answer>{", "{", "{\"bbox\": [", "[" , "<think>x</think><answer></answer>"])
def test_parsing_and_rewards_take_linear_time_on_1mb(unit):
    # 1 MB of one repeated fragment (model output can be anything): a quadratic matcher takes
    # minutes here (64 KB of "<answer>" took 5.5 s); linear code takes milliseconds.
    import time

    text = unit * (2**20 // len(unit))
    gt = {"bbox": [1, 2, 3, 4], "points": [[1, 2], [3, 4]]}
    start = time.perf_counter()
    parse_answer(text, single_quotes=True)
    total = score_completions([text, "<think>" + text + "</answer>"], [gt, gt]).total
    assert time.perf_counter() - start < 2.0
    assert total.tolist()[0] in (0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# term 1: thinking format


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>a</think><answer>b</answer>", 1.0),
        ("  \n<think>multi\nline</think>\n\n<answer>b</answer>\n", 1.0),  # stripped; DOTALL
        ("<think></think><answer></answer>", 1.0),
        ("<answer>b</answer>", 0.0),
        ("<think>a</think>", 0.0),
        ("<think>a</think> text between <answer>b</answer>", 0.0),
        ("<think>a</think><answer>b</answer> trailing", 0.0),
        ("preamble <think>a</think><answer>b</answer>", 0.0),
        ("<answer>b</answer><think>a</think>", 0.0),
    ],
)
def test_thinking_format(completion, expected):
    assert thinking_format_reward(completion) == expected


# ---------------------------------------------------------------------------------------------
# term 2: segmentation format


def test_segmentation_format_strict_and_soft():
    good = answer()
    assert segmentation_format_reward(good) == 1.0 and segmentation_format_reward(good, strict=False) == 1.0
    # extra keys are allowed in strict mode (as in the released code)
    extra = answer(raw='{"bbox": [0, 0, 99, 99], "points_1": [1, 2], "points_2": [3, 4], "label": "dog"}')
    assert segmentation_format_reward(extra) == 1.0
    # fuzzy key names: soft only
    fuzzy = answer(raw='{"bbox_2d": [0, 0, 99, 99], "point_a": [1, 2], "points_b": [3, 4]}')
    assert segmentation_format_reward(fuzzy) == 0.0
    assert segmentation_format_reward(fuzzy, strict=False) == 1.0
    # ... but the accuracy terms need the exact names: 0 for all of them
    assert terms(fuzzy)[2:] == (0.0, 0.0, 0.0)
    # soft needs two valid point keys and a valid bbox key
    one_point = answer(raw='{"bbox_2d": [0, 0, 99, 99], "point_a": [1, 2], "points_b": [3]}')
    assert segmentation_format_reward(one_point, strict=False) == 0.0
    nan_box = answer(raw='{"my_bbox": [0, NaN, 99, 99], "point_a": [1, 2], "point_b": [3, 4]}')
    assert segmentation_format_reward(nan_box, strict=False) == 0.0
    assert segmentation_format_reward("no answer at all", strict=False) == 0.0


# ---------------------------------------------------------------------------------------------
# term 3: bbox IoU


def test_box_iou_hand_computed():
    # I: x 50..99, y 50..99 -> 50 * 50 = 2500; U = 10000 + 10000 - 2500 = 17500; IoU = 1/7
    assert box_iou([50, 50, 149, 149], [0, 0, 99, 99]) == pytest.approx(1 / 7)
    # identical boxes: 1
    assert box_iou([0, 0, 99, 99], [0, 0, 99, 99]) == 1.0
    # ix1 == ix2 (one shared pixel column): no overlap by the released code's rule
    assert box_iou([99, 0, 199, 99], [0, 0, 99, 99]) == 0.0
    # released-code quirk kept by SPEC 4.3: a box one pixel wide (x1 == x2) has IoU 0 with itself
    assert box_iou([5, 0, 5, 99], [5, 0, 5, 99]) == 0.0
    # inverted predicted box overlaps nothing (and does not divide by zero)
    assert box_iou([99, 99, 0, 0], [0, 0, 99, 99]) == 0.0
    assert box_iou([0, 0, -1, -1], [0, 0, 99, 99]) == 0.0


def test_bbox_iou_threshold_exactly_half():
    # pred x 0..49: I = 50 * 100 = 5000, U = 10000 + 5000 - 5000 = 10000 -> IoU = 0.5 exactly
    half = answer(bbox=(0, 0, 49, 99), p1=(10, 10), p2=(20, 20))
    assert bbox_iou_reward(half, GT) == 0.0  # hard needs IoU > 0.5
    assert bbox_iou_reward(half, GT, soft=True) == 0.5
    # pred x 0..50: I = 51 * 100 = 5100, U = 10000 -> 0.51 -> 1
    above = answer(bbox=(0, 0, 50, 99), p1=(10, 10), p2=(20, 20))
    assert bbox_iou_reward(above, GT) == 1.0
    assert bbox_iou_reward(above, GT, soft=True) == pytest.approx(0.51)


def test_negative_coordinates_are_scored():
    # pred [-10, -10, 99, 99]: I = 100 * 100 = 10000, pred area 110 * 110 = 12100 = U
    # IoU = 10000 / 12100 = 0.8264 > 0.5; L1 = (10 + 10 + 0 + 0) / 4 = 5 < 10
    neg = answer(bbox=(-10, -10, 99, 99))
    assert bbox_iou_reward(neg, GT, soft=True) == pytest.approx(10000 / 12100)
    assert bbox_iou_reward(neg, GT) == 1.0
    assert bbox_l1_reward(neg, GT) == 1.0


# ---------------------------------------------------------------------------------------------
# term 4: bbox L1

GT_L1 = {"bbox": [100, 100, 300, 300], "points": [[150, 150], [250, 250]]}


def test_bbox_l1_threshold_exactly_ten():
    # |110-100| + |110-100| + |310-300| + |310-300| = 40; / 4 = 10 -> hard needs < 10 -> 0
    at = answer(bbox=(110, 110, 310, 310), p1=(150, 150), p2=(250, 250))
    assert bbox_l1_reward(at, GT_L1) == 0.0
    assert bbox_l1_reward(at, GT_L1, soft=True) == pytest.approx(1 - 10 / 840)
    # (10 + 10 + 10 + 9) / 4 = 9.75 < 10 -> 1; soft 1 - 9.75 / 840
    below = answer(bbox=(110, 110, 310, 309), p1=(150, 150), p2=(250, 250))
    assert bbox_l1_reward(below, GT_L1) == 1.0
    assert bbox_l1_reward(below, GT_L1, soft=True) == pytest.approx(1 - 9.75 / 840)
    # far away: soft floors at 0. L1 = (2000 * 4) / 4 = 2000 > 840
    far = answer(bbox=(2100, 2100, 2300, 2300), p1=(2200, 2200), p2=(2200, 2200))
    assert bbox_l1_reward(far, GT_L1, soft=True) == 0.0


# ---------------------------------------------------------------------------------------------
# term 5: point distance

GT_PT = {"bbox": [100, 100, 300, 300], "points": [[100, 100], [300, 300]]}
BOX_PT = (100, 100, 400, 400)


def test_point_distance_threshold_exactly_hundred():
    # pred (160, 180) vs (100, 100): sqrt(60^2 + 80^2) = 100; (360, 380) vs (300, 300): 100
    # mean = 100 (the swapped pairing is longer: sqrt(140^2+120^2)=184.4, sqrt(260^2+280^2)=382.1)
    at = answer(bbox=BOX_PT, p1=(160, 180), p2=(360, 380))
    assert point_l1_reward(at, GT_PT) == 0.0  # hard needs < 100
    assert point_l1_reward(at, GT_PT, soft=True) == pytest.approx(1 - 100 / 840)
    # second point (300, 300) exactly: mean = (100 + 0) / 2 = 50 < 100
    below = answer(bbox=BOX_PT, p1=(160, 180), p2=(300, 300))
    assert point_l1_reward(below, GT_PT) == 1.0
    assert point_l1_reward(below, GT_PT, soft=True) == pytest.approx(1 - 50 / 840)


def test_point_order_does_not_matter():
    straight = answer(bbox=BOX_PT, p1=(160, 180), p2=(300, 300))
    swapped = answer(bbox=BOX_PT, p1=(300, 300), p2=(160, 180))
    for soft in (False, True):
        assert point_l1_reward(swapped, GT_PT, soft=soft) == point_l1_reward(straight, GT_PT, soft=soft)
    assert point_l1_reward(swapped, GT_PT, soft=True) == pytest.approx(1 - 50 / 840)


def test_points_must_lie_inside_the_predicted_box_edges_inclusive():
    gt = {"bbox": [100, 100, 200, 200], "points": [[100, 100], [200, 150]]}
    # on the corner and on the right edge: inside; distance 0 -> 1 (soft: 1 - 0 / 840 = 1)
    edge = answer(bbox=(100, 100, 200, 200), p1=(100, 100), p2=(200, 150))
    assert point_l1_reward(edge, gt) == 1.0 and point_l1_reward(edge, gt, soft=True) == 1.0
    # half a pixel outside the right edge: 0 even though the distance is 0.25
    outside = answer(bbox=(100, 100, 200, 200), p1=(100, 100), p2=(200.5, 150))
    assert point_l1_reward(outside, gt) == 0.0 and point_l1_reward(outside, gt, soft=True) == 0.0
    # inverted predicted box: nothing is inside it
    inverted = answer(bbox=(200, 200, 100, 100), p1=(150, 150), p2=(150, 150))
    assert point_l1_reward(inverted, gt) == 0.0


# ---------------------------------------------------------------------------------------------
# the sum and the batch scorer


def test_partial_answer_scores_only_unaffected_terms():
    # valid box, points_2 missing: format 0, point 0, the box terms still 1
    completion = answer(raw='{"bbox": [0, 0, 99, 99], "points_1": [20, 30]}')
    assert terms(completion) == (1.0, 0.0, 1.0, 1.0, 0.0)
    assert seg_zero_reward(completion, GT) == 3.0


def test_perfect_answer_and_non_cot_variant():
    perfect = format_answer(GT["bbox"], GT["points"], reasoning="the red one")
    assert seg_zero_reward(perfect, GT) == 5.0
    assert seg_zero_reward(perfect, GT, soft=True, strict=False) == 5.0
    assert seg_zero_reward(perfect, GT, think=False) == 4.0
    no_think = format_answer(GT["bbox"], GT["points"], think=False)
    assert no_think == '<answer>{"bbox": [0, 0, 99, 99], "points_1": [20, 30], "points_2": [70, 60]}</answer>'
    assert seg_zero_reward(no_think, GT, think=False) == 4.0
    assert seg_zero_reward(no_think, GT) == 4.0  # the thinking term is 0 for it anyway


def test_score_completions_matches_single_functions():
    completions = [
        format_answer(GT["bbox"], GT["points"], reasoning="r"),  # 5 terms: 1 1 1 1 1
        answer(bbox=(0, 0, 49, 99), p1=(10, 10), p2=(20, 20)),  # 1 1 0 0 ? (see below)
        "garbage",  # 0 0 0 0 0
        answer(raw="{'bbox': [0, 0, 99, 99]}"),  # thinking only
    ]
    # second row: IoU 0.5 -> 0; L1 = 50 / 4 = 12.5 -> 0; points (10,10),(20,20) inside [0,0,49,99]:
    # pairings mean((20-10, 30-10) -> 22.36, (70-20, 60-20) -> 64.03) = 43.2 < 100 -> 1
    batch = score_completions(completions, [GT] * 4)
    expected = np.array(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=np.float64
    )
    got = np.stack([batch.terms[name] for name in TERM_NAMES], axis=1)  # [N, 5]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(batch.total, [5.0, 3.0, 0.0, 1.0])
    assert batch.total.dtype == np.float64 and len(batch) == 4
    assert batch.statuses == ["ok", "ok", "no_json", "invalid_json"]
    for k, completion in enumerate(completions):
        assert batch.total[k] == seg_zero_reward(completion, GT)
    # non-CoT: the thinking term is reported as zeros and not summed
    non_cot = score_completions(completions, [GT] * 4, think=False)
    np.testing.assert_array_equal(non_cot.terms["thinking_format"], np.zeros(4))
    np.testing.assert_array_equal(non_cot.total, [4.0, 2.0, 0.0, 0.0])
    # soft: row 1 IoU 0.5, L1 1 - 12.5/840, points 1 - 43.2/840
    soft = score_completions(completions[1:2], [GT], soft=True)
    d = (math.hypot(10, 20) + math.hypot(50, 40)) / 2
    assert soft.terms["bbox_iou"][0] == 0.5
    assert soft.terms["bbox_l1"][0] == pytest.approx(1 - 12.5 / 840)
    assert soft.terms["point_l1"][0] == pytest.approx(1 - d / 840)


def test_score_completions_empty_and_user_errors():
    empty = score_completions([], [])
    assert empty.total.shape == (0,) and all(v.shape == (0,) for v in empty.terms.values())
    with pytest.raises(ValueError, match="2 completions but 1 solutions"):
        score_completions(["a", "b"], [GT])
    with pytest.raises(ValueError, match="solution bbox"):
        score_completions(["a"], [{"bbox": [0, 0, 99], "points": [[1, 1], [2, 2]]}])
    with pytest.raises(ValueError, match="x1 <= x2"):
        seg_zero_reward("a", {"bbox": [99, 0, 0, 99], "points": [[1, 1], [2, 2]]})
    with pytest.raises(ValueError, match="solution point"):
        bbox_iou_reward("a", {"bbox": [0, 0, 99, 99], "points": [[1, float("nan")], [2, 2]]})
    with pytest.raises(ValueError, match="solution must be"):
        point_l1_reward("a", {"box": [0, 0, 99, 99]})
    with pytest.raises(TypeError):
        seg_zero_reward(b"bytes", GT)
    # numpy ground truth is accepted
    gt_np = {"bbox": np.array([0, 0, 99, 99], dtype=np.int64), "points": np.array([[20, 30], [70, 60]])}
    assert seg_zero_reward(answer(), gt_np) == 5.0


# ---------------------------------------------------------------------------------------------
# format_answer


def test_format_answer_exact_text_and_round_trip():
    text = format_answer([10, 100, 200, 210], [[30, 110], [35, 180]], reasoning="  the dog on the left ")
    assert text == (
        '<think> the dog on the left </think> <answer>{"bbox": [10, 100, 200, 210], '
        '"points_1": [30, 110], "points_2": [35, 180]}</answer>'
    )
    assert format_answer([0, 0, 9, 9], [[1, 1], [2, 2]]).startswith("<think> </think> <answer>")
    # numpy integers stay integers, float coordinates round-trip
    text = format_answer(np.array([1, 2, 3, 4]), [[np.float32(1.5), 2], [3, np.int64(4)]])
    assert '"bbox": [1, 2, 3, 4]' in text and '"points_1": [1.5, 2]' in text
    parsed = parse_answer(text)
    assert parsed.ok and parsed.points == [[1.5, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(bbox=[0, 0, 9], points=[[1, 1], [2, 2]]), "bbox must have 4"),
        (dict(bbox=[0, 0, 9, 9], points=[[1, 1]]), "points must be two"),
        (dict(bbox=[0, 0, 9, float("nan")], points=[[1, 1], [2, 2]]), "finite"),
        (dict(bbox=[0, 0, 9, 1e6], points=[[1, 1], [2, 2]]), "finite"),
        (dict(bbox=[0, 0, 9, "9"], points=[[1, 1], [2, 2]]), "must be a number"),
        (dict(bbox=[0, 0, 9, True], points=[[1, 1], [2, 2]]), "must be a number"),
        (dict(bbox=[0, 0, 9, 9], points=[[1, 1], [2, 2]], reasoning="x", think=False), "think=False"),
        (dict(bbox=[0, 0, 9, 9], points=[[1, 1], [2, 2]], reasoning="a </think> b"), "</think>"),
    ],
)
def test_format_answer_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        format_answer(**kwargs)
