"""Ground truth from masks (SPEC.md section 5), solution strings, images, the SAM2 filter.

Every expected value below is worked out by hand in the comments. D is scipy's Euclidean
distance of a pixel to the nearest 0 pixel; points are (x, y), indices (row, col).
"""
import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from data import (format_solution, ground_truth_from_mask, load_image, mask_iou, parse_solution,
                  resize_to_frame, sam2_consistency_filter, scale_to_frame, solution_from_mask)


def mask_of(shape, pixels):
    m = np.zeros(shape, dtype=np.uint8)
    for r, c in pixels:
        m[r, c] = 1
    return m


def test_single_pixel_uses_fallback_window():
    # One pixel at (row 2, col 3): D = 1 there, p1 = (3, 2). Distances to p1: [0], median 0,
    # nothing is strictly farther -> fallback window rows [-8, 12) cols [-7, 13) clipped to the
    # 5 x 6 image; its max of D is the pixel itself -> p2 = (3, 2).
    bbox, points = ground_truth_from_mask(mask_of((5, 6), [(2, 3)]))
    assert bbox == [3, 2, 3, 2]
    assert points == [[3, 2], [3, 2]]


def test_rectangle_3x5():
    # Rows 1..3, cols 1..5 of a 5 x 7 image. D on the middle row (row 2) = [1, 2, 2, 2, 1]
    # (col 1 and col 5 touch the zero columns 0 and 6; the others are 2 rows from rows 0 / 4);
    # rows 1 and 3 have D = 1. p1 = first max = (row 2, col 2) -> (2, 2).
    # Distances to p1 (15 pixels): 0, 1 x4, sqrt2 x4, 2, sqrt5 x2, 3, sqrt10 x2; the median (8th
    # value) is sqrt2. Far = {(2,4): D 2, (1,4), (3,4), (2,5), (1,5), (3,5): D 1} -> p2 = (4, 2).
    m = np.zeros((5, 7), dtype=np.uint8)
    m[1:4, 1:6] = 1
    bbox, points = ground_truth_from_mask(m)
    assert bbox == [1, 1, 5, 3]
    assert points == [[2, 2], [4, 2]]


def test_l_shape():
    # 7 x 7 image: vertical bar rows 1..3 x cols 1..2, horizontal bar rows 4..5 x cols 1..5.
    # Every pixel has a zero 4-neighbour (D = 1) except (row 4, col 2), whose nearest zero is the
    # diagonal (3, 3): D = sqrt2 -> p1 = (2, 4).
    # Distances to p1 (16 pixels): 0, 1 x4, sqrt2 x3, 2 x2, sqrt5 x2, 3 x2, sqrt10 x2;
    # median = (sqrt2 + 2) / 2 = 1.707 (8th and 9th values). Far = the 8 pixels at >= 2, all D 1;
    # the first in row-major order is (row 1, col 1) (distance sqrt10) -> p2 = (1, 1).
    m = np.zeros((7, 7), dtype=np.uint8)
    m[1:4, 1:3] = 1
    m[4:6, 1:6] = 1
    bbox, points = ground_truth_from_mask(m)
    assert bbox == [1, 1, 5, 5]
    assert points == [[2, 4], [1, 1]]


def test_plus_shape_fallback_returns_center():
    # Plus centred at (2, 2) in 5 x 5: the centre's nearest zero is diagonal (D = sqrt2), arms D 1.
    # p1 = (2, 2); distances [1, 1, 0, 1, 1], median 1, none strictly greater -> fallback:
    # (cy, cx) = (int(10 / 5), int(10 / 5)) = (2, 2), window = whole image, max D at the centre.
    m = mask_of((5, 5), [(1, 2), (2, 1), (2, 2), (2, 3), (3, 2)])
    assert ground_truth_from_mask(m) == ([1, 1, 3, 3], [[2, 2], [2, 2]])


def test_square_ring_far_point_on_far_side():
    # 5 x 5 square ring (rows/cols 1..5, 3 x 3 hole) in 7 x 7: all 16 pixels have D = 1, so
    # p1 = first = (1, 1). Distances: 0, 1, 1, 2, 2, 3, 3, 4, 4, sqrt17 x2, sqrt20 x2, 5, 5, sqrt32;
    # median = (4 + 4) / 2 = 4. Far: (2,5), (3,5), (4,5), (5,2), (5,3), (5,4), (5,5), all D 1;
    # first in row-major order: (row 2, col 5) -> p2 = (5, 2).
    m = np.zeros((7, 7), dtype=np.uint8)
    m[1:6, 1:6] = 1
    m[2:5, 2:5] = 0
    assert ground_truth_from_mask(m) == ([1, 1, 5, 5], [[1, 1], [5, 2]])


