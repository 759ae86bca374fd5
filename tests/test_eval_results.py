"""predictions.jsonl: records, torn lines, merge, masks as RLE, and the table by hand (eval.results)."""
import json
import math
import os

import numpy as np
import pytest

from eval.results import (BAD_SAMPLE, PredictionRecord, PredictionWriter, decode_mask, done_ids,
                          encode_mask, format_table, merge_predictions, rank_file, read_predictions,
                          read_records, table_from_predictions, table_from_records,
                          truncate_partial_line, write_metrics)
from eval.visualize import select_samples


def rec(index, inter, union, status="ok", is_sentence=None, rank=0):
    iou = None if status == BAD_SAMPLE else (1.0 if union == 0 else inter / union)
    return PredictionRecord(index=index, id=f"s{index}", query=f"q{index}", status=status,
                            is_sentence=is_sentence, intersection=inter, union=union, iou=iou, rank=rank)


def hand_records():
    return [
        rec(0, 2, 4, is_sentence=False),  # IoU 0.5
        rec(1, 3, 3, is_sentence=True),  # IoU 1.0
        rec(2, 0, 5, status="no_json", is_sentence=True),  # unparsed: IoU 0, U = target area
        PredictionRecord(index=3, id="s3", query="", status=BAD_SAMPLE, reason="corrupt", is_sentence=True),
    ]


def test_table_by_hand():
    table = table_from_records(hand_records())
    # all: gIoU = (0.5 + 1 + 0) / 3 = 50 %; cIoU = (2 + 3 + 0) / (4 + 3 + 5) = 5 / 12 = 41.67 %;
    # parse failures 1 / 3 = 33.3 %; the bad sample is counted apart, not in the metrics.
    assert table["all"]["gIoU"] == pytest.approx(50.0)
    assert table["all"]["cIoU"] == pytest.approx(100 * 5 / 12)
    assert table["all"]["parse_failure_rate"] == pytest.approx(100 / 3)
    assert (table["all"]["num_samples"], table["all"]["num_bad"]) == (3, 1)
    # short: only s0 -> 50 / 50; sentence: s1, s2 -> gIoU (1 + 0) / 2 = 50, cIoU 3 / 8 = 37.5
    assert table["short query"]["gIoU"] == pytest.approx(50.0)
    assert table["short query"]["cIoU"] == pytest.approx(50.0)
    assert table["sentence query"]["cIoU"] == pytest.approx(37.5)
    assert table["sentence query"]["parse_failure_rate"] == pytest.approx(50.0)
    assert (table["sentence query"]["num_samples"], table["sentence query"]["num_bad"]) == (2, 1)
    text = format_table(table)
    assert "41.7" in text and "33.3" in text and "37.5" in text


def test_no_query_type_rows_without_is_sentence():
    table = table_from_records([rec(0, 1, 2), rec(1, 0, 0)])  # IoU 0.5 and 1 (U = 0)
    assert list(table) == ["all"]
    assert table["all"]["gIoU"] == pytest.approx(75.0)
    assert table["all"]["cIoU"] == pytest.approx(50.0)  # 1 / 2


def test_empty_table_is_nan_and_metrics_json_has_null(tmp_path):
    table = table_from_records([])
    assert math.isnan(table["all"]["gIoU"]) and table["all"]["num_samples"] == 0
    path = write_metrics(str(tmp_path), table, {"config": {"a": 1}})
    data = json.loads(open(path).read())
    assert data["table"]["all"]["gIoU"] is None and data["config"] == {"a": 1}


def test_writer_reader_roundtrip_and_torn_last_line(tmp_path):
    path = str(tmp_path / "p.jsonl")
    with PredictionWriter(path) as w:
        w.write_batch(hand_records()[:2])
    with open(path, "a") as f:
        f.write('{"index": 2, "id": "s2", "que')  # a crash in the middle of a write
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r.id for r in read_records(path)] == ["s0", "s1"]
    # appending again first cuts the torn line off, so the next record is not glued to it
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        with PredictionWriter(path) as w:
            w.write_batch(hand_records()[2:])
    records = read_records(path)
    assert [r.id for r in records] == ["s0", "s1", "s2", "s3"]
    assert records[0] == hand_records()[0]


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(hand_records()[0].to_json() + "\n{broken\n" + hand_records()[1].to_json() + "\n")
    with pytest.raises(ValueError, match="line 2"):
        read_records(str(path))


def test_truncate_partial_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b"')
    assert truncate_partial_line(str(path)) == 4
    assert path.read_bytes() == b'{"a": 1}\n'
    assert truncate_partial_line(str(path)) == 0


def test_a_record_without_its_newline_is_not_done_and_is_evaluated_again(tmp_path):
    # A crash just before a record's "\n": the record does not count, the writer cuts it off and the
    # resumed run evaluates that sample again.
    out = str(tmp_path)
    path = rank_file(out, 0)
    records = hand_records()
    with open(path, "w") as f:
        f.write(records[0].to_json() + "\n" + records[1].to_json())  # no "\n" after s1
    with pytest.warns(UserWarning, match="torn last line"):
        assert done_ids(out) == {"s0"}
    with pytest.warns(UserWarning, match=f"dropped a torn last line \\({len(records[1].to_json())} bytes\\)"):
        with PredictionWriter(path) as w:  # the resumed run skips s0 and appends s1, s2
            w.write_batch(records[1:3])
    assert [r.id for r in read_records(path)] == ["s0", "s1", "s2"]


def test_merge_rank_files(tmp_path):
    out = str(tmp_path)
    records = hand_records()
    for r in records:  # rank r % 2, as the strided sharding writes them
        with PredictionWriter(rank_file(out, r.index % 2)) as w:
            w.write_batch([r])
    assert done_ids(out) == {"s0", "s1", "s2", "s3"}
    merged = merge_predictions(out)
    assert [r.index for r in merged] == [0, 1, 2, 3]
    assert sorted(os.listdir(out)) == ["predictions.jsonl"]
    assert [(r.id, r.status, r.reason) for r in merged if r.is_bad] == [("s3", BAD_SAMPLE, "corrupt")]
    assert table_from_predictions(out) == table_from_records(records)
    assert read_predictions(str(tmp_path / "predictions.jsonl")) == merged


def test_mask_rle_roundtrip():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    rle = encode_mask(mask)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    json.dumps(rle)
    np.testing.assert_array_equal(decode_mask(rle), mask)
    assert decode_mask(None, (2, 3)).shape == (2, 3) and not decode_mask(None, (2, 3)).any()


def test_select_samples_first_and_worst():
    bad = PredictionRecord(index=4, id="s4", query="", status=BAD_SAMPLE, reason="corrupt")
    records = [bad, rec(3, 0, 1), rec(2, 3, 3), rec(1, 0, 3), rec(0, 1, 2)]
    first, worst = select_samples(records, 2, 3)
    assert [r.index for r in first] == [0, 1]
    assert [r.index for r in worst] == [1, 3, 0]  # IoU 0, 0 (index order), 0.5; bad s4 never drawn
    assert len(select_samples(records, 10, 10)[1]) == 4
    with pytest.raises(ValueError):
        select_samples(records, -1, 0)
