"""gIoU / cIoU (SPEC.md section 7) against hand-computed numbers, and the accumulator's merges."""
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eval import IoUAccumulator, intersection_union, sample_iou


def masks():
    """A 4 x 4 example with an ignore region.

    gt:            pred:
    1 1 0 0        1 0 0 0
    1 1 0 0        1 0 1 0
    0 0 255 255    0 0 1 1
    0 0 0 0        0 0 0 0
    """
    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 1
    gt[2, 2:] = 255
    pred = np.zeros((4, 4), bool)
    pred[:2, 0] = True
    pred[1:3, 2] = True
    pred[2, 3] = True
    return pred, gt


def test_intersection_union_excludes_ignore_pixels():
    pred, gt = masks()
    # I = pred & target = (0,0), (1,0) -> 2
    # U = (pred | target) minus ignore = target 4 + pred (1,2) -> 5 (pred (2,2), (2,3) are ignore)
    assert intersection_union(pred, gt) == (2, 5)
    # 0/1 integer prediction and a CPU torch tensor give the same
    assert intersection_union(pred.astype(np.uint8), gt) == (2, 5)
    assert intersection_union(torch.from_numpy(pred), gt) == (2, 5)
    # bool ground truth (no ignore): target = 4 pixels, pred has 5 -> I 2, U 4 + 5 - 2 = 7
    assert intersection_union(pred, gt == 1) == (2, 7)


def test_unparseable_prediction_and_empty_target():
    pred, gt = masks()
    # None: I = 0, U = the target area (4), IoU 0
    assert intersection_union(None, gt) == (0, 4)
    # empty target and empty prediction: U = 0 -> IoU 1
    empty_gt = np.where(gt == 255, 255, 0).astype(np.uint8)
    assert intersection_union(np.zeros((4, 4), bool), empty_gt) == (0, 0)
    assert sample_iou(0, 0) == 1.0
    # empty target, prediction only on ignore pixels: still U = 0
    only_ignore = np.zeros((4, 4), bool)
    only_ignore[2, 2] = True
    assert intersection_union(only_ignore, empty_gt) == (0, 0)
    # empty target, unparsed: U = 0, but an answer that did not parse never earns IoU (SPEC 7)
    assert intersection_union(None, empty_gt) == (0, 0)
    assert sample_iou(0, 0, parsed=False) == 0.0
    assert sample_iou(3, 4, parsed=False) == 0.0


def test_intersection_union_user_errors():
    pred, gt = masks()
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 4\)"):
        intersection_union(np.zeros((4, 5), bool), gt)
    with pytest.raises(ValueError, match="0, 1 or 255"):
        intersection_union(pred, gt * 2)
    with pytest.raises(ValueError, match="bool or 0/1"):
        intersection_union(pred * 0.5, gt)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        intersection_union(pred[None], gt[None])
    with pytest.raises(ValueError, match="intersection <= union"):
        sample_iou(3, 2)


def test_giou_ciou_hand_computed():
    acc = IoUAccumulator()
    acc.add(1, 2)
    acc.add(3, 3)
    # gIoU = (1/2 + 3/3) / 2 = 0.75; cIoU = (1 + 3) / (2 + 3) = 0.8
    assert acc.giou == 0.75 and acc.ciou == 0.8 and acc.count == 2
    assert acc.parse_failure_rate == 0.0
    # an unparsed sample with target area 5: IoU 0
    acc.add(0, 5, parsed=False)
    # gIoU = (0.5 + 1 + 0) / 3 = 0.5; cIoU = 4 / 10 = 0.4; failures 1/3
    assert acc.giou == pytest.approx(0.5) and acc.ciou == pytest.approx(0.4)
    assert acc.parse_failure_rate == pytest.approx(1 / 3)
    assert acc.summary() == {"overall": {"gIoU": 50.0, "cIoU": 40.0, "parse_fail": 33.3, "count": 3}}
    # an unparsed sample on an EMPTY target (U = 0): IoU 0, not 1 (a parsed empty mask would be 1)
    acc.add(0, 0, parsed=False)
    # gIoU = (0.5 + 1 + 0 + 0) / 4 = 0.375; cIoU unchanged 4 / 10; failures 2/4
    assert acc.giou == pytest.approx(0.375) and acc.ciou == pytest.approx(0.4)
    assert acc.parse_failure_rate == pytest.approx(0.5)


