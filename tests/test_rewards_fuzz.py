"""Property-based fuzzing of the parser and the rewards: no input string may raise (SPEC section 3).

Three kinds of input: arbitrary text, text assembled from the fragments answers are made of, and
valid answers (from ``format_answer``) mutated by deleting, inserting, replacing and truncating.
Besides "does not raise", each example checks invariants that hold for every input: every term is
in [0, 1], the sum equals the terms, hard and soft IoU agree, the batch scorer equals the
single-completion functions, and a status outside "ok" never earns the strict format reward.
"""
import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards import (
    STATUSES,
    TERM_NAMES,
    bbox_iou_reward,
    bbox_l1_reward,
    format_answer,
    parse_answer,
    point_l1_reward,
    score_completions,
    seg_zero_reward,
    segmentation_format_reward,
    thinking_format_reward,
)
from rewards.parse import first_block

GT = {"bbox": [100, 120, 400, 380], "points": [[200, 200], [300, 320]]}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "{", "}", "[", "]", ",", ":", " ", "\n", '"', "'",
    '"bbox"', '"points_1"', '"points_2"', '"point"', "bbox", "NaN", "Infinity", "-Infinity", "1e400",
    "-", "0", "7", "99.5", "100000", "100001", "1e5", "true", "null", '"10"', "9" * 30,
]

coordinate = st.one_of(
    st.integers(-1000, 2000),
    st.floats(-1e5, 1e5, allow_nan=False, allow_infinity=False),
)


@st.composite
def valid_answers(draw):
    """A well-formed completion from format_answer with arbitrary (bounded) coordinates."""
    bbox = draw(st.lists(coordinate, min_size=4, max_size=4))
    points = draw(st.lists(st.lists(coordinate, min_size=2, max_size=2), min_size=2, max_size=2))
    reasoning = draw(st.one_of(st.none(), st.text(alphabet="abc {}[]\"'<>/\n", max_size=30)))
    think = draw(st.booleans())
    reasoning = reasoning if think and reasoning is not None and "<" not in reasoning else None
    return format_answer(bbox, points, reasoning=reasoning, think=think)


@st.composite
def mutated_answers(draw):
    """A valid answer with 1-4 random edits: delete, insert (a fragment or any text), replace, truncate."""
    text = draw(valid_answers())
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        piece = draw(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)))
        edit = draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
        if edit == "delete":
            text = text[:i] + text[j:]
        elif edit == "insert":
            text = text[:i] + piece + text[i:]
        elif edit == "replace":
            text = text[:i] + piece + text[j:]
        else:
            text = text[:i]
    return text


fragment_soup = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
any_completion = st.one_of(st.text(), fragment_soup, mutated_answers())


def check_invariants(completion):
    parsed = parse_answer(completion)
    assert parsed.status in STATUSES
    assert parsed.ok == (parsed.bbox is not None and parsed.points is not None and parsed.status == "ok")
    parse_answer(completion, single_quotes=True)  # the lenient path must not raise either

    hard = (
        thinking_format_reward(completion),
        segmentation_format_reward(completion),
        bbox_iou_reward(completion, GT),
        bbox_l1_reward(completion, GT),
        point_l1_reward(completion, GT),
    )
    soft_iou = bbox_iou_reward(completion, GT, soft=True)
    assert all(v in (0.0, 1.0) for v in hard)
    assert 0.0 <= soft_iou <= 1.0 and hard[2] == float(soft_iou > 0.5)
    assert 0.0 <= bbox_l1_reward(completion, GT, soft=True) <= 1.0
    assert 0.0 <= point_l1_reward(completion, GT, soft=True) <= 1.0
    assert segmentation_format_reward(completion, strict=False) in (0.0, 1.0)
    if not parsed.ok:
        assert hard[1] == 0.0 and hard[4] == 0.0
    assert seg_zero_reward(completion, GT) == sum(hard)
    assert seg_zero_reward(completion, GT, think=False) == sum(hard[1:])

    batch = score_completions([completion], [GT])
    assert tuple(batch.terms[name][0] for name in TERM_NAMES) == hard
    assert batch.total[0] == sum(hard)


@FUZZ
@given(st.text())
def test_arbitrary_text_never_raises(completion):
    check_invariants(completion)


@FUZZ
@given(fragment_soup)
def test_fragment_soup_never_raises(completion):
    check_invariants(completion)


@FUZZ
@given(mutated_answers())
def test_mutated_answers_never_raise(completion):
    check_invariants(completion)


@FUZZ
@given(valid_answers())
def test_valid_answers_parse_ok(completion):
    parsed = parse_answer(completion)
    assert parsed.ok and segmentation_format_reward(completion) == 1.0
    check_invariants(completion)


@st.composite
def ground_truths(draw):
    """A gt box inside the 840 frame, x1 < x2 and y1 < y2, and two integer points inside it.

    (A box one pixel wide, x1 == x2, has IoU 0 even with itself under SPEC 4.3's "ix1 < ix2" rule;
    test_rewards.py pins that quirk down.)
    """
    x1, x2 = sorted(draw(st.lists(st.integers(0, 839), min_size=2, max_size=2, unique=True)))
    y1, y2 = sorted(draw(st.lists(st.integers(0, 839), min_size=2, max_size=2, unique=True)))
    point = st.tuples(st.integers(x1, x2), st.integers(y1, y2)).map(list)
    return {"bbox": [x1, y1, x2, y2], "points": [draw(point), draw(point)]}


@FUZZ
@given(ground_truths(), st.booleans(), st.booleans())
def test_format_answer_of_ground_truth_earns_everything(gt, soft, strict):
    completion = format_answer(gt["bbox"], gt["points"], reasoning="because")
    assert seg_zero_reward(completion, gt, strict=strict, soft=soft) == 5.0
    swapped = format_answer(gt["bbox"], gt["points"][::-1])
    assert seg_zero_reward(swapped, gt, strict=strict, soft=soft) == 5.0
    assert seg_zero_reward(format_answer(gt["bbox"], gt["points"], think=False), gt, think=False) == 4.0


@FUZZ
@given(ground_truths(), ground_truths())
def test_point_order_never_matters(gt, pred):
    obj = {"bbox": pred["bbox"], "points_1": pred["points"][0], "points_2": pred["points"][1]}
    swapped = {"bbox": pred["bbox"], "points_1": pred["points"][1], "points_2": pred["points"][0]}
    a = f"<think>x</think><answer>{json.dumps(obj)}</answer>"
    b = f"<think>x</think><answer>{json.dumps(swapped)}</answer>"
    assert point_l1_reward(a, gt, soft=True) == point_l1_reward(b, gt, soft=True)
    assert seg_zero_reward(a, gt) == seg_zero_reward(b, gt)


# The SPEC's regular expressions, as written (quadratic on some inputs): the linear-time code must
# agree with them on every input.
SPEC_THINKING_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
SPEC_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
tag_soup = st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x", "<",
                                     "think>", "answer>", "</"]), max_size=30).map("".join)


@FUZZ
@given(tag_soup)
def test_linear_time_matching_equals_the_spec_regexes(completion):
    expected = 1.0 if SPEC_THINKING_FORMAT.fullmatch(completion.strip()) else 0.0
    assert thinking_format_reward(completion) == expected
    block = SPEC_ANSWER_BLOCK.search(completion)
    assert first_block(completion, "<answer>", "</answer>") == (block.group(1) if block else None)
