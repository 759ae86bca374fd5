"""Mistakes in what a user points the readers at are one ValueError naming the problem, raised when
the dataset is opened (before any model loads): a missing image folder, a split the folder does not
hold, a refer dataset the root does not hold; and LISA's ``is_sentence`` is read strictly."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from data import BadSampleError, GRefDataset, LisaReasonSeg, ReferDataset, open_dataset, open_multi_object_dataset
from helpers import make_refer_fixture


def write_lisa(folder, name, is_sentence=True):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(folder / f"{name}.jpg")
    meta = {"text": ["what is it?"], "shapes": [{"label": "target", "points": [[1, 1], [9, 1], [9, 9]]}]}
    if is_sentence is not ...:
        meta["is_sentence"] = is_sentence
    (folder / f"{name}.json").write_text(json.dumps(meta))


# ----------------------------------------------------------------------------------- image folder

def test_refer_image_folder_that_does_not_exist_is_one_error(tmp_path):
    img_dir = make_refer_fixture(tmp_path)
    with pytest.raises(ValueError, match=r"image folder .*nowhere \(--image-dir\) does not exist"):
        ReferDataset(tmp_path, split="train", image_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"nowhere \(--image-dir\)"):
        open_dataset(tmp_path, split="train", image_dir=tmp_path / "nowhere")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        ReferDataset(tmp_path, split="train", image_dir=a_file)
    # no --image-dir and none of the default folders under the root
    img_dir.rename(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"no image folder under .*images/train2014.*--image-dir"):
        ReferDataset(tmp_path, split="train")
    assert ReferDataset(tmp_path, split="train", image_dir=tmp_path / "elsewhere").image_dir == str(
        tmp_path / "elsewhere")


def test_gref_image_folder_that_does_not_exist_is_one_error(tmp_path):
    from test_data_multi_object import make_gref_fixture

    make_gref_fixture(tmp_path)
    assert GRefDataset(tmp_path).image_dir == str(tmp_path / "images")
    with pytest.raises(ValueError, match=r"nowhere \(--image-dir\) does not exist"):
        open_multi_object_dataset(tmp_path, split="val", image_dir=tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------ splits

def test_lisa_split_that_the_folder_does_not_hold_names_it(tmp_path):
    for split in ("train", "val"):
        write_lisa(tmp_path / "ReasonSeg" / split, "a")
    (tmp_path / "ReasonSeg" / "empty").mkdir()
    assert isinstance(open_dataset(tmp_path / "ReasonSeg", split="val"), LisaReasonSeg)
    # a misspelt split: named, with the split folders that exist
    with pytest.raises(ValueError, match=r"split 'tset' \(--split\): .*tset does not exist; the LISA split "
                                         r"folders in .*ReasonSeg are train, val"):
        open_dataset(tmp_path / "ReasonSeg", split="tset")
    with pytest.raises(ValueError, match=r"empty holds no name.jpg \+ name.json pairs"):
        open_dataset(tmp_path / "ReasonSeg", split="empty")
    # a folder of no known format: the split and the sub-folders there are named too
    (tmp_path / "other" / "val").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"unknown dataset format in .*other: .*\(split 'test' \(--split\): "
                                         r".*test is not a folder of name.jpg \+ name.json pairs either; "
                                         r"sub-folders there: val\)"):
        open_dataset(tmp_path / "other", split="test")
    # the parent without a split
    with pytest.raises(ValueError, match=r"holds the LISA split folders train, val: give the split "
                                         r"\(--split\) or one of those folders as the path"):
        open_dataset(tmp_path / "ReasonSeg")
    # the leaf folder itself: its own name or no split is fine, another split is an error
    assert isinstance(open_dataset(tmp_path / "ReasonSeg" / "val"), LisaReasonSeg)
    assert isinstance(open_dataset(tmp_path / "ReasonSeg" / "val", split="val"), LisaReasonSeg)
    with pytest.raises(ValueError, match=r"split 'test' \(--split\) but .*val is a LISA folder of split 'val'"):
        open_dataset(tmp_path / "ReasonSeg" / "val", split="test")


def test_refer_root_without_the_dataset_folder_names_it(tmp_path):
    make_refer_fixture(tmp_path)  # holds refcocog/ only
    with pytest.raises(ValueError, match=r"refer dataset 'refcoco' \(--refer-dataset\): no .*refcoco/instances.json; "
                                         r"the refer datasets in .* are refcocog"):
        open_dataset(tmp_path, split="val", dataset="refcoco")
    assert isinstance(open_dataset(tmp_path, split="val", dataset="refcocog"), ReferDataset)


# ---------------------------------------------------------------------------------- is_sentence

def test_lisa_is_sentence_is_read_strictly(tmp_path):
    values = {"t": True, "f": False, "st": "true", "sf": "False", "s0": "0", "i1": 1, "i0": 0, "null": None,
              "absent": ..., "bad_str": "no", "bad_int": 2, "bad_list": [True]}
    for name, value in values.items():
        write_lisa(tmp_path, name, value)
    ds = LisaReasonSeg(tmp_path)
    got = {}
    for i, sample_id in enumerate(ds.ids):
        try:
            got[sample_id] = ds[i].is_sentence
        except BadSampleError as e:
            assert e.source.endswith(f"{sample_id}.json")
            got[sample_id] = e.reason
    assert got == {"t": True, "f": False, "st": True, "sf": False, "s0": False, "i1": True, "i0": False,
                   "null": None, "absent": None,
                   "bad_str": "bad value: 'is_sentence' is 'no', expected true or false",
                   "bad_int": "bad value: 'is_sentence' is 2, expected true or false",
                   "bad_list": "bad value: 'is_sentence' is [True], expected true or false"}
    assert sorted(e.sample_id for e in ds.scan()) == ["bad_int", "bad_list", "bad_str"]


def test_parquet_folder_of_several_splits_needs_the_split(tmp_path):
    from data.parquet import parquet_files

    def touch(*names):
        for name in names:
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")  # parquet_files lists files, it does not open them

    touch("hf/data/val-00000-of-00001.parquet", "hf/data/test-00000-of-00002.parquet",
          "hf/data/test-00001-of-00002.parquet")
    with pytest.raises(ValueError, match=r"holds the parquet files of the splits test, val: give the split"):
        parquet_files(tmp_path / "hf")
    assert [os.path.basename(f) for f in parquet_files(tmp_path / "hf", "test")] == [
        "test-00000-of-00002.parquet", "test-00001-of-00002.parquet"]
    touch("folders/train/0.parquet", "folders/validation/0.parquet")
    with pytest.raises(ValueError, match="splits train, validation"):
        parquet_files(tmp_path / "folders")
    # one split, or names that are no split, read whole
    touch("one/data/train-00000-of-00001.parquet", "one/data/train-00001-of-00001.parquet",
          "plain/0.parquet", "plain/shard-1.parquet")
    assert len(parquet_files(tmp_path / "one")) == 2 and len(parquet_files(tmp_path / "plain")) == 2
