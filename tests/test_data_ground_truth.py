"""Ground truth from masks (SPEC.md section 5), LISA polygons -> mask (section 6), solution
strings, images, the SAM2 filter.

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
from data.lisa import apply_ignore_regions, polygons_to_mask


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
    # True is an int to Python: unchecked, bbox [True, 0, 1, 1] in a 2 x 2 image would become
    # [int(1 * 840 / 2 + 0.5), ...] = [420, ...] and width=True would scale x by 840 / 1; NaN / inf
    # would escape as "cannot convert float NaN" / OverflowError without the value.
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


# ------------------------------------------------------------- LISA polygons -> mask (SPEC 6)
#
# An axis-aligned rectangle with integer corners (x0, y0)-(x1, y1) covers, outline included, the
# pixels x0..x1 by y0..y1: raster area (x1 - x0 + 1) * (y1 - y0 + 1), shoelace area
# (x1 - x0) * (y1 - y0). Thin rectangles therefore rank differently under the two areas.


def rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def test_lisa_draws_by_raster_area_not_shoelace_area():
    shapes = [
        # thin ignore band x 0..9, y 4..5: shoelace 9 x 1 = 9, raster 10 x 2 = 20
        {"label": "ignore", "points": rect(0, 4, 9, 5)},
        # target x 3..8, y 2..4: shoelace 5 x 2 = 10 (larger), raster 6 x 3 = 18 (smaller)
        {"label": "target", "points": rect(3, 2, 8, 4)},
    ]
    # raster order: the band (20) first, the target (18) on top -> the shared row y 4, x 3..8 is
    # target (a shoelace order would draw the band last and make those 6 pixels 255)
    expected = np.zeros((8, 12), np.uint8)
    expected[4:6, 0:10] = 255
    expected[2:5, 3:9] = 1
    assert np.array_equal(polygons_to_mask(shapes, 8, 12), expected)

    # a degenerate target (three collinear points, shoelace area 0) still covers its outline,
    # row y 2, x 0..9: raster 10 > 9 of the ignore square x 3..5, y 1..3 (shoelace 4), so the
    # square is drawn last and wins x 3..5 of that row
    shapes = [{"label": "ignore", "points": rect(3, 1, 5, 3)},
              {"label": "target", "points": [[0, 2], [9, 2], [5, 2]]}]
    expected = np.zeros((5, 11), np.uint8)
    expected[2, 0:10] = 1
    expected[1:4, 3:6] = 255
    assert np.array_equal(polygons_to_mask(shapes, 5, 11), expected)


def test_lisa_raster_area_counts_only_pixels_inside_the_image():
    shapes = [
        # target (-100, -100)-(1, 1): shoelace 101 x 101, but only x 0..1, y 0..1 (4 px) in the image
        {"label": "target", "points": rect(-100, -100, 1, 1)},
        {"label": "Ignore", "points": rect(0, 0, 3, 3)},  # 4 x 4 = 16 px
    ]
    # the ignore square (16) is drawn first, the clipped target (4) on top
    expected = np.zeros((5, 6), np.uint8)
    expected[0:4, 0:4] = 255
    expected[0:2, 0:2] = 1
    assert np.array_equal(polygons_to_mask(shapes, 5, 6), expected)


def test_lisa_equal_raster_areas_keep_the_classic_argsort_order():
    shapes = [
        {"label": "target", "points": rect(0, 0, 3, 2)},      # 4 x 3 = 12 px
        {"label": "target", "points": rect(6, 0, 9, 1)},      # 4 x 2 = 8 px
        {"label": "target", "points": rect(10, 10, 12, 11)},  # 3 x 2 = 6 px
        {"label": "ignore", "points": rect(11, 9, 12, 11)},   # 2 x 3 = 6 px, overlaps the one above
    ]
    # areas [12, 8, 6, 6]: numpy's classic argsort (insertion sort for up to 16 items, stable)
    # gives [2, 3, 1, 0]; reversed: draw 0, 1, 3, 2 -> the target listed before the tied ignore
    # ends on top of the overlap x 11..12, y 10..11. (On AVX-512 numpy 2 sorts this int64 array
    # with a SIMD kernel into [3, 2, 1, 0], which would put the ignore on top.)
    expected = np.zeros((14, 14), np.uint8)
    expected[0:3, 0:4] = 1
    expected[0:2, 6:10] = 1
    expected[9:12, 11:13] = 255
    expected[10:12, 10:13] = 1
    assert np.array_equal(polygons_to_mask(shapes, 14, 14), expected)
    # the same tie between two shapes: the one listed first is drawn last
    two = polygons_to_mask([{"label": "ignore", "points": rect(0, 0, 2, 1)},   # 3 x 2 = 6
                            {"label": "target", "points": rect(1, 0, 2, 2)}],  # 2 x 3 = 6
                           3, 4)
    assert two.tolist() == [[255, 255, 255, 0], [255, 255, 255, 0], [0, 1, 1, 0]]


def test_lisa_labels_are_compared_lower_cased():
    shapes = [
        {"label": "Flag", "points": rect(0, 0, 11, 5)},         # == "flag" lower-cased: skipped
        {"label": "FLAG", "points": rect(0, 0, 11, 5)},         # skipped
        {"label": "Ignore", "points": rect(0, 0, 1, 1)},        # contains "ignore": 255
        {"label": "part_IGNORE_2", "points": rect(3, 0, 4, 1)},  # 255
        {"label": "Target", "points": rect(6, 0, 7, 1)},        # anything else: 1
        {"label": "flagged", "points": rect(9, 0, 10, 1)},      # not equal to "flag": a target, 1
    ]
    expected = np.zeros((6, 12), np.uint8)
    expected[0:2, 0:2] = 255
    expected[0:2, 3:5] = 255
    expected[0:2, 6:8] = 1
    expected[0:2, 9:11] = 1
    assert np.array_equal(polygons_to_mask(shapes, 6, 12), expected)


def test_lisa_all_flag_or_no_shapes_is_an_empty_target():
    all_flag = [{"label": "flag", "points": rect(0, 0, 3, 3)},
                {"label": "Flag", "points": rect(1, 1, 2, 2)}]
    for shapes in (all_flag, []):
        mask = polygons_to_mask(shapes, 3, 4)
        assert mask.dtype == np.uint8 and mask.shape == (3, 4) and not mask.any()
    # training cannot take a box from it (SPEC 5: an empty mask is an error for that sample)
    with pytest.raises(ValueError, match="empty mask"):
        solution_from_mask(polygons_to_mask(all_flag, 3, 4))


def test_lisa_vertices_are_truncated_to_int32():
    # (2.9, 1.99) (5.5, 1.2) (5.99, 3.7) (2.2, 3.999) -> (2, 1) (5, 1) (5, 3) (2, 3): x 2..5, y 1..3
    shapes = [{"label": "target", "points": [[2.9, 1.99], [5.5, 1.2], [5.99, 3.7], [2.2, 3.999]]}]
    expected = np.zeros((5, 8), np.uint8)
    expected[1:4, 2:6] = 1
    assert np.array_equal(polygons_to_mask(shapes, 5, 8), expected)
    # truncation is toward zero: x -0.9 -> 0 (not -1), so x 0..2, y 0..1
    shapes = [{"label": "target", "points": [[-0.9, 0.5], [2.5, 0.5], [2.5, 1.5], [-0.9, 1.5]]}]
    assert polygons_to_mask(shapes, 3, 4).tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]


def test_lisa_bad_shapes_are_value_errors():
    good = {"label": "target", "points": rect(0, 0, 1, 1)}
    cases = [
        ([{"label": "target", "points": [[0, 0], [3, 3]]}], "fewer than 3 points"),
        ([{"label": "target"}], "missing key: shape 0"),
        ([good, {"points": rect(0, 0, 1, 1)}], "missing key: shape 1"),
        ([{"label": 7, "points": rect(0, 0, 1, 1)}], "bad label: shape 0"),
        ([{"label": "target", "points": [[0, 0], [1, float("nan")], [2, 2]]}], "not finite"),
        ([{"label": "target", "points": [[0, 0], [1, 3e9], [2, 2]]}], "int32"),
        ([{"label": "target", "points": [["a", 0], [1, 1], [2, 2]]}], "not numbers"),
        ({"label": "target"}, "must be a list"),
    ]
    for shapes, message in cases:
        with pytest.raises(ValueError, match=message):
            polygons_to_mask(shapes, 4, 4)
    # a flag shape's points are never drawn, but it still needs both keys
    assert not polygons_to_mask([{"label": "flag", "points": [[0, 0]]}], 2, 2).any()
    for h, w in ((0, 4), (4, -1), (2.0, 4), (True, 4)):
        with pytest.raises(ValueError, match="positive integers"):
            polygons_to_mask([good], h, w)


def test_ignore_region_protocols_on_a_mask():
    mask = np.array([[0, 1, 255]], np.uint8)
    assert apply_ignore_regions(mask, "exclude").tolist() == [[0, 1, 255]]
    as_target = apply_ignore_regions(mask, "as-target")
    assert as_target.dtype == np.uint8 and as_target.tolist() == [[0, 1, 1]]
    with pytest.raises(ValueError, match="as-target"):
        apply_ignore_regions(mask, "ignore")