def test_fallback_off_mask_point_is_snapped():
    # Three isolated pixels A (0, 30), B (30, 0), C (30, 60) in a 31 x 61 image, all D = 1:
    # p1 = A (first in row-major order). Distances [0, sqrt1800, sqrt1800], median sqrt1800, far
    # empty -> window around (cy, cx) = (int(60/3), int(90/3)) = (20, 30): rows [10, 30),
    # cols [20, 40), where D is 0 everywhere (B, C are on row 30) -> argmax = top-left (10, 20),
    # which is off the mask. Nearest mask pixel: A at squared distance 10^2 + 10^2 = 200
    # (B: 800, C: 2000) -> p2 = A = (30, 0) instead of (20, 10).
    m = mask_of((31, 61), [(0, 30), (30, 0), (30, 60)])
    assert ground_truth_from_mask(m) == ([0, 0, 60, 30], [[30, 0], [30, 0]])


def test_ignore_value_counts_as_target_and_bool_masks_work():
    m = np.zeros((5, 7), dtype=np.uint8)
    m[1:4, 1:6] = 255
    assert ground_truth_from_mask(m) == ([1, 1, 5, 3], [[2, 2], [4, 2]])
    assert ground_truth_from_mask(m.astype(bool)) == ([1, 1, 5, 3], [[2, 2], [4, 2]])


