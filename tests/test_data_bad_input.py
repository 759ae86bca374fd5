"""Hostile and malformed dataset files (fixtures written here): every sample that cannot be read
is a counted BadSampleError naming the sample and the reason; a file that cannot be read at all is
one ValueError naming the file; an evaluation over such data completes and counts them."""
import io
import json
import pickle
import time

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data import AuthorsTrainParquet, BadSampleError, LisaReasonSeg, ReasonSegParquet, ReferDataset, open_dataset
from data.polygon import clip_polygon
from data.refer import compressed_rle_counts
from data.types import Sample, check_sample
from helpers import png_bytes

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def reasons(source):
    """{sample id: reason} of every index that raises BadSampleError; other ids map to None."""
    out = {}
    for i in range(len(source)):
        try:
            source[i]
            out[source.ids[i]] = None
        except BadSampleError as e:
            out[e.sample_id] = e.reason
    return out


# ------------------------------------------------------------------------ authors' training parquet

def training_parquet(path, solutions, heights=None, problems=None, problem_type=pa.string()):
    n = len(solutions)
    image = png_bytes(840, 840)
    pq.write_table(pa.table({
        "id": [f"r{i}" for i in range(n)],
        "problem": pa.array(problems or ["the cat"] * n, type=problem_type),
        "solution": solutions,
        "image": pa.array([{"bytes": image, "path": None}] * n, type=IMAGE_STRUCT),
        "img_height": pa.array(heights or [480] * n),
        "img_width": [640] * n,
    }), path)
    return path


GOOD = "<box>(10,100),(200,210)</box><points>(30,110),(35,180)</points>"


def test_training_rows_with_bad_ground_truth_are_bad_samples_not_fatal(tmp_path, capsys):
    path = training_parquet(tmp_path / "train.parquet", [
        "<box>(200,100),(10,210)</box><points>(30,110),(35,180)</points>",   # x2 < x1
        "<box>(10,100),(900,210)</box><points>(30,110),(35,180)</points>",   # x2 beyond the frame
        "<box>(10,100),(200,210)</box><points>(30,110),(-5,180)</points>",   # a point outside
        GOOD,
    ])
    ds = AuthorsTrainParquet(path)
    assert reasons(ds) == {
        "r0": "bad solution: solution bbox [200, 100, 10, 210] is not ordered: need x1 <= x2 and y1 <= y2",
        "r1": "bad solution: solution bbox [10, 100, 900, 210] lies outside the 840 x 840 frame "
              "(coordinates must be in [0, 840])",
        "r2": "bad solution: solution point [-5, 180] lies outside the 840 x 840 frame "
              "(coordinates must be in [0, 840])",
        "r3": None,
    }

    import train
    from rewards import score_completions

    class InOrder:
        def stream_index(self, position):
            return position

    sample = train.read_sample(ds, InOrder(), 0)  # skips r0, r1, r2 and trains on r3
    assert sample.id == "r3"
    assert "index 0" in capsys.readouterr().out
    assert score_completions(["x"], [sample.solution]).total.tolist() == [0.0]


def test_training_rows_with_bad_values_are_bad_samples(tmp_path):
    ds = AuthorsTrainParquet(training_parquet(tmp_path / "h.parquet", [GOOD, GOOD],
                                              heights=["forty", "480"]))
    assert reasons(ds) == {"r0": "bad value: img_height='forty' is not a positive integer", "r1": None}
    ds = AuthorsTrainParquet(training_parquet(tmp_path / "q.parquet", [GOOD, GOOD],
                                              problems=[b"\xff\xfe cat", "the dog".encode()],
                                              problem_type=pa.binary()))
    got = reasons(ds)
    assert got["r0"].startswith("bad query: 'problem' is not valid text: bytes that are not UTF-8")
    assert got["r1"] is None and ds[1].query == "the dog"


def test_reasonseg_parquet_with_text_sizes(tmp_path):
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    path = tmp_path / "val.parquet"
    pq.write_table(pa.table({
        "image": pa.array([{"bytes": png_bytes(6, 8), "path": None}] * 2, type=IMAGE_STRUCT),
        "text": ["what holds the tea?", "the cup"], "mask": [mask.tolist()] * 2,
        "image_id": ["a", "b"], "ann_id": ["0", "0"],
        "img_height": ["six", "6"], "img_width": [8, 8],
    }), path)
    assert reasons(ReasonSegParquet(path)) == {
        "a_0": "bad value: img_height='six' is not a positive integer", "b_0": None}


