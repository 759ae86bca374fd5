"""PredictionRecord.from_dict checks the JSON types of a record's fields, so a corrupt
predictions.jsonl is one ValueError naming the file, the line and the field (never a TypeError
from the metrics later)."""
import json

import pytest

from eval.results import BAD_SAMPLE, PredictionRecord, read_predictions, read_records


def good(number, changes=None):
    record = PredictionRecord(index=number, id=f"s{number}", query="q", status="ok", is_sentence=False,
                              intersection=2, union=4, iou=0.5, seconds=0.1, height=3, width=5,
                              bbox=[0.0, 0.0, 1.0, 1.0], mask_rle={"size": [3, 5], "counts": "?"},
                              target_area=3, pred_area=2)
    data = json.loads(record.to_json())
    data.update(changes or {})
    return data


@pytest.mark.parametrize("changes,message", [
    ({"intersection": "abc"}, "field 'intersection' is 'abc', expected a non-negative integer or null"),
    ({"union": None}, "record 's1' with status 'ok' lacks ['union'] (only a bad_sample record may)"),
    ({"iou": None}, "lacks ['iou']"),
    ({"index": "1"}, "field 'index' is '1', expected a non-negative integer"),
    ({"index": -1}, "field 'index' is -1, expected a non-negative integer"),
    ({"index": True}, "field 'index' is True, expected a non-negative integer"),
    ({"id": 1}, "field 'id' is 1, expected a string"),
    ({"is_sentence": "false"}, "field 'is_sentence' is 'false', expected true or false or null"),
    ({"union": 3.0}, "field 'union' is 3.0, expected a non-negative integer or null"),
    ({"iou": "0.5"}, "field 'iou' is '0.5', expected a finite number or null"),
    ({"bbox": "1,2,3,4"}, "field 'bbox' is '1,2,3,4', expected a list or null"),
    ({"mask_rle": []}, "field 'mask_rle' is [], expected an object or null"),
    ({"seconds": None}, "field 'seconds' is None, expected a finite number"),
    ({"intersection": 5}, "record 's1': intersection 5 > union 4"),
])
def test_wrong_field_types_name_file_line_and_field(tmp_path, changes, message):
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(good(0)) + "\n" + json.dumps(good(1, changes)) + "\n")
    with pytest.raises(ValueError) as err:
        read_records(str(path))
    assert str(err.value).startswith(f"{path}, line 2: corrupt prediction record: ")
    assert message in str(err.value)


def test_valid_records_still_read(tmp_path):
    bad = json.loads(PredictionRecord(index=2, id="s2", query="", status=BAD_SAMPLE, reason="corrupt").to_json())
    unparsed = good(3, {"status": "no_json", "intersection": 0, "union": 0, "iou": 0.0, "bbox": None,
                          "mask_rle": None})
    older = {"index": 4, "id": "s4", "query": "q", "status": "ok", "intersection": 0, "union": 0, "iou": 1.0}
    lines = [good(0), good(1, {"extra_key": "ignored"}), bad, unparsed, older, [1, 2]]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines[:-1]))
    records = read_predictions(str(path))
    assert [r.id for r in records] == ["s0", "s1", "s2", "s3", "s4"] and records[2].is_bad
    path.write_text(json.dumps(lines[-1]) + "\n")
    with pytest.raises(ValueError, match="line 1: corrupt prediction record: expected a JSON object, got list"):
        read_records(str(path))
