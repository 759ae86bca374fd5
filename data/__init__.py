"""Data for Seg-Zero: ground truth from masks (SPEC.md section 5), readers for the formats users
bring (SPEC.md section 6), and the synthetic dataset the default run trains on.

Every reader returns a :class:`data.types.SampleSource`; see :mod:`data.types` for the
conventions (original-frame image and mask, 840-frame solution). The multi-object mode's data
(solution = a list of objects, SPEC.md section 9) is in :mod:`data.multi_object`.
"""
from data.ground_truth import (ground_truth_from_mask, mask_iou, sam2_consistency_filter,
                               scale_to_frame, solution_from_mask)
from data.image import encode_image, load_image, resize_to_frame
from data.lisa import LisaReasonSeg, write_lisa_folder
from data.multi_object import (GRefDataset, MultiObjectParquet, MultiObjectSynthetic, SingleAsMultiObject,
                               objects_from_masks, open_multi_object_dataset, write_multi_object_parquet)
from data.parquet import (AuthorsTrainParquet, ReasonSegParquet, write_authors_train_parquet,
                          write_reasonseg_parquet)
from data.readers import open_dataset
from data.refer import ReferDataset
from data.safe_pickle import safe_load
from data.solution import format_solution, parse_solution
from data.synthetic import SyntheticDataset
from data.types import FRAME, BadSampleError, Sample, SampleSource

__all__ = [
    "FRAME", "Sample", "SampleSource", "BadSampleError",
    "ground_truth_from_mask", "scale_to_frame", "solution_from_mask", "mask_iou",
    "sam2_consistency_filter", "format_solution", "parse_solution",
    "load_image", "resize_to_frame", "encode_image", "safe_load",
    "AuthorsTrainParquet", "ReasonSegParquet", "LisaReasonSeg", "ReferDataset", "open_dataset",
    "SyntheticDataset", "write_authors_train_parquet", "write_reasonseg_parquet",
    "write_lisa_folder",
    "GRefDataset", "MultiObjectParquet", "MultiObjectSynthetic", "SingleAsMultiObject",
    "objects_from_masks", "open_multi_object_dataset", "write_multi_object_parquet",
]
