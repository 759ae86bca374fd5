"""grpo.tracking: rewritten run files are flushed to disk before they replace the old ones."""
import json
import os

import pytest

from grpo.tracking import filter_jsonl, write_atomic
from helpers import record_fsyncs


def test_write_atomic_flushes_the_file_then_the_folder(tmp_path, monkeypatch):
    paths = record_fsyncs(monkeypatch)
    write_atomic(tmp_path / "config.json", '{"a": 1}')
    assert paths == [str(tmp_path / "config.json.tmp"), str(tmp_path)]
    assert (tmp_path / "config.json").read_text() == '{"a": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_filter_jsonl_is_flushed_and_keeps_the_old_file_until_the_new_one_is_whole(tmp_path, monkeypatch):
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 1, 2)))
    paths = record_fsyncs(monkeypatch)
    filter_jsonl(path, lambda row: row["step"] <= 1)
    assert paths == [str(tmp_path / "heldout.jsonl.tmp"), str(tmp_path)]
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 1]

    def crash(src, dst):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        filter_jsonl(path, lambda row: False)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 1]
