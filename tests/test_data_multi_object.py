"""Multi-object data (SPEC.md section 9): ground truth from instance masks, the readers on fixtures
of each format (authors' multi-object parquet, gRefCOCO, single-object readers), synthetic scenes."""
import json

import numpy as np
import pytest

from data import BadSampleError, Sample, SyntheticDataset, write_authors_train_parquet
from data.multi_object import (GRefDataset, MultiObjectParquet, MultiObjectSynthetic, SingleAsMultiObject,
                               object_from_mask, objects_from_masks, open_multi_object_dataset,
                               scene_multi_queries, write_multi_object_parquet)
from data.synthetic import Shape
from data.types import check_objects_solution
from helpers import png_bytes


# ---------------------------------------------------------------------------------- ground truth

def test_object_from_mask_hand_computed():
    mask = np.zeros((10, 20), dtype=np.uint8)  # H = 10, W = 20
    mask[2:7, 4:13] = 1  # rows 2..6, cols 4..12
    # box [4, 2, 12, 6]; the distance transform is 3 on row 4 for cols 6..10 (3 px to row 1, row 7
    # and col 3 / col 13); the first maximum in row-major order is (row 4, col 6) -> point (6, 4).
    # 840 frame: x' = int(x * 42 + 0.5), y' = int(y * 84 + 0.5):
    #   box [168, 168, 504, 504], point [int(252.5), int(336.5)] = [252, 336]
    assert object_from_mask(mask) == {"bbox_2d": [168, 168, 504, 504], "point_2d": [252, 336]}
    assert objects_from_masks([]) == []
    with pytest.raises(ValueError, match="empty instance mask"):
        object_from_mask(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="2-D"):
        object_from_mask(np.ones((2, 2, 2)))


# ------------------------------------------------------------------------------- authors' parquet

def sample(i, solution, h=30, w=40):
    return Sample(id=f"s{i}", image=np.full((h, w, 3), 40 * i, dtype=np.uint8), query=f"query {i}",
                  solution=solution)


def test_multi_object_parquet_roundtrip_and_bad_row(tmp_path):
    objs = [{"bbox_2d": [10, 100, 200, 210], "point_2d": [30, 110]},
            {"bbox_2d": [225, 296, 706, 786], "point_2d": [302, 410]}]
    path = tmp_path / "VisionReasoner_multi_object_1k_840.parquet"
    rows = [sample(0, objs), sample(1, []), sample(2, [{"bbox_2d": [1, 2, 3]}])]
    assert write_multi_object_parquet(rows, path) == 3
    ds = open_multi_object_dataset(path)
    assert isinstance(ds, MultiObjectParquet) and ds.ids == ["s0", "s1", "s2"]
    s0 = ds[0]
    assert s0.solution == objs and s0.image.shape == (840, 840, 3) and s0.mask is None
    assert s0.meta["original_size"] == (40, 30) and s0.query == "query 0"
    assert ds[1].solution == []
    with pytest.raises(BadSampleError, match="bad solution"):
        ds[2]


def test_single_object_readers_become_one_object_lists(tmp_path):
    # the authors' single-object training parquet: its first point is the object's point
    syn = SyntheticDataset(2, seed=3)
    path = tmp_path / "refCOCOg_9k_840.parquet"
    write_authors_train_parquet(syn, path)
    ds = open_multi_object_dataset(path)
    assert isinstance(ds, SingleAsMultiObject)
    single = syn[0].solution
    assert ds[0].solution == [{"bbox_2d": single["bbox"], "point_2d": single["points"][0]}]
    # a source with masks: the object comes from the mask; an all-zero mask is the empty list
    mask = np.zeros((10, 20), dtype=np.uint8)
    mask[2:7, 4:13] = 1
    src = [Sample(id="a", image=np.zeros((10, 20, 3), np.uint8), query="q", mask=mask),
           Sample(id="b", image=np.zeros((10, 20, 3), np.uint8), query="q", mask=np.zeros((10, 20), np.uint8))]

    class Source(list):
        ids = ["a", "b"]

    wrapped = SingleAsMultiObject(Source(src))
    assert wrapped[0].solution == [{"bbox_2d": [168, 168, 504, 504], "point_2d": [252, 336]}]
    assert wrapped[1].solution == [] and wrapped[1].meta["num_objects"] == 0


# -------------------------------------------------------------------------------------- gRefCOCO

def make_gref_fixture(root):
    data_dir = root / "grefcoco"
    img_dir = root / "images"
    data_dir.mkdir(parents=True)
    img_dir.mkdir()
    (img_dir / "a.jpg").write_bytes(png_bytes(30, 40))
    instances = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 30, "width": 40}],
        "annotations": [
            # rows 5..11, cols 5..14 (the polygon's rasterisation includes its right/bottom edge)
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [[5.0, 5.0, 15.0, 5.0, 15.0, 12.0, 5.0, 12.0]]},
            {"id": 12, "image_id": 1, "category_id": 1, "segmentation": [[25.0, 15.0, 35.0, 15.0, 35.0, 25.0, 25.0, 25.0]]},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (data_dir / "instances.json").write_text(json.dumps(instances))
    refs = [
        {"ref_id": 0, "ann_id": [11, 12], "image_id": 1, "split": "val", "no_target": False,
         "sentences": [{"sent": "both things", "sent_id": 0}, {"sent": "the two boxes", "sent_id": 1}]},
        {"ref_id": 1, "ann_id": [-1], "image_id": 1, "split": "val", "no_target": True,
         "sentences": [{"sent": "the dog", "sent_id": 2}]},
        {"ref_id": 2, "ann_id": [11], "image_id": 1, "split": "train", "no_target": False,
         "sentences": [{"sent": "left thing", "sent_id": 3}]},
    ]
    (data_dir / "grefs(unc).json").write_text(json.dumps(refs))