def test_a_file_that_is_not_parquet_is_one_error_naming_it(tmp_path):
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(ValueError, match=f"{bad}: not a readable parquet file"):
        open_dataset(bad)
    with pytest.raises(ValueError, match=f"{bad}: not a readable parquet file"):
        AuthorsTrainParquet(bad)


# ------------------------------------------------------------------------------------ LISA folders

def write_lisa(folder, name, meta, image=(16, 20)):
    folder.mkdir(parents=True, exist_ok=True)
    if image:
        Image.fromarray(np.zeros((*image, 3), np.uint8)).save(folder / f"{name}.jpg")
    (folder / f"{name}.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))


def test_lisa_files_with_wrong_structure_are_counted(tmp_path):
    square = [[2, 2], [9, 2], [9, 9], [2, 9]]
    write_lisa(tmp_path, "a_ok", {"text": ["the square"], "shapes": [{"label": "target", "points": square}]})
    write_lisa(tmp_path, "b_number", {"text": ["q"], "shapes": 5})
    write_lisa(tmp_path, "c_list", [1, 2, 3])
    write_lisa(tmp_path, "d_surrogate", '{"text": ["the \\ud800 cat"], "shapes": []}')
    write_lisa(tmp_path, "e_nan", '{"text": ["q"], "shapes": [{"label": "target", '
                                  '"points": [[1, 1], [NaN, 5], [5, 5]]}]}')
    write_lisa(tmp_path, "f_no_image", {"text": ["q"], "shapes": [{"label": "target", "points": square}]},
               image=None)
    write_lisa(tmp_path, "g_strings", {"text": ["q"], "shapes": [{"label": "target", "points": "abc"}]})
    ds = LisaReasonSeg(tmp_path)
    got = reasons(ds)
    assert got == {
        "a_ok": None,
        "b_number": "bad shapes: 'shapes' must be a list of shapes, got int",
        "c_list": "unreadable json: expected an object, got list",
        "d_surrogate": "bad query: 'text' is not valid text: surrogates not allowed at character 4: "
                       "'the \\ud800 cat'",
        "e_nan": "bad polygon: shape 0 ('target') has a coordinate that is not finite or does not fit "
                 "int32: [[1.0, 1.0], [nan, 5.0], [5.0, 5.0]]",
        "f_no_image": "missing image: no such file",
        "g_strings": got["g_strings"],
    }
    assert got["g_strings"].startswith("bad polygon: shape 0")
    scanned = {e.sample_id: e.reason for e in ds.scan()}
    assert scanned == {k: v for k, v in got.items() if v is not None}


def test_lisa_polygon_with_huge_coordinates_is_clipped_fast_and_right(tmp_path):
    # a triangle with two vertices 1e9 px away: its part inside the 16 x 20 image is the region
    # x >= 4 and y >= 3 below the line through (4, 3) with slope 1e9 / 1e9 -> the whole quadrant
    write_lisa(tmp_path, "huge", {"text": ["q"], "shapes": [
        {"label": "target", "points": [[4, 3], [1e9, 3], [1e9, 1e9]]}]})
    t0 = time.perf_counter()
    mask = LisaReasonSeg(tmp_path)[0].mask
    assert time.perf_counter() - t0 < 1.0
    expected = np.zeros((16, 20), np.uint8)
    for y in range(3, 16):
        expected[y, 4 + (y - 3):] = 1  # on or below the diagonal y - 3 <= x - 4
    assert np.array_equal(mask, expected)
    # a square 2e9 px around the image (coordinates that still fit int32): OpenCV alone takes ~25 s
    write_lisa(tmp_path, "huge", {"text": ["q"], "shapes": [
        {"label": "target", "points": [[-2e9, -2e9], [2e9, -2e9], [2e9, 2e9], [-2e9, 2e9]]}]})
    t0 = time.perf_counter()
    assert LisaReasonSeg(tmp_path)[0].mask.all()
    assert time.perf_counter() - t0 < 1.0


def test_clip_polygon_hand_computed():
    # square 0..10 clipped to x <= 5: vertices (0,0) (5,0) (5,10) (0,10)
    got = clip_polygon(np.array([[0, 0], [10, 0], [10, 10], [0, 10]]), -1, -1, 5, 20)
    assert got.tolist() == [[0, 0], [5, 0], [5, 10], [0, 10]]
    assert clip_polygon(np.array([[50, 50], [60, 50], [60, 60]]), 0, 0, 10, 10).shape == (0, 2)


# ------------------------------------------------------------------------------------ refer format

def refer_fixture(root, annotations, refs, instances_extra=None, image_size=(24, 32)):
    data_dir = root / "refcocog"
    data_dir.mkdir(parents=True)
    (root / "images").mkdir()
    (root / "images" / "a.jpg").write_bytes(png_bytes(*image_size))
    instances = {"images": [{"id": 1, "file_name": "a.jpg", "height": image_size[0], "width": image_size[1]}],
                 "annotations": [{"id": 10 + k, "image_id": 1, "category_id": 1, "segmentation": seg}
                                 for k, seg in enumerate(annotations)],
                 "categories": [{"id": 1, "name": "thing"}]}
    instances.update(instances_extra or {})
    (data_dir / "instances.json").write_text(json.dumps(instances))
    with open(data_dir / "refs(umd).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return root


def ref(ref_id, ann_id, sentences=None, split="val"):
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": 1, "split": split,
            "sentences": sentences if sentences is not None else [{"sent": f"thing {ref_id}", "sent_id": ref_id}]}


def test_refer_corrupt_annotations_and_refs_are_counted(tmp_path):
    good = np.zeros((24, 32), np.uint8)
    good[3:9, 20:30] = 1
    rle = mask_utils.encode(np.asfortranarray(good))
    annotations = [
        {"size": [24, 32], "counts": rle["counts"].decode()},            # 10: good compressed RLE
        {"size": [24, 32], "counts": ""},                                 # 11: empty string
        {"size": [24, 32], "counts": "garbage!!~"},                       # 12: outside the alphabet
        {"size": [24, 32], "counts": [1, 2, 3]},                          # 13: runs do not cover 24 x 32
        [["a", "b", "c", "d", "e", "f"]],                                 # 14: string polygon
        "a string",                                                       # 15: not a segmentation
        [[1.0, 1.0, 1e12, 1.0, 1e12, 1e12]],                              # 16: huge polygon
    ]
    refs = [ref(k, 10 + k) for k in range(len(annotations))]
    refs += ["not a dict", {"ann_id": 10, "split": "val"},
             ref(20, 10, sentences=["not a dict", {"sent": "ok", "sent_id": 5}])]
    ds = ReferDataset(refer_fixture(tmp_path, annotations, refs), split="val", image_dir=tmp_path / "images")
    got = reasons(ds)
    assert got == {
        "0_0": None,
        "1_1": "bad RLE: run lengths add up to 0, not height x width = 768",
        "2_2": "bad RLE: character 'r' at 2 is not in the compressed RLE alphabet",
        "3_3": "bad RLE: run lengths add up to 6, not height x width = 768",
        "4_4": "bad polygon: polygon 0 holds values that are not numbers: ['a', 'b', 'c', 'd', 'e', 'f']",
        "5_5": "bad segmentation: str",
        "6_6": None,
        "refs[7]": "missing key: ref 7 is a str, not a dict",
        "refs[8]": "missing key: ref 8 has no 'ref_id'",
        "20_sentence0": "bad value: sentence 0 of ref 20 is a str, not a dict",
        "20_5": None,
    }
    assert np.array_equal(ds[0].mask, good)
    # the triangle (1, 1) - (1e12, 1) - (1e12, 1e12) covers, inside the 32 x 24 image, what the
    # triangle (1, 1) - (64, 1) - (64, 64) covers: the region right of the diagonal x - 1 >= y - 1
    same = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[1.0, 1.0, 64.0, 1.0, 64.0, 64.0]], 24, 32)))
    huge = ds[ds.ids.index("6_6")].mask
    assert np.array_equal(huge, same) and huge[5, 7] == 1 and huge[5, 3] == 0


