"""eval.loop's consistency checks on a source: ids one per sample and unique, and the sample read at
an index has the id the ids list gives there; all ValueErrors with a message (not asserts)."""
import numpy as np
import pytest

from data.types import Sample
from eval.loop import check_source_ids, evaluate_shard


class Source:
    def __init__(self, ids, read_ids=None):
        self.ids = list(ids)
        self.read_ids = list(read_ids if read_ids is not None else ids)

    def __len__(self):
        return len(self.read_ids)

    def __getitem__(self, index):
        return Sample(id=self.read_ids[index], image=np.zeros((4, 4, 3), np.uint8), query="the thing",
                      mask=np.ones((4, 4), np.uint8))


def never_called(images, queries):
    raise AssertionError("the pipeline must not run")


def test_duplicate_ids_are_refused_up_front(tmp_path):
    source = Source(["a", "b", "a", "c", "b", "b"])
    with pytest.raises(ValueError, match=r"2 sample id\(s\) that occur more than once \('a' x2, 'b' x3\)"):
        evaluate_shard(never_called, source, str(tmp_path), log=None)
    assert list(tmp_path.iterdir()) == []  # refused before any file is opened
    assert check_source_ids(Source(["a", "b"])) == ["a", "b"]


def test_ids_count_mismatch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="dataset has 3 samples but 2 ids"):
        check_source_ids(Source(["a", "b"], read_ids=["a", "b", "c"]))


def test_sample_read_with_another_id_is_a_value_error(tmp_path):
    source = Source(["a", "b"], read_ids=["a", "x"])
    with pytest.raises(ValueError, match=r"dataset index 1: the sample read has id 'x' but the dataset's ids "
                                         r"list 'b' there"):
        evaluate_shard(lambda images, queries: [], source, str(tmp_path), batch_size=2, log=None)
