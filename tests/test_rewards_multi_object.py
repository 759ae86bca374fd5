"""Multi-object rewards (SPEC.md section 9): hand-computed thresholds, Hungarian matching, fuzzing."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import (MAX_OBJECTS, MULTI_TERM_NAMES, OBJECT_STATUSES, format_objects_answer, hungarian_match,
                     multi_object_accuracy_reward, multi_object_format_reward, multi_object_reward,
                     non_repeat_reward, parse_objects, score_multi_object)


def obj(box, point):
    return {"bbox_2d": list(box), "point_2d": list(point)}


def answer(objects, think="<think> r </think>"):
    return f"{think}<answer>{json.dumps(objects)}</answer>"


A = obj([100, 100, 300, 300], [200, 200])


# ------------------------------------------------------------------------------------- parsing

def test_parse_ok_and_empty():
    p = parse_objects(answer([A, obj([0, 0, 5, 5], [1.5, 2])]))
    assert p.status == "ok" and p.num_objects == 2 and p.reasoning == "r"
    assert p.boxes.shape == (2, 4) and p.points.tolist() == [[200, 200], [1.5, 2]]
    e = parse_objects("<think>none</think><answer> [] </answer>")
    assert e.ok and e.num_objects == 0 and e.objects() == []


@pytest.mark.parametrize("text, status", [
    ("no tags at all", "no_answer"),
    ("<answer>[{\"bbox_2d\": [1,2,3,4], \"point_2d\": [1,2]}]", "no_answer"),  # truncated
    ("<answer>[{'bbox_2d': [1,2,3,4], 'point_2d': [1,2]}]</answer>", "invalid_json"),
    ("<answer>{\"bbox_2d\": [1,2,3,4], \"point_2d\": [1,2]}</answer>", "not_a_list"),
    ("<answer>[{\"bbox_2d\": [1,2,3,4]}]</answer>", "missing_keys"),
    ("<answer>[1, 2]</answer>", "missing_keys"),
    ("<answer>[{\"bbox_2d\": [1,2,3], \"point_2d\": [1,2]}]</answer>", "bad_shape"),
    ("<answer>[{\"bbox_2d\": [1,2,3,NaN], \"point_2d\": [1,2]}]</answer>", "bad_values"),
    ("<answer>[{\"bbox_2d\": [1,2,3,\"4\"], \"point_2d\": [1,2]}]</answer>", "bad_values"),
    ("<answer>[{\"bbox_2d\": [1,2,3,4], \"point_2d\": [true,2]}]</answer>", "bad_values"),
    ("<answer>[{\"bbox_2d\": [1,2,3,1e6], \"point_2d\": [1,2]}]</answer>", "bad_values"),
])
def test_parse_statuses(text, status):
    p = parse_objects(text)
    assert p.status == status and p.boxes is None and p.num_objects == 0


def test_parse_uses_first_answer_block_only():
    text = "<answer>[]</answer> <answer>" + json.dumps([A]) + "</answer>"
    assert parse_objects(text).num_objects == 0


def test_format_objects_answer_roundtrip():
    text = format_objects_answer([A], reasoning="the cup")
    assert text == '<think> the cup </think><answer>[{"bbox_2d": [100, 100, 300, 300], "point_2d": [200, 200]}]</answer>'
    assert format_objects_answer([]) == "<think> </think><answer>[]</answer>"
    with pytest.raises(ValueError, match="bbox_2d"):
        format_objects_answer([{"bbox_2d": [1, 2], "point_2d": [1, 2]}])


# ------------------------------------------------------------------------------- format reward

def test_format_reward_values():
    # tags 1 + (bbox ok 1 + point ok 1) / 1 = 3
    assert multi_object_format_reward(answer([A])) == 3.0
    # tags 1 + ((0 + 1) + (1 + 1)) / 2 = 2.5: the first box has 3 numbers
    two = [obj([1, 2, 3], [1, 2]), A]
    assert multi_object_format_reward(answer(two)) == 2.5
    # the shape check ignores the values: strings still count (accuracy does not)
    strings = [{"bbox_2d": ["a", "b", "c", "d"], "point_2d": ["x", "y"]}]
    assert multi_object_format_reward(answer(strings)) == 3.0
    assert multi_object_accuracy_reward(answer(strings), [A]) == 0.0
    # empty list: tags only; a dict instead of a list: tags only; no think block: object part only
    assert multi_object_format_reward("<think>x</think><answer>[]</answer>") == 1.0
    assert multi_object_format_reward("<think>x</think><answer>" + json.dumps(A) + "</answer>") == 1.0
    assert multi_object_format_reward("<answer>" + json.dumps([A]) + "</answer>") == 2.0
    # a non-object item adds 0: tags 1 + (0 + 2) / 2 = 2
    assert multi_object_format_reward("<think>x</think><answer>[3, " + json.dumps(A) + "]</answer>") == 2.0


# ----------------------------------------------------------------------------- accuracy reward

def acc(pred_objects, gt):
    return multi_object_accuracy_reward(answer(pred_objects), gt)


def test_iou_threshold_is_strict():
    gt = [obj([0, 0, 99, 99], [500, 500])]  # area 100 x 100 = 10000; the points never match
    # [0, 0, 99, 49]: 100 x 50 = 5000 inside -> IoU 0.5, not > 0.5; L1 = 50 / 4 = 12.5 -> 0
    assert acc([obj([0, 0, 99, 49], [0, 0])], gt) == 0.0
    # [0, 0, 99, 50]: 5100 / 10000 = 0.51 -> 1; L1 = 49 / 4 = 12.25 -> 0
    assert acc([obj([0, 0, 99, 50], [0, 0])], gt) == 1.0


def test_bbox_l1_threshold_is_strict():
    gt = [obj([100, 100, 300, 300], [700, 700])]
    # L1 = (10 + 10 + 10 + 10) / 4 = 10 -> 0; IoU = 191*191 / (2*201*201 - 191*191) = 0.82 -> 1
    assert acc([obj([110, 110, 310, 310], [0, 0])], gt) == 1.0
    # L1 = (9 + 10 + 10 + 10) / 4 = 9.75 -> 1; IoU 0.83 -> 1
    assert acc([obj([109, 110, 310, 310], [0, 0])], gt) == 2.0


def test_point_threshold_is_strict_and_needs_own_box():
    gt = [obj([600, 600, 700, 700], [200, 200])]  # the predicted boxes never match this box
    # distance sqrt(18^2 + 24^2) = 30 -> 0
    assert acc([obj([0, 0, 400, 400], [218, 224])], gt) == 0.0
    # distance sqrt(18^2 + 23^2) = 29.2 -> 1
    assert acc([obj([0, 0, 400, 400], [218, 223])], gt) == 1.0
    # distance 0 but the point (200, 200) lies outside its own box [100, 100, 199, 199] -> 0
    assert acc([obj([100, 100, 199, 199], [200, 200])], gt) == 0.0
    # on the box edge counts as inside (inclusive)
    assert acc([obj([100, 100, 200, 200], [200, 200])], gt) == 1.0


def test_exact_answer_scores_three_per_object():
    gt = [A, obj([500, 500, 700, 760], [600, 610])]
    assert acc(gt, gt) == 3.0
    assert acc(gt[::-1], gt) == 3.0  # the matching finds the order
    assert multi_object_reward(format_objects_answer(gt, "two things"), gt) == 7.0  # 3 + 3 + 1


def test_more_predictions_than_targets():
    far = obj([700, 700, 800, 800], [750, 750])
    # R = [[3], [0]] -> 3 / max(2, 1) = 1.5
    assert acc([A, far], [A]) == 1.5
    rows, cols, value = hungarian_match(np.array([A["bbox_2d"], far["bbox_2d"]]), np.array([A["point_2d"], far["point_2d"]]),
                                        np.array([A["bbox_2d"]]), np.array([A["point_2d"]]))
    assert rows.tolist() == [0] and cols.tolist() == [0] and value == 1.5


def test_fewer_predictions_than_targets():
    b = obj([500, 500, 700, 700], [600, 600])
    # one exact match out of two targets: 3 / 2
    assert acc([b], [A, b]) == 1.5


def test_hungarian_beats_greedy():
    # gt A = [0,0,100,100] pt (50,50); gt B = [0,0,100,139] pt (50,110)
    # P0 = A exactly: R[0,A] = 3; R[0,B]: IoU 10201/14140 = 0.72 -> 1, L1 39/4 = 9.75 -> 1, point 60 px -> 0: 2
    # P1 = [0,0,100,69] pt (50,10): R[1,A]: IoU 7070/10201 = 0.69 -> 1, L1 31/4 = 7.75 -> 1, point 40 px -> 0: 2
    #                               R[1,B]: IoU 7070/14140 = 0.5 -> 0, L1 70/4 -> 0, point 100 px -> 0: 0
    # R = [[3, 2], [2, 0]]: greedy (P0-A, P1-B) = 3, optimal (P0-B, P1-A) = 4 -> 4 / 2 = 2.0
    gt = [obj([0, 0, 100, 100], [50, 50]), obj([0, 0, 100, 139], [50, 110])]
    pred = [obj([0, 0, 100, 100], [50, 50]), obj([0, 0, 100, 69], [50, 10])]
    assert acc(pred, gt) == 2.0
    rows, cols, _ = hungarian_match(np.array([p["bbox_2d"] for p in pred]), np.array([p["point_2d"] for p in pred]),
                                    np.array([g["bbox_2d"] for g in gt]), np.array([g["point_2d"] for g in gt]))
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


def test_ties_give_one_value():
    # two identical predictions for one target: R = [[3], [3]]; either match -> 3 / 2
    assert acc([A, A], [A]) == 1.5
    # R = [[3, 2], [1, 0]]: both matchings sum to 3 -> 1.5
    # gt B = [0,0,100,104] pt (95,95); P1 = [40,40,140,140] pt (60,60): point 14 px from A's -> R[1,A] = 1
    gt = [obj([0, 0, 100, 100], [50, 50]), obj([0, 0, 100, 104], [95, 95])]
    pred = [obj([0, 0, 100, 100], [50, 50]), obj([40, 40, 140, 140], [60, 60])]
    assert acc(pred, gt) == 1.5


def test_object_cap_of_120():
    far = obj([800, 800, 830, 830], [810, 810])
    # 130 predictions, the first exact: M is cut to 120 -> 3 / 120
    assert acc([A] + [far] * 129, [A]) == pytest.approx(3 / 120)
    # the exact one at position 121 is cut off -> 0
    assert acc([far] * 120 + [A], [A]) == 0.0
    # 125 ground-truth objects, one exact prediction: N is cut to 120 -> 3 / 120
    assert acc([A], [A] + [far] * 124) == pytest.approx(3 / 120)
    assert MAX_OBJECTS == 120
    # every object is validated before the cut: a bad 125th object makes the answer invalid
    bad = [A] * 124 + [obj([1, 2, 3], [1, 2])]
    assert acc(bad, [A]) == 0.0


def test_empty_answers_and_targets_score_zero_accuracy():
    assert multi_object_accuracy_reward("<think>x</think><answer>[]</answer>", [A]) == 0.0
    assert multi_object_accuracy_reward("<think>x</think><answer>[]</answer>", []) == 0.0
    assert multi_object_accuracy_reward(answer([A]), []) == 0.0


def test_inverted_predicted_box_overlaps_nothing():
    # x1 > x2: IoU 0; L1 = (200 + 0 + 200 + 0) / 4 = 100 -> 0; point (200,200) not inside -> 0
    assert acc([obj([300, 100, 100, 300], [200, 200])], [A]) == 0.0


def test_solution_errors():
    with pytest.raises(ValueError, match="solution"):
        multi_object_accuracy_reward(answer([A]), [{"bbox_2d": [1, 2, 3]}])
    with pytest.raises(ValueError, match="x1 <= x2"):
        multi_object_accuracy_reward(answer([A]), [obj([5, 0, 1, 1], [0, 0])])
    with pytest.raises(ValueError, match="JSON"):
        multi_object_accuracy_reward(answer([A]), "[{bad")
    # the parquet's JSON string form is accepted
    assert multi_object_accuracy_reward(answer([A]), json.dumps([A])) == 3.0


# --------------------------------------------------------------------------- non-repeat reward

@pytest.mark.parametrize("text, value", [
    ("A cat. A dog. A bird.", 1.0),
    ("A cat. A dog. A cat. A bird.", 1.0),  # one repeat
    ("A cat. A dog. A cat. A dog.", 0.0),  # two repeats
    ("Same. Same. Same.", 0.0),  # two repeats of one sentence
    ("a.. . b ...  a", 1.0),  # empty pieces dropped: a, b, a -> one repeat
    ("", 1.0),
])
def test_non_repeat(text, value):
    assert non_repeat_reward(text) == value


# ----------------------------------------------------------------------------------- the batch

def test_score_multi_object_breakdown():
    gt = [A]
    texts = [format_objects_answer(gt, "x"),  # 3 + 3 + 1
             "<think>x</think><answer>[]</answer>",  # 1 + 0 + 1
             "garbage. garbage. garbage."]  # 0 + 0 + 0
    rb = score_multi_object(texts, [gt] * 3)
    assert tuple(rb.terms) == MULTI_TERM_NAMES
    assert rb.terms["multi_object_format"].tolist() == [3.0, 1.0, 0.0]
    assert rb.terms["multi_object_accuracy"].tolist() == [3.0, 0.0, 0.0]
    assert rb.terms["non_repeat"].tolist() == [1.0, 1.0, 0.0]
    assert rb.total.tolist() == [7.0, 2.0, 0.0]
    assert rb.statuses == ["ok", "ok", "no_answer"]
    with pytest.raises(ValueError, match="2 completions but 1"):
        score_multi_object(texts[:2], [gt])


# ---------------------------------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["bbox_2d", "point_2d", "x"]) | st.text(max_size=3), children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_text_never_raises(text):
    for completion in (text, "<answer>" + text + "</answer>", "<think>" + text + "</think><answer>[" + text + "]</answer>"):
        p = parse_objects(completion)
        assert p.status in OBJECT_STATUSES
        rb = score_multi_object([completion], [[A]])
        assert 0.0 <= rb.total[0] <= 7.0


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_json_answers_never_raise(value):
    completion = "<think>t</think><answer>" + json.dumps(value) + "</answer>"
    p = parse_objects(completion)
    assert p.status in OBJECT_STATUSES
    assert 0.0 <= multi_object_format_reward(completion) <= 3.0
    assert 0.0 <= multi_object_accuracy_reward(completion, [A]) <= 3.0


def test_deeply_nested_answer_does_not_raise():
    completion = "<answer>" + "[" * 100_000 + "]" * 100_000 + "</answer>"
    assert parse_objects(completion).status in ("invalid_json", "missing_keys")
    assert multi_object_reward(completion, [A]) >= 0.0


# ------------------------------------------------------------------------- linear-time parsing

# The lazy regexes that define the parse (module docstring): the linear code must agree with them.
_REF_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_REF_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_REF_THINKING_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)

_GOOD = '[{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}]'


def _check_against_regexes(text):
    from rewards.seg_zero import thinking_format_reward  # the tag term multi_object_format_reward adds

    p = parse_objects(text)
    think = _REF_THINK.search(text)
    assert p.reasoning == (think.group(1).strip() if think else None)
    block = _REF_ANSWER.search(text)
    if block is None:
        assert p.status == "no_answer"
    else:
        try:
            value, valid = json.loads(block.group(1)), True
        except ValueError:
            value, valid = None, False
        assert p.status != "no_answer" and (p.status == "invalid_json") == (not valid) and p.answer == value
    assert thinking_format_reward(text) == (1.0 if _REF_THINKING_FORMAT.fullmatch(text.strip()) else 0.0)


@pytest.mark.parametrize("text", [
    "", "no tags", answer([A]), answer([]), "<think> r </think>\n<answer>\n [] \n</answer>\n",
    f"<think>a</think><answer>{_GOOD}</answer>", f"  <think>a</think> \n <answer> {_GOOD} </answer>  ",
    f"<think>a</think> x <answer>{_GOOD}</answer>", f"<think>a</think><answer>{_GOOD}</answer> trailing",
    f"pre <think>a</think><answer>{_GOOD}</answer>", f"<answer>{_GOOD}</answer><think>a</think>",
    f"<answer>{_GOOD}", f"<answer>{_GOOD}</answer><answer>[]</answer>", "<answer><answer>[]</answer>",
    "<answer>[]</answer></answer>", "</answer><answer>[]</answer>", "<answer></answer>", "<answer> \t\n</answer>",
    "<answer>\xa0[]\u2028</answer>", "<answer>\x1c[]\x1f</answer>", "<think>a<think>b</think>c</think><answer>[]</answer>",
    "<think></think><answer></answer>", "<think>a</think></think><answer>[]</answer>",
    "<think>a</think><answer>[]</answer></answer>", "<think>a</think>\xa0<answer>[]</answer>\u3000",
    "<think>a</think><answer>b</answer>x</answer>", "<think>a</think><answer>b<answer>c</answer>",
    "<think>a</think><think>b</think><answer>[]</answer>", "<think>a</think <answer>[]</answer>",
])
def test_linear_parse_matches_the_regexes(text):
    _check_against_regexes(text)


_FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "\xa0", "\x1c", "\u2028", "[]", "x",
              _GOOD, "{", "[", "1", "<", ">", "</"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=14).map("".join))
def test_linear_parse_matches_the_regexes_fuzz(text):
    _check_against_regexes(text)


@pytest.mark.parametrize("unit", ["<answer>", "<think>", "</think><answer>", "<think></think><answer>",
                                  "</think> <answer>", "<answer> ", " </answer>", "<answer>[", "["])
def test_parsing_and_rewards_take_linear_time_on_1mb(unit):
    # 1 MB of one repeated fragment: the lazy regexes took 10 s on 64 KB of "<answer>" (and 29 s on
    # "<think>" + 128 KB of "</think><answer>"); linear code takes milliseconds.
    import time

    text = unit * (2**20 // len(unit))
    start = time.perf_counter()
    parse_objects(text)
    rb = score_multi_object([text, "<think>" + text + "</answer>"], [[A], [A]])
    assert time.perf_counter() - start < 2.0
    assert 0.0 <= rb.total.min() and rb.total.max() <= 7.0