def test_compressed_rle_counts_match_pycocotools():
    rs = np.random.RandomState(0)
    for _ in range(5):
        m = (rs.rand(13, 17) > 0.6).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(m))
        counts = compressed_rle_counts(rle["counts"])
        assert sum(counts) == 13 * 17
        unc = mask_utils.frPyObjects({"size": [13, 17], "counts": counts}, 13, 17)
        assert np.array_equal(mask_utils.decode(unc), m)


def test_refer_files_that_cannot_be_read_are_one_error_naming_them(tmp_path):
    root = refer_fixture(tmp_path / "a", [[[1, 1, 5, 1, 5, 5]]], [ref(0, 10)], instances_extra={"images": 3})
    with pytest.raises(ValueError, match=r"instances.json: expected an object with an 'images' list"):
        ReferDataset(root, split="val")
    root = refer_fixture(tmp_path / "b", [[[1, 1, 5, 1, 5, 5]]], [ref(0, 10)])
    (root / "refcocog" / "instances.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"instances.json: not a readable JSON file"):
        ReferDataset(root, split="val")
    root = refer_fixture(tmp_path / "c", [[[1, 1, 5, 1, 5, 5]]], [ref(0, 10)])
    with open(root / "refcocog" / "refs(umd).p", "wb") as f:
        pickle.dump([cv2.imread], f)  # a pickle that imports code
    with pytest.raises(ValueError, match=r"refs\(umd\).p: not a readable refs file \(UnpicklingError: "
                                         r"refused to load global"):
        ReferDataset(root, split="val")
    (root / "refcocog" / "refs(umd).p").write_bytes(b"\x80\x02]q\x00(")  # truncated
    with pytest.raises(ValueError, match=r"refs\(umd\).p: not a readable refs file"):
        ReferDataset(root, split="val")


def test_check_sample_rules():
    image = np.zeros((4, 5, 3), np.uint8)
    ok = Sample(id="s", image=image, query="q", mask=np.zeros((4, 5), np.uint8))
    assert check_sample(ok, "f") is ok
    for sample, reason in [
        (Sample(id="s", image=image, query="q", mask=np.zeros((5, 4), np.uint8)), "mismatched sizes"),
        (Sample(id="s", image=image, query="q", mask=np.full((4, 5), 7, np.uint8)), "bad mask: value 7"),
        (Sample(id="s", image=image.astype(np.float32), query="q"), "bad image"),
        (Sample(id="s", image=image, query=3), "bad query: query must be text, got int"),
        (Sample(id="s", image=image, query="q", solution={"bbox": [0, 0, 1, float("nan")],
                                                         "points": [[0, 0], [0, 0]]}), "bad solution"),
    ]:
        with pytest.raises(BadSampleError, match=reason):
            check_sample(sample, "f")


# -------------------------------------------------------------------- an evaluation over such data

def test_evaluation_over_corrupt_refer_data_completes_and_counts(tmp_path):
    from eval.loop import evaluate_shard
    from eval.results import merge_predictions

    class EmptyAnswers:  # a pipeline whose answers never parse: IoU 0, no model needed
        def __call__(self, images, queries):
            from types import SimpleNamespace

            return [SimpleNamespace(completion="", reasoning=None, status="no_json", bbox_840=None,
                                    points_840=None, bbox=None, points=None, mask=None) for _ in images]

    annotations = [[[1.0, 1.0, 9.0, 1.0, 9.0, 9.0]], {"size": [24, 32], "counts": "garbage!!~"},
                   [["a", "b", "c", "d", "e", "f"]]]
    refs = [ref(k, 10 + k) for k in range(3)] + [{"no": "ref_id", "split": "val"}]
    ds = ReferDataset(refer_fixture(tmp_path / "data", annotations, refs), split="val",
                      image_dir=tmp_path / "data" / "images")
    for _ in range(2):  # the rerun skips what is done and fails nowhere
        evaluate_shard(EmptyAnswers(), ds, str(tmp_path / "out"), log=None)
    records = merge_predictions(str(tmp_path / "out"))
    assert [(r.id, r.is_bad) for r in records] == [("0_0", False), ("1_1", True), ("2_2", True),
                                                   ("refs[3]", True)]


# ------------------------------------------------------------------------------------------ images

def test_16_bit_png_is_scaled_by_its_range_not_saturated(tmp_path):
    from data.image import load_image

    # a 16-bit gradient 0, 257, 2 * 257, ... 255 * 257 = 65535: exactly 0..255 in 8 bits
    gray16 = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    Image.fromarray(gray16).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8 and image.shape == (16, 16, 3)
    assert np.array_equal(image[..., 0], np.arange(256).reshape(16, 16)) and (image[..., 1] == image[..., 0]).all()
    # (PIL's own convert("RGB") clips at 255: 255 of these 256 pixels would be 255)
    buf = io.BytesIO()
    Image.fromarray(np.ones((4, 4), np.float32)).save(buf, format="TIFF")
    with pytest.raises(ValueError, match="32-bit float pixels have no known range; convert it to an 8-bit"):
        load_image(buf.getvalue())