def test_gref_dataset_multi_and_no_target(tmp_path):
    make_gref_fixture(tmp_path)
    ds = open_multi_object_dataset(tmp_path, split="val")
    assert isinstance(ds, GRefDataset) and ds.ids == ["0_0", "0_1", "1_2"]
    both = ds[0]
    assert both.query == "both things" and len(both.solution) == 2
    assert both.mask.shape == (30, 40) and set(np.unique(both.mask)) == {0, 1}
    # each object is the one of its own instance mask, and the union is the sample's mask
    from data.refer import annotation_to_mask

    inst = json.loads((tmp_path / "grefcoco" / "instances.json").read_text())
    masks = [annotation_to_mask(a["segmentation"], 30, 40) for a in inst["annotations"]]
    assert both.solution == objects_from_masks(masks)
    assert np.array_equal(both.mask, (masks[0] | masks[1]).astype(np.uint8))
    none = ds[2]
    assert none.solution == [] and not none.mask.any() and none.meta["no_target"]
    assert len(open_multi_object_dataset(tmp_path, split="train")) == 1
    with pytest.raises(ValueError, match="split 'testC'"):
        GRefDataset(tmp_path, split="testC")


def test_gref_missing_annotation_is_a_bad_sample(tmp_path):
    make_gref_fixture(tmp_path)
    refs_path = tmp_path / "grefcoco" / "grefs(unc).json"
    refs = json.loads(refs_path.read_text())
    refs[0]["ann_id"] = [11, 99]
    refs_path.write_text(json.dumps(refs))
    with pytest.raises(BadSampleError, match="annotation 99"):
        GRefDataset(tmp_path)[0]


# ------------------------------------------------------------------------------------- synthetic

def test_scene_multi_queries():
    shapes = [Shape("circle", "red", "small", 10, 10, 5, 0), Shape("circle", "red", "large", 40, 40, 9, 0),
              Shape("star", "blue", "large", 80, 80, 9, 0)]
    q = dict(scene_multi_queries(shapes))
    assert q["every red shape"] == [0, 1] and q["every blue shape"] == [2]
    assert q["the two circles"] == [0, 1] and q["the star"] == [2]
    assert q["every large shape"] == [1, 2] and q["every small shape"] == [0]
    assert q["the purple star"] == [] and q["the red star"] == [] and "the red circle" not in q


def test_synthetic_multi_object_samples():
    ds = MultiObjectSynthetic(24, seed=1)
    families = set()
    for i in range(len(ds)):
        s = ds[i]
        families.add(s.meta["family"])
        boxes, points = check_objects_solution(s.solution)
        assert len(s.solution) == s.meta["num_objects"] == len(s.meta["targets"])
        assert s.mask.dtype == np.uint8 and s.mask.shape == s.image.shape[:2]
        assert bool(s.mask.any()) == bool(s.solution)
        corners = [o["bbox_2d"][:2] for o in s.solution]
        assert corners == sorted(corners)  # listed left to right (x1, then y1)
        h, w = s.mask.shape
        for (x, y) in points:  # each point lies on the union mask (back in the original frame)
            assert s.mask[min(int(y * h / 840), h - 1), min(int(x * w / 840), w - 1)]
    assert families == {"none", "one", "several"}
    assert ds[5].query == MultiObjectSynthetic(24, seed=1)[5].query  # deterministic
    assert np.array_equal(ds[5].image, MultiObjectSynthetic(6, seed=1)[5].image)
    assert isinstance(open_multi_object_dataset("synthetic:3"), MultiObjectSynthetic)


def test_multi_object_parquet_rows_get_the_training_parquet_checks(tmp_path):
    # the checks of the single-object training parquet apply: a size that is not a number is a
    # counted bad sample naming the column, not a ValueError from int()
    import pyarrow as pa
    import pyarrow.parquet as pq

    objs = [{"bbox_2d": [10, 100, 200, 210], "point_2d": [30, 110]}]
    path = tmp_path / "multi.parquet"
    write_multi_object_parquet([sample(0, objs), sample(1, objs)], path)
    table = pq.read_table(path).to_pylist()
    for row in table:  # the column as text, as some exports write it
        row["img_height"] = str(row["img_height"])
    table[1]["img_height"] = "forty"
    schema = pq.read_schema(path)
    fields = [pa.field(f.name, pa.string()) if f.name == "img_height" else f for f in schema]
    pq.write_table(pa.Table.from_pylist(table, schema=pa.schema(fields)), path)
    ds = MultiObjectParquet(path)
    assert ds[0].solution == objs and ds[0].meta["num_objects"] == 1
    with pytest.raises(BadSampleError, match="img_height"):
        ds[1]
