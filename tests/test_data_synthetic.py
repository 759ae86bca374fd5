"""The synthetic dataset: determinism, unambiguous queries, exact masks, and round trips through
every writer/reader pair (authors' training parquet, ReasonSeg parquet, LISA folder)."""
import numpy as np
import pytest

from data import (AuthorsTrainParquet, LisaReasonSeg, ReasonSegParquet, SyntheticDataset,
                  mask_iou, open_dataset, resize_to_frame, solution_from_mask,
                  write_authors_train_parquet, write_lisa_folder, write_reasonseg_parquet)
from data.synthetic import COLORS, CORNERS, SIZES


@pytest.fixture(scope="module")
def samples():
    ds = SyntheticDataset(40, seed=3)
    return [ds[i] for i in range(len(ds))]


def test_deterministic_per_index():
    a, b = SyntheticDataset(5, seed=1)[4], SyntheticDataset(200, seed=1)[4]
    assert a.id == b.id == "synthetic-1-4"
    assert a.query == b.query and np.array_equal(a.image, b.image)
    assert np.array_equal(a.mask, b.mask)
    c = SyntheticDataset(5, seed=2)[4]
    assert not np.array_equal(a.image, c.image)
    with pytest.raises(IndexError):
        SyntheticDataset(5)[5]
    with pytest.raises(ValueError, match="num_samples"):
        SyntheticDataset(-1)


def test_sample_contents(samples):
    for s in samples:
        shapes = s.meta["shapes"]
        assert 2 <= len(shapes) <= 5
        assert s.image.shape == (224, 224, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (224, 224) and set(np.unique(s.mask)) == {0, 1}
        assert s.solution == solution_from_mask(s.mask)
        # The mask is exactly the target's visible pixels: all of one colour.
        colors = np.unique(s.image[s.mask == 1].reshape(-1, 3), axis=0)
        assert len(colors) == 1
        assert s.is_sentence == (s.meta["family"] == "reasoning")
    families = {s.meta["family"] for s in samples}
    assert families == {"referring", "reasoning"}


def test_referring_queries_are_unambiguous(samples):
    # Independent check: parse "the [size] [color] [kind|shape]" and count matching shapes.
    checked = 0
    for s in samples:
        if s.is_sentence:
            continue
        words = s.query.split()
        assert words[0] == "the"
        attrs = {}
        for w in words[1:]:
            if w in SIZES:
                attrs["size"] = w
            elif w in COLORS:
                attrs["color"] = w
            elif w in CORNERS:
                attrs["kind"] = w
            else:
                assert w == "shape", s.query
        matches = [k for k, sh in enumerate(s.meta["shapes"])
                   if all(sh[a] == v for a, v in attrs.items())]
        assert matches == [s.meta["target"]], s.query
        checked += 1
    assert checked >= 5


def test_most_corners_query_is_unambiguous():
    ds = SyntheticDataset(300, seed=0)
    found = 0
    for i in range(300):
        s = ds[i]
        if s.query == "the shape with the most corners":
            corners = [CORNERS[sh["kind"]] for sh in s.meta["shapes"]]
            assert corners.count(max(corners)) == 1
            assert corners[s.meta["target"]] == max(corners)
            found += 1
        if found == 2:
            break
    assert found == 2


def test_round_trip_authors_train_parquet(samples, tmp_path):
    path = tmp_path / "train.parquet"
    assert write_authors_train_parquet(samples[:6], path) == 6
    ds = open_dataset(path)
    assert isinstance(ds, AuthorsTrainParquet)
    assert ds.ids == [s.id for s in samples[:6]]
    for s, r in zip(samples[:6], (ds[i] for i in range(6))):
        assert r.query == s.query and r.solution == s.solution
        assert r.meta["original_size"] == (224, 224)
        assert np.array_equal(r.image, resize_to_frame(s.image))  # PNG is lossless


def test_round_trip_reasonseg_parquet(samples, tmp_path):
    path = tmp_path / "ReasonSeg_test.parquet"
    write_reasonseg_parquet(samples[:4], path)
    ds = open_dataset(path)
    assert isinstance(ds, ReasonSegParquet)
    for s, r in zip(samples[:4], (ds[i] for i in range(4))):
        assert r.query == s.query
        assert np.array_equal(r.mask, s.mask) and np.array_equal(r.image, s.image)


def test_round_trip_lisa_folder(samples, tmp_path):
    folder = tmp_path / "val"
    write_lisa_folder(samples[:8], folder)
    ds = open_dataset(tmp_path, split="val")
    assert isinstance(ds, LisaReasonSeg) and sorted(ds.ids) == sorted(s.id for s in samples[:8])
    by_id = {s.id: s for s in samples[:8]}
    for i in range(len(ds)):
        r = ds[i]
        s = by_id[r.id]
        assert r.query == s.query and r.is_sentence == s.is_sentence
        assert mask_iou(r.mask, s.mask) > 0.95


def test_query_family_sets_hold_only_their_family():
    from data.readers import open_dataset, parse_synthetic_spec

    assert parse_synthetic_spec("synthetic") == (None, "mixed")
    assert parse_synthetic_spec("synthetic:64:reasoning") == (64, "reasoning")
    assert parse_synthetic_spec("synthetic:referring") == (None, "referring")
    assert parse_synthetic_spec("synthetic::referring") == (None, "referring")
    assert parse_synthetic_spec("/data/synthetic:1") is None
    for bad in ("synthetic:1:2", "synthetic:reasoning:referring", "synthetic:1:reasoning:x", "synthetic:-3"):
        with pytest.raises(ValueError, match="synthetic"):
            parse_synthetic_spec(bad)
    referring, reasoning = open_dataset("synthetic:24:referring"), open_dataset("synthetic:24:reasoning")
    assert len(referring) == len(reasoning) == 24
    assert all(referring[i].meta["family"] == "referring" and not referring[i].is_sentence for i in range(24))
    assert all(reasoning[i].meta["family"] == "reasoning" and reasoning[i].is_sentence for i in range(24))
    mixed = [open_dataset("synthetic:24")[i].meta["family"] for i in range(24)]
    assert {"referring", "reasoning"} <= set(mixed)
    assert [open_dataset("synthetic:24:mixed")[i].meta["family"] for i in range(24)] == mixed


def test_query_template_names_every_query_the_generator_writes():
    from data.synthetic import QUERY_TEMPLATES, query_template

    hand = {
        "the star": "kind", "the red star": "colour kind", "the large hexagon": "size kind",
        "the small green triangle": "size colour kind", "the purple shape": "colour",
        "the shape with the most corners": "corners", "the shape with the fewest corners": "corners",
        "the largest shape": "largest / smallest", "the smallest red shape": "largest / smallest of a colour",
        "the bottom-most shape": "extreme position", "the leftmost shape": "extreme position",
        "the shape to the left of the blue circle": "relation", "the shape below the small star": "relation",
        "the shape with the same colour as the red star": "same colour",
    }
    assert {q: query_template(q) for q in hand} == hand and set(hand.values()) == set(QUERY_TEMPLATES)
    referring = set(QUERY_TEMPLATES[:5])
    ds = SyntheticDataset(200, seed=11)
    for i in range(len(ds)):
        s = ds[i]
        assert (query_template(s.query) in referring) == (s.meta["family"] == "referring"), s.query
    for bad in ("the", "a red star", "the red blue star", "the star circle", "the large shape", "the shape",
                "the small red", "the shape with the many corners"):
        with pytest.raises(ValueError, match="not a synthetic query"):
            query_template(bad)