def test_empty_and_bad_masks_raise():
    with pytest.raises(ValueError, match="empty mask"):
        ground_truth_from_mask(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="2-D"):
        ground_truth_from_mask(np.ones((2, 2, 2)))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_points_always_on_mask_and_inside_box(h, w, seed):
    m = (np.random.default_rng(seed).random((h, w)) < 0.4).astype(np.uint8)
    if not m.any():
        m[h // 2, w // 2] = 1
    (x1, y1, x2, y2), points = ground_truth_from_mask(m)
    for x, y in points:
        assert m[y, x] == 1
        assert x1 <= x <= x2 and y1 <= y <= y2


def test_scale_to_frame_rounding():
    # x by width 6: 3 * 840 / 6 = 420.0 -> 420; 5 * 140 = 700. y by height 5: 2 * 168 = 336;
    # 3 * 168 = 504; point (3, 2) -> (420, 336), (1, 3) -> (140, 504).
    # Half-way: 1 * 840 / 16 = 52.5 -> int(52.5 + 0.5) = 53.
    assert scale_to_frame([3, 2, 5, 3], [[3, 2], [1, 3]], width=6, height=5) == (
        [420, 336, 700, 504], [[420, 336], [140, 504]])
    assert scale_to_frame([1, 1, 1, 1], [[1, 1], [0, 0]], width=16, height=16)[0] == [53] * 4
    with pytest.raises(ValueError, match="width=0"):
        scale_to_frame([0, 0, 1, 1], [[0, 0], [0, 0]], width=0, height=5)


def test_scale_to_frame_refuses_bools_non_finite_and_non_integer_sizes():
    # True is an int to Python: unchecked, bbox [True, 0, 1, 1] in a 2 x 2 image became
    # [int(1 * 840 / 2 + 0.5), ...] = [420, ...] and width=True scaled x by 840 / 1.
    # NaN / inf used to escape as "cannot convert float NaN" / OverflowError without the value.
    for bbox, points, width, height, message in [
        ([True, 0, 1, 1], [[0, 0], [1, 1]], 2, 2, "got True"),
        ([0, 0, 1, 1], [[np.bool_(True), 0], [1, 1]], 2, 2, "True"),  # repr np.True_
        ([0, 0, 1, 1], [[0, 0], [1, 1]], True, 2, "width=True"),
        ([0, 0, 1, 1], [[0, 0], [1, 1]], 2.5, 2, "width=2.5"),
        ([math.nan, 0, 1, 1], [[0, 0], [1, 1]], 2, 2, "got nan"),
        ([0, 0, 1, 1], [[math.inf, 0], [1, 1]], 2, 2, "got inf"),
        (["1", 0, 1, 1], [[0, 0], [1, 1]], 2, 2, "got '1'"),
    ]:
        with pytest.raises(ValueError, match=message):
            scale_to_frame(bbox, points, width, height)
    # numpy integers are fine: x by width 6 -> 3 * 140 = 420, y by height 5 -> 2 * 168 = 336.
    assert scale_to_frame(np.array([3, 2, 3, 2]), [np.array([3, 2])] * 2, np.int64(6), np.int32(5)) == (
        [420, 336, 420, 336], [[420, 336], [420, 336]])


def test_one_row_image_and_border_touching_line():
    # 1 x 5 image, mask [0, 1, 1, 1, 0]. D = [0, 1, 2, 1, 0] (col 2 is 2 from cols 0 and 4).
    # p1 = (row 0, col 2). Distances to p1: [1, 0, 1], median 1, none strictly greater -> fallback:
    # cy = int(0) = 0, cx = int(6 / 3) = 2; window rows [-10, 10) -> [0, 1), cols [-8, 12) -> [0, 5);
    # its max of D is col 2 -> p2 = p1 = (2, 0). bbox [1, 0, 3, 0].
    # 840 frame: x * 840 / 5 = x * 168; y * 840 / 1 = 0 for y = 0.
    m = np.array([[0, 1, 1, 1, 0]], dtype=np.uint8)
    assert ground_truth_from_mask(m) == ([1, 0, 3, 0], [[2, 0], [2, 0]])
    assert solution_from_mask(m) == {"bbox": [168, 0, 504, 0], "points": [[336, 0], [336, 0]]}
    # A vertical line touching the top border: rows 0..2 of col 1 in a 4 x 3 image. The border is
    # not background ("on M as is"): D = [1, 1, 1] (every pixel has a zero left/right neighbour).
    # p1 = first max = (row 0, col 1). Distances [0, 1, 2], median 1, far = {row 2} -> p2 = (1, 2).
    m = np.zeros((4, 3), dtype=np.uint8)
    m[0:3, 1] = 1
    assert ground_truth_from_mask(m) == ([1, 0, 1, 2], [[1, 0], [1, 2]])


def test_solution_from_mask_in_840_frame():
    # The 3 x 5 rectangle above in a 5 x 7 image: bbox [1, 1, 5, 3], points (2, 2), (4, 2).
    # x * 840 / 7 = x * 120; y * 840 / 5 = y * 168.
    m = np.zeros((5, 7), dtype=np.uint8)
    m[1:4, 1:6] = 1
    assert solution_from_mask(m) == {"bbox": [120, 168, 600, 504],
                                     "points": [[240, 336], [480, 336]]}


def test_sam2_consistency_filter_prompts_box_and_p1():
    m = np.zeros((5, 7), dtype=np.uint8)
    m[1:4, 1:6] = 1  # 15 pixels, bbox [1, 1, 5, 3], p1 = (2, 2)
    calls = []

    def half(image, bbox, points):
        calls.append((bbox, points))
        out = np.zeros((5, 7), dtype=bool)
        out[1:4, 1:4] = True  # 9 of the 15 pixels: IoU = 9 / 15 = 0.6
        return out

    keep, iou = sam2_consistency_filter(np.zeros((5, 7, 3), np.uint8), m, half)
    assert calls == [([1, 1, 5, 3], [[2, 2]])]
    assert iou == pytest.approx(0.6) and keep  # >= 0.6 keeps
    keep, iou = sam2_consistency_filter(np.zeros((5, 7, 3), np.uint8), m, half, threshold=0.61)
    assert not keep
    # IoU of disjoint masks is 0; of two empty masks 1 (nothing to disagree on).
    assert mask_iou(np.eye(3), 1 - np.eye(3)) == 0.0 and mask_iou(np.zeros(3), np.zeros(3)) == 1.0


def test_solution_string_round_trip_and_errors():
    sol = {"bbox": [10, 100, 200, 210], "points": [[30, 110], [35, 180]]}
    text = format_solution(sol)
    assert text == "<box>(10,100),(200,210)</box><points>(30,110),(35,180)</points>"
    assert parse_solution(text) == sol
    assert parse_solution(" <box>( 1, 2 ),(3,4)</box> <points>(5,6), (7,8)</points>\n") == {
        "bbox": [1, 2, 3, 4], "points": [[5, 6], [7, 8]]}
    for bad in ["", "<box>(1,2),(3,4)</box>", "<box>(1,2),(3,4)</box><points>(5,6)</points>",
                "<box>(1.5,2),(3,4)</box><points>(5,6),(7,8)</points>", None]:
        with pytest.raises(ValueError):
            parse_solution(bad)
    with pytest.raises(ValueError, match="2 points"):
        format_solution({"bbox": [1, 2, 3, 4], "points": [[1, 2]]})
    # Only ASCII digits: "\u0663" is ARABIC-INDIC DIGIT THREE, which int() would read as 3.
    with pytest.raises(ValueError, match="malformed"):
        parse_solution("<box>(\u0663,2),(3,4)</box><points>(5,6),(7,8)</points>")


def test_load_and_resize_image(tmp_path):
    rgb = np.zeros((6, 10, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    assert np.array_equal(load_image(buf.getvalue()), rgb)
    path = tmp_path / "a.png"
    path.write_bytes(buf.getvalue())
    assert load_image(path).shape == (6, 10, 3)
    # Bilinear resize of a constant image stays constant; aspect ratio is not kept.
    out = resize_to_frame(rgb)
    assert out.shape == (840, 840, 3) and (out[..., 0] == 200).all() and (out[..., 1] == 0).all()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_image(bad)
    with pytest.raises(ValueError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="uint8"):
        resize_to_frame(rgb.astype(np.float32))
    assert math.isclose(float(resize_to_frame(np.full((2, 2, 3), 7, np.uint8)).mean()), 7.0)