def test_groups_and_empty_rows():
    acc = IoUAccumulator(groups=("short", "sentence"))
    acc.add(1, 2, group="short")
    acc.add(3, 3, group="sentence")
    acc.add(1, 4)  # no group: overall only
    # overall: gIoU = (0.5 + 1 + 0.25) / 3 = 0.58333; cIoU = 5 / 9 = 0.5556
    assert acc.giou == pytest.approx(1.75 / 3) and acc.ciou == pytest.approx(5 / 9)
    assert acc.row("short").giou == 0.5 and acc.row("sentence").ciou == 1.0
    summary = acc.summary()
    assert list(summary) == ["overall", "short", "sentence"]
    assert summary["overall"] == {"gIoU": 58.3, "cIoU": 55.6, "parse_fail": 0.0, "count": 3}
    # a row without samples reports NaN, not a made-up number
    assert math.isnan(IoUAccumulator().giou) and math.isnan(IoUAccumulator().ciou)
    # all targets empty and all predictions empty: sum U = 0 -> cIoU 1, like the per-sample rule
    empty = IoUAccumulator()
    empty.add(0, 0)
    assert empty.ciou == 1.0 and empty.giou == 1.0
    with pytest.raises(ValueError, match="unknown group 'long'"):
        acc.add(1, 1, group="long")
    with pytest.raises(ValueError, match="intersection must be 0"):
        acc.add(1, 2, parsed=False)
    with pytest.raises(ValueError, match="distinct"):
        IoUAccumulator(groups=("a", "a"))


def fill(acc, samples):
    for intersection, union, parsed, group in samples:
        acc.add(intersection, union, parsed=parsed, group=group)
    return acc


# (intersection, union, parsed, group)
SAMPLES = [
    (1, 2, True, "short"),
    (3, 3, True, "sentence"),
    (0, 5, False, "sentence"),
    (7, 11, True, None),
    (0, 0, True, "short"),
]


def test_merge_equals_one_accumulator():
    whole = fill(IoUAccumulator(("short", "sentence")), SAMPLES)
    left = fill(IoUAccumulator(("short", "sentence")), SAMPLES[:2])
    right = fill(IoUAccumulator(("short", "sentence")), SAMPLES[2:])
    merged = left.merge(right)
    for name in ("overall", "short", "sentence"):
        # counts and pixel sums exact; sum_iou equal up to the order of float additions
        assert merged.row(name).values() == pytest.approx(whole.row(name).values(), rel=1e-15)
    assert merged.summary() == whole.summary()
    with pytest.raises(ValueError, match="cannot merge"):
        merged.merge(IoUAccumulator())


def test_tensor_round_trip_and_sum():
    groups = ("short", "sentence")
    left = fill(IoUAccumulator(groups), SAMPLES[:3])
    right = fill(IoUAccumulator(groups), SAMPLES[3:])
    tensor = left.to_tensor()
    assert tensor.dtype == torch.float64 and tensor.shape == (3, 5)
    # overall row of the left half: count 3, sum IoU 0.5 + 1 + 0, sum I 4, sum U 10, 1 failure
    assert tensor[0].tolist() == [3.0, 1.5, 4.0, 10.0, 1.0]
    summed = IoUAccumulator.from_tensor(left.to_tensor() + right.to_tensor(), groups)
    whole = fill(IoUAccumulator(groups), SAMPLES)
    assert summed.summary() == whole.summary()
    assert IoUAccumulator().all_reduce().count == 0  # no process group: no-op
    with pytest.raises(ValueError, match="does not match"):
        IoUAccumulator.from_tensor(tensor, ())


def _all_reduce_worker(rank, world_size, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        acc = fill(IoUAccumulator(("short", "sentence")), SAMPLES[rank::world_size])
        acc.all_reduce()
        if rank == 0:
            torch.save(acc.to_tensor(), result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_all_reduce_two_gloo_processes_equals_one(tmp_path):
    result_file = str(tmp_path / "reduced.pt")
    # fork: the children inherit the imported modules (a spawn re-imports torch, ~15 s on 2 cores)
    mp.start_processes(
        _all_reduce_worker, args=(2, str(tmp_path / "init"), result_file), nprocs=2, join=True, start_method="fork"
    )
    reduced = IoUAccumulator.from_tensor(torch.load(result_file), ("short", "sentence"))
    whole = fill(IoUAccumulator(("short", "sentence")), SAMPLES)
    for name in ("overall", "short", "sentence"):
        assert reduced.row(name).values() == pytest.approx(whole.row(name).values())
    # whole overall: gIoU = (0.5 + 1 + 0 + 7/11 + 1) / 5; cIoU = 11 / 21
    assert reduced.giou == pytest.approx((2.5 + 7 / 11) / 5) and reduced.ciou == pytest.approx(11 / 21)
