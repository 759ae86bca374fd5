"""Dataset readers on small fixtures written here (SPEC.md section 6): refer format, LISA
folders, both authors' parquet layouts, the restricted unpickler and open_dataset."""
import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data import (AuthorsTrainParquet, BadSampleError, LisaReasonSeg, ReasonSegParquet,
                  ReferDataset, open_dataset, safe_load)
from helpers import make_refer_fixture, png_bytes, rle_rectangle_mask


# --------------------------------------------------------------------------- refer format

def test_refer_dataset_polygon_and_rle(tmp_path):
    img_dir = make_refer_fixture(tmp_path)
    ds = ReferDataset(tmp_path, "refcocog", "umd", split="train", image_dir=img_dir)
    # every sentence is a sample: 2 + 1 + 1 in train
    assert ds.ids == ["0_100", "0_101", "1_102", "2_103"]
    s = ds[0]
    assert s.query == "the dark box" and s.image.shape == (30, 40, 3) and s.mask.dtype == np.uint8
    # COCO polygon (5,5)-(15,12) covers the pixels x 5..14, y 5..11: 10 x 7 = 70.
    expected = np.zeros((30, 40), np.uint8)
    expected[5:12, 5:15] = 1
    assert np.array_equal(s.mask, expected)
    assert ds[1].query == "left one" and np.array_equal(ds[1].mask, expected)
    assert np.array_equal(ds[2].mask, rle_rectangle_mask())  # RLE decoded exactly
    assert ReferDataset(tmp_path, split="val", image_dir=img_dir).ids == ["3_104"]
    with pytest.raises(ValueError, match="testA"):
        ReferDataset(tmp_path, split="testA", image_dir=img_dir)


def test_refer_bad_samples_name_file_and_reason(tmp_path):
    img_dir = make_refer_fixture(tmp_path, corrupt_third=True)
    ds = ReferDataset(tmp_path, split="train", image_dir=img_dir)
    with pytest.raises(BadSampleError, match="unreadable image") as e:
        ds[3]
    assert e.value.source.endswith("c.jpg") and e.value.sample_id == "2_103"
    # A 2-point polygon (pycocotools would read 4 numbers as a box) is rejected.
    inst = json.loads((tmp_path / "refcocog" / "instances.json").read_text())
    inst["annotations"][0]["segmentation"] = [[1.0, 1.0, 5.0, 5.0]]
    (tmp_path / "refcocog" / "instances.json").write_text(json.dumps(inst))
    with pytest.raises(BadSampleError, match="fewer than 3 points"):
        ReferDataset(tmp_path, split="train", image_dir=img_dir)[0]


def test_safe_load_plain_data_and_refuses_code(tmp_path):
    data = [{"a": 1, "b": [1.5, "x", None, True], "c": (1, 2)}]
    for protocol in (0, 2, 5):
        assert safe_load(pickle.dumps(data, protocol=protocol)) == data
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = tmp_path / "refs(umd).p"
    payload.write_bytes(pickle.dumps([{"ref_id": 0}, Evil()], protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refused to load global"):
        safe_load(payload)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="set"):  # sets need a global in protocol 2
        safe_load(pickle.dumps({1, 2}, protocol=2))


# --------------------------------------------------------------------------- LISA folders

def write_lisa(folder, name, shapes, size=(16, 20), text=("what is it?",), image=True):
    folder.mkdir(parents=True, exist_ok=True)
    if image:
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(folder / f"{name}.jpg")
    (folder / f"{name}.json").write_text(json.dumps(
        {"text": list(text), "is_sentence": True, "shapes": shapes}))


def test_lisa_target_ignore_order_outline(tmp_path):
    folder = tmp_path / "val"
    write_lisa(folder, "a", [
        {"label": "target", "points": [[2, 2], [17, 2], [17, 13], [2, 13]]},   # area 15 x 11
        {"label": "ignore_1", "points": [[5, 5], [9, 5], [9, 9], [5, 9]]},     # area 16, inside
        {"label": "flag", "points": [[0, 0], [19, 0], [19, 15]]},              # skipped
    ], text=("segment the box", "other phrasing"))
    write_lisa(folder, "b", [
        # listed small target first, big ignore second: largest first -> target drawn on top
        {"label": "target", "points": [[6, 6], [8, 6], [8, 8]]},
        {"label": "ignore", "points": [[1, 1], [18, 1], [18, 14], [1, 14]]},
    ])
    write_lisa(folder, "c", [{"label": "Flag", "points": [[0, 0], [3, 0], [3, 3]]}])  # empty target
    write_lisa(folder, "d", [{"label": "target", "points": [[0, 0], [3, 3]]}])        # 2 points
    ds = LisaReasonSeg(folder)
    assert ds.ids == ["a", "b", "c", "d"]
    a = ds[0]
    assert a.query == "segment the box" and a.is_sentence is True
    expected = np.zeros((16, 20), np.uint8)
    expected[2:14, 2:18] = 1     # fill + outline: vertices and edges included (x 2..17, y 2..13)
    expected[5:10, 5:10] = 255   # the smaller ignore square drawn later, x and y 5..9
    assert np.array_equal(a.mask, expected)
    b = ds[1].mask
    assert b[7, 7] == 1 and b[6, 6] == 1 and b[6, 8] == 1 and b[8, 8] == 1  # triangle + outline
    assert b[8, 6] == 255 and b[1, 1] == 255 and b[0, 0] == 0
    c = ds[2]  # all shapes "flag": an empty target, read like any other sample
    assert c.mask.shape == (16, 20) and c.mask.dtype == np.uint8 and not c.mask.any()
    with pytest.raises(BadSampleError, match="fewer than 3 points") as e:
        ds[3]
    assert e.value.source.endswith("d.json") and e.value.sample_id == "d"
    assert [(e.sample_id, e.reason.split(":")[0]) for e in ds.scan()] == [
        ("d", "polygon with fewer than 3 points")]


def test_lisa_ignore_region_protocols_through_the_reader(tmp_path):
    shapes = [{"label": "target", "points": [[2, 2], [9, 2], [9, 5], [2, 5]]},    # x 2..9, y 2..5
              {"label": "Ignore", "points": [[10, 2], [13, 2], [13, 5], [10, 5]]}]  # x 10..13
    write_lisa(tmp_path / "ReasonSeg" / "val", "a", shapes)
    write_lisa(tmp_path / "ReasonSeg" / "val", "b", [{"label": "flag", "points": [[0, 0], [5, 0],
                                                                                  [5, 5]]}])
    excluded = np.zeros((16, 20), np.uint8)
    excluded[2:6, 2:10] = 1
    excluded[2:6, 10:14] = 255
    as_target = np.zeros((16, 20), np.uint8)
    as_target[2:6, 2:14] = 1
    folder = tmp_path / "ReasonSeg" / "val"
    for ds, expected in [(LisaReasonSeg(folder), excluded),
                         (LisaReasonSeg(folder, ignore_regions="exclude"), excluded),
                         (LisaReasonSeg(folder, ignore_regions="as-target"), as_target),
                         (open_dataset(tmp_path / "ReasonSeg", split="val"), excluded),
                         (open_dataset(tmp_path / "ReasonSeg", split="val",
                                       ignore_regions="as-target"), as_target),
                         (open_dataset(folder, ignore_regions="as-target"), as_target)]:
        assert np.array_equal(ds[0].mask, expected)
        assert not ds[1].mask.any()  # the all-flag file is an empty target under both protocols
    with pytest.raises(ValueError, match="ignore_regions must be one of"):
        LisaReasonSeg(folder, ignore_regions="include")
    with pytest.raises(ValueError, match="ignore_regions must be one of"):
        open_dataset("synthetic:2", ignore_regions="as_target")


def test_lisa_json_falls_back_to_cp1252(tmp_path):
    write_lisa(tmp_path, "q", [{"label": "target", "points": [[1, 1], [3, 1], [3, 3]]}])
    meta = {"text": ["the \u2019quoted\u2019 cup"], "is_sentence": False,
            "shapes": [{"label": "target", "points": [[1, 1], [3, 1], [3, 3]]}]}
    (tmp_path / "q.json").write_bytes(json.dumps(meta, ensure_ascii=False).encode("cp1252"))
    assert LisaReasonSeg(tmp_path)[0].query == "the \u2019quoted\u2019 cup"


def test_lisa_unreadable_image(tmp_path):
    folder = tmp_path / "test"
    write_lisa(folder, "x", [{"label": "target", "points": [[1, 1], [5, 1], [5, 5]]}], image=False)
    (folder / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(BadSampleError, match="unreadable image") as e:
        LisaReasonSeg(folder)[0]
    assert e.value.source.endswith("x.jpg")


# --------------------------------------------------------------------------- authors' parquet

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_authors_train_parquet(tmp_path):
    good = png_bytes(840, 840, (1, 2, 3))
    table = pa.table({
        "id": ["r0", "r1", "r2"],
        "problem": ["the cat", "the dog", "broken"],
        "solution": ["<box>(10,100),(200,210)</box><points>(30,110),(35,180)</points>",
                     "<box>(0,0),(839,839)</box><points>(1,2),(3,4)</points>",
                     "<box>(0,0),(839,839)</box><points>(1,2),(3,4)</points>"],
        "image": pa.array([{"bytes": good, "path": None}, {"bytes": good, "path": "x.png"},
                           {"bytes": b"corrupt", "path": None}], type=IMAGE_STRUCT),
        "img_height": [480, 300, 10], "img_width": [640, 400, 10],
    })
    path = tmp_path / "train.parquet"
    pq.write_table(table, path, row_group_size=2)
    ds = AuthorsTrainParquet(path)
    assert ds.ids == ["r0", "r1", "r2"] and len(ds) == 3
    s = ds[0]
    assert s.query == "the cat" and s.image.shape == (840, 840, 3) and s.mask is None
    assert s.solution == {"bbox": [10, 100, 200, 210], "points": [[30, 110], [35, 180]]}
    assert s.meta["frame"] == 840 and s.meta["original_size"] == (640, 480)
    assert ds[1].solution["points"] == [[1, 2], [3, 4]]
    with pytest.raises(BadSampleError, match="unreadable image"):
        ds[2]
    # raw bytes image column also accepted
    raw = table.set_column(3, "image", pa.array([good, good, good], type=pa.binary()))
    pq.write_table(raw, tmp_path / "raw.parquet")
    assert AuthorsTrainParquet(tmp_path / "raw.parquet")[2].query == "broken"


def test_reasonseg_parquet(tmp_path):
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:3, 2:5] = True
    table = pa.table({
        "image": pa.array([{"bytes": png_bytes(6, 8), "path": None},
                           {"bytes": png_bytes(6, 8), "path": None}], type=IMAGE_STRUCT),
        "text": ["what holds the tea?", "size mismatch"],
        "mask": [mask.tolist(), np.zeros((5, 8), bool).tolist()],
        "image_id": ["img0", "img1"], "ann_id": ["0", "0"],
        "img_height": [6, 6], "img_width": [8, 8],
    })
    folder = tmp_path / "ReasonSeg_val" / "data"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "test-00000-of-00001.parquet")
    ds = open_dataset(tmp_path / "ReasonSeg_val", split="test")
    assert isinstance(ds, ReasonSegParquet) and ds.ids == ["img0_0", "img1_0"]
    s = ds[0]
    assert s.query == "what holds the tea?" and s.mask.dtype == np.uint8
    assert np.array_equal(s.mask, mask.astype(np.uint8)) and s.image.shape == (6, 8, 3)
    with pytest.raises(BadSampleError, match="mismatched sizes"):
        ds[1]
    with pytest.raises(ValueError, match="split 'val'"):
        open_dataset(tmp_path / "ReasonSeg_val", split="val")


def test_open_dataset_dispatch(tmp_path):
    assert len(open_dataset("synthetic:7")) == 7
    img_dir = make_refer_fixture(tmp_path / "refer")
    assert isinstance(open_dataset(tmp_path / "refer", split="train", image_dir=img_dir),
                      ReferDataset)
    write_lisa(tmp_path / "lisa" / "val", "a", [{"label": "target", "points": [[1, 1], [5, 1],
                                                                                [5, 5]]}])
    assert isinstance(open_dataset(tmp_path / "lisa", split="val"), LisaReasonSeg)
    with pytest.raises(ValueError, match="no such path"):
        open_dataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match="'many' is neither a sample count N nor a query family"):
        open_dataset("synthetic:many")
    with pytest.raises(ValueError, match="'present' is a multi-object query family"):
        open_dataset("synthetic:5:present")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unknown dataset format"):
        open_dataset(tmp_path / "empty")
    pq.write_table(pa.table({"foo": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="unknown parquet layout"):
        open_dataset(tmp_path / "other.parquet")
