"""SAM2 as the frozen promptable segmenter of Seg-Zero (SPEC.md section 1, step 5).

Seg-Zero (arXiv 2503.06520, section 3.1) decouples reasoning from segmentation: the policy writes a
box and two points, and a frozen SAM2 image predictor turns them into a mask. This module wraps
``sam2.sam2_image_predictor.SAM2ImagePredictor`` with exactly the prompting the SPEC fixes:

    box          = [x1, y1, x2, y2]               (original-image pixels)
    point_coords = [[x1, y1], [x2, y2]]  [N, 2]   (original-image pixels)
    point_labels = [1, 1]                [N]      (both foreground)
    multimask_output = True  -> masks [3, H, W], scores [3]
    mask = masks[argmax(scores)]                  (bool [H, W]; first index on ties)

Prompt modes (the paper's Table 2 ablation): "box+points" (default), "box", "points".

Constructors:
- :meth:`Segmenter.from_config`: a SAM2 config plus a checkpoint file (the checkpoint is read and
  checked before anything is built: a file ``torch.load`` cannot read, or one holding anything but
  tensors, is refused with ValueError by :func:`read_sam2_checkpoint`; its keys must match the
  model exactly). The config is the name of a yaml inside the sam2 package's ``configs`` folder
  (``configs/sam2.1/sam2.1_hiera_l.yaml``; the name is resolved, so ``configs/../../x.yaml`` is
  refused), or the path of a self-contained user yaml. A config is instantiated by Hydra, which
  imports and calls whatever its ``_target_`` keys name, so every ``_target_`` (after
  interpolation) must name a class defined in the sam2 package (:func:`check_sam2_targets`);
  anything else is refused before anything is built.
- :meth:`Segmenter.from_hub`: a Hugging Face id such as ``facebook/sam2-hiera-large`` (the model
  the authors use). This does what ``SAM2ImagePredictor.from_pretrained`` does (look the id up in
  sam2's ``HF_MODEL_ID_TO_FILENAMES``, download that checkpoint) but reports a failed download with
  what to do instead, and loads the file through :meth:`from_config`.
- :meth:`Segmenter.tiny` / :func:`build_tiny_sam2`: the Hiera-T architecture at a small input size
  with random weights, deterministic from a seed, for CPU tests.

Departure from the plain predictor: ``SAM2ImagePredictor`` hard-codes the backbone feature sizes of
a 1024-pixel input (``_bb_feat_sizes``); we set them from the model's ``image_size`` s as
(s/4, s/4), (s/8, s/8), (s/16, s/16), which is the same for s = 1024 and makes small models work.
On CUDA the predictor runs under bf16 autocast (as SAM2's own examples and the authors' inference
code do); on CPU it runs in fp32.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Sequence

import numpy as np
import torch

#: Prompt modes of the paper's Table 2 ablation; the first is the default.
PROMPT_MODES = ("box+points", "box", "points")

#: The SAM2 checkpoint the Seg-Zero authors use (SPEC section 1).
DEFAULT_SAM2_HUB_ID = "facebook/sam2-hiera-large"

#: Architecture of the tiny test segmenter (a config shipped inside the sam2 package).
TINY_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def _sam2_package_dir() -> str:
    import sam2

    return os.path.dirname(sam2.__file__)


#: What sam2's build_sam2 adds to every config (apply_postprocessing=True).
_POSTPROCESSING = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
}


def resolve_sam2_config(config: str) -> tuple[str, str]:
    """("package", name relative to the sam2 package) for a yaml inside the package's ``configs``
    folder (the name resolved: symlinks and ``..`` followed), else ("file", absolute path) for an
    existing ``.yaml`` file outside the package. ValueError otherwise, listing the package configs.
    """
    root = os.path.realpath(_sam2_package_dir())
    configs = os.path.join(root, "configs")
    in_package = os.path.realpath(os.path.join(root, config))
    if os.path.isfile(in_package) and in_package.startswith(configs + os.sep):
        return "package", os.path.relpath(in_package, root)
    user = os.path.realpath(config)
    if os.path.isfile(user) and user.endswith((".yaml", ".yml")) and not user.startswith(root + os.sep):
        return "file", user
    known = []
    for sub in ("configs/sam2", "configs/sam2.1"):
        folder = os.path.join(root, sub)
        if os.path.isdir(folder):
            known += [f"{sub}/{name}" for name in sorted(os.listdir(folder)) if name.endswith(".yaml")]
    raise ValueError(
        f"unknown SAM2 config {config!r}: give the name of a config inside the sam2 package's configs "
        f"folder, one of {known}, or the path of a yaml file"
    )


def split_sam2(sam2: str) -> tuple[str, str] | None:
    """(config, checkpoint) of a ``--sam2 CONFIG::CHECKPOINT`` value (train.py, evaluate.py and
    models.infer spell SAM2 the same way); None for 'toy' or a hub id. ValueError when a side is
    empty, or for a bare checkpoint file (a value without ``::`` that ends in .pt / .pth or names an
    existing file), which would otherwise be looked up as a hub id."""
    if "::" not in sam2:
        if sam2 != "toy" and (sam2.lower().endswith((".pt", ".pth")) or os.path.isfile(sam2)):
            raise ValueError(f"--sam2 {sam2!r} is a checkpoint file, which needs its config: pass --sam2 "
                             f"CONFIG::CHECKPOINT, e.g. configs/sam2.1/sam2.1_hiera_l.yaml::{sam2} (the sam2 "
                             f"package config of that checkpoint), 'toy', or a hub id such as {DEFAULT_SAM2_HUB_ID}")
        return None
    config, _, checkpoint = sam2.partition("::")
    if not config or not checkpoint:
        raise ValueError(f"--sam2 {sam2!r}: write CONFIG::CHECKPOINT with both parts (a sam2 package config "
                         f"or yaml file, and a checkpoint file), 'toy', or a hub id such as {DEFAULT_SAM2_HUB_ID}")
    return config, checkpoint


def check_sam2_config(config: str) -> None:
    """ValueError unless ``config`` is a package config or a yaml file (:func:`resolve_sam2_config`)
    whose ``_target_`` keys all name sam2 classes (:func:`check_sam2_targets`). Builds nothing."""
    _load_sam2_config(config)


def _sam2_class(target: str) -> bool:
    """Whether ``target`` is ``module.Class`` for a class defined in that module of the sam2 package."""
    import importlib
    import inspect

    module, _, name = target.rpartition(".")
    if not (module == "sam2" or module.startswith("sam2.")) or not name.isidentifier():
        return False
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return inspect.isclass(obj) and obj.__module__ == module and obj.__qualname__ == name


def check_sam2_targets(cfg, config: str) -> None:
    """ValueError unless every ``_target_`` in the resolved config ``cfg`` (nested dicts and lists)
    names a class of the sam2 package (:func:`_sam2_class`). Hydra's instantiate would import and
    call anything a ``_target_`` names (``os.system``, ``builtins.open``...)."""
    from omegaconf import OmegaConf

    bad = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}.{key}" if where else str(key)
                if key == "_target_" and not (isinstance(value, str) and _sam2_class(value)):
                    bad.append(f"{here}={value!r}")
                walk(value, here)
        elif isinstance(node, list):
            for k, value in enumerate(node):
                walk(value, f"{where}[{k}]")

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    if bad:
        raise ValueError(f"SAM2 config {config!r} names objects that are not sam2 classes: {', '.join(bad)}; "
                         f"a config may only instantiate classes of the sam2 package")


def _load_sam2_config(config: str, image_size: int | None = None):
    """The resolved, checked OmegaConf config (with build_sam2's post-processing settings)."""
    import json

    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    kind, name = resolve_sam2_config(config)
    overrides = dict(_POSTPROCESSING)
    if image_size is not None:
        overrides["model.image_size"] = int(image_size)
    if kind == "package":
        import sam2  # noqa: F401  (registers the package as Hydra's config module)
        from hydra import compose

        cfg = compose(config_name=name, overrides=[f"++{k}={json.dumps(v)}" for k, v in overrides.items()])
    else:
        try:
            cfg = OmegaConf.load(name)
            if not OmegaConf.is_dict(cfg) or "model" not in cfg:
                raise ValueError("no 'model' section")
            for key, value in overrides.items():
                OmegaConf.update(cfg, key, value, force_add=True)
        except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as exc:
            raise ValueError(f"SAM2 config {config!r} is not a usable yaml file: {exc}") from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:  # e.g. an interpolation to a missing key
        raise ValueError(f"SAM2 config {config!r}: {exc}") from None
    check_sam2_targets(cfg, config)
    return cfg


def _build_sam2_model(config: str, image_size: int | None = None):
    """The SAM2Base model of a config, random weights, on CPU, eval mode (what sam2's build_sam2
    does, with the config checked first)."""
    from hydra.utils import instantiate

    cfg = _load_sam2_config(config, image_size)
    return instantiate(cfg.model, _recursive_=True).to("cpu").eval()


def build_tiny_sam2(seed: int = 0, image_size: int = 256, device: str | torch.device = "cpu"):
    """A random-weight SAM2 (Hiera-T architecture, ``image_size`` input), deterministic from ``seed``.

    The global torch RNG is left untouched (the seed is applied inside ``torch.random.fork_rng``).
    Returns the ``SAM2Base`` model in eval mode on ``device``.
    """
    if image_size <= 0 or image_size % 16:
        raise ValueError(f"image_size must be a positive multiple of 16, got {image_size!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_sam2_model(TINY_SAM2_CONFIG, image_size=image_size)
    return model.to(device).eval()


def make_predictor(model):
    """``SAM2ImagePredictor`` for ``model`` with backbone feature sizes matching its image size."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with warnings.catch_warnings():  # its transforms use torch.jit.script, deprecated in torch 2.x
        warnings.simplefilter("ignore", FutureWarning)
        predictor = SAM2ImagePredictor(model)
    size = int(model.image_size)
    # The backbone strides are 4, 8, 16: feature maps [C, s/4, s/4], [C, s/8, s/8], [C, s/16, s/16].
    predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
    return predictor


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be a uint8 RGB array [H, W, 3], got {desc}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    return image


def sam2_prompts(bbox, points, mode: str):
    """The predictor's prompt arrays for one image.

    Returns (box float32 [4] or None, point_coords float32 [N, 2] or None, point_labels int32 [N]
    or None). Raises ValueError for an unknown mode, a prompt the mode needs but is None, or a
    prompt of the wrong shape / non-finite values.
    """
    if mode not in PROMPT_MODES:
        raise ValueError(f"mode must be one of {PROMPT_MODES}, got {mode!r}")
    box = coords = labels = None
    if mode in ("box+points", "box"):
        if bbox is None:
            raise ValueError(f"mode {mode!r} needs a bbox, got None")
        box = np.asarray(bbox, dtype=np.float32)
        if box.shape != (4,) or not np.isfinite(box).all():
            raise ValueError(f"bbox must be 4 finite numbers [x1, y1, x2, y2], got {bbox!r}")
    if mode in ("box+points", "points"):
        if points is None:
            raise ValueError(f"mode {mode!r} needs points, got None")
        coords = np.asarray(points, dtype=np.float32)
        if coords.ndim != 2 or coords.shape[0] < 1 or coords.shape[1] != 2 or not np.isfinite(coords).all():
            raise ValueError(f"points must be finite [[x, y], ...] pairs, got {points!r}")
        labels = np.ones(coords.shape[0], dtype=np.int32)  # every point is foreground (SPEC 1.5)
    return box, coords, labels


def best_mask(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The highest-scoring of the multimask outputs: masks [C, H, W], scores [C] -> bool [H, W]."""
    assert masks.ndim == 3 and scores.shape == (masks.shape[0],), (masks.shape, scores.shape)
    return masks[int(np.argmax(scores))] > 0.5  # predictor masks are 0.0 / 1.0 floats


def read_sam2_checkpoint(checkpoint: str) -> dict[str, torch.Tensor]:
    """The state dict of a sam2 checkpoint file (``{"model": state_dict}`` or a bare state dict),
    read on CPU with ``torch.load(weights_only=True)``.

    ValueError "not a readable sam2 checkpoint: <cause>" naming the file when ``torch.load`` fails
    on it (empty, truncated or garbage bytes, pickled objects other than tensors and containers) or
    what it holds is not a dict of tensors keyed by strings.
    """
    def refuse(cause: str):
        return ValueError(f"SAM2 checkpoint {checkpoint!r} is not a readable sam2 checkpoint: {cause}; pass the "
                          f".pt file of the SAM2 release (a {{'model': state_dict}} dict saved by torch.save)")

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch.load raises EOFError, IndexError, UnpicklingError, ...)
        text, marker = str(exc), "WeightsUnpickler error:"
        if marker in text:  # a pickled object weights_only refuses; keep the line that names it
            text = text.split(marker, 1)[1].split("\n", 1)[0].split(". Please", 1)[0]
        cause = " ".join(text.split())[:300] or "no further detail"
        raise refuse(f"torch.load failed ({type(exc).__name__}: {cause})") from exc
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    if not isinstance(state, dict):
        raise refuse(f"it holds a {type(state).__name__}, not a state dict")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise refuse(f"entry {key!r} is a {type(value).__name__}, not a tensor")
    return state


class Segmenter:
    """SAM2 image predictor prompted the Seg-Zero way (see the module docstring).

    ``segment`` handles one image, ``segment_batch`` encodes several images in one backbone pass
    (``set_image_batch``; the mask decoder then runs per image, as sam2's ``predict_batch`` does).
    Calling the object, ``segmenter(image, bbox, points)``, picks the mode from the prompts given
    (both -> "box+points", one -> that one); the data filter uses it with the ground-truth box and
    one point.
    """

    def __init__(self, model, *, autocast: bool = True):
        """Wrap a built ``SAM2Base`` model (weights already loaded, on its device)."""
        self.model = model.eval()
        self.predictor = make_predictor(self.model)
        self.autocast = autocast

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_config(cls, config: str, checkpoint: str, device: str | torch.device = "cpu") -> "Segmenter":
        """SAM2 from a package config name and a checkpoint file (sam2's ``{"model": state_dict}``).

        FileNotFoundError for a missing checkpoint; ValueError for a refused config, a damaged
        checkpoint (:func:`read_sam2_checkpoint`) or one whose keys or shapes do not match the config.
        """
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(
                f"SAM2 checkpoint not found: {checkpoint!r}; download it (e.g. sam2.1_hiera_large.pt from "
                f"the SAM2 release) and pass its path, or use a hub id such as {DEFAULT_SAM2_HUB_ID!r}"
            )
        check_sam2_config(config)
        state = read_sam2_checkpoint(checkpoint)
        model = _build_sam2_model(config)
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(f"SAM2 checkpoint {checkpoint!r} does not match config {config!r}: {exc}") from exc
        return cls(model.to(device).eval())

    @classmethod
    def from_hub(cls, model_id: str = DEFAULT_SAM2_HUB_ID, device: str | torch.device = "cpu") -> "Segmenter":
        """SAM2 from a Hugging Face id (``facebook/sam2-hiera-large``, ``facebook/sam2.1-hiera-large``, ...)."""
        from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

        if model_id not in HF_MODEL_ID_TO_FILENAMES:
            raise ValueError(f"unknown SAM2 hub id {model_id!r}; known: {sorted(HF_MODEL_ID_TO_FILENAMES)}")
        config, filename = HF_MODEL_ID_TO_FILENAMES[model_id]
        from huggingface_hub import hf_hub_download

        try:
            checkpoint = hf_hub_download(repo_id=model_id, filename=filename)
        except (OSError, ValueError) as exc:  # offline, no network, gated, not cached
            raise FileNotFoundError(
                f"could not get {filename} of {model_id!r} from the Hugging Face hub ({type(exc).__name__}); "
                f"connect to the internet once to cache it, or download {filename} and pass "
                f"--sam2 {config}::PATH"
            ) from exc
        return cls.from_config(config, checkpoint, device=device)

    @classmethod
    def tiny(cls, seed: int = 0, image_size: int = 256, device: str | torch.device = "cpu") -> "Segmenter":
        """The random tiny SAM2 of :func:`build_tiny_sam2`, for tests and weight-free runs."""
        return cls(build_tiny_sam2(seed=seed, image_size=image_size, device=device))

    # ----------------------------------------------------------------- prediction
    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def _autocast(self):
        if self.autocast and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def segment(self, image: np.ndarray, bbox=None, points=None, mode: str = "box+points") -> np.ndarray:
        """Mask of one image: uint8 [H, W, 3] RGB + prompts in its pixels -> bool [H, W]."""
        image = _check_image(image)
        box, coords, labels = sam2_prompts(bbox, points, mode)
        with self._autocast():
            self.predictor.set_image(image)
            masks, scores, _ = self.predictor.predict(
                point_coords=coords, point_labels=labels, box=box, multimask_output=True
            )  # masks [3, H, W], scores [3]
        self.predictor.reset_predictor()
        return best_mask(masks, scores)

    @torch.inference_mode()
    def segment_batch(
        self,
        images: Sequence[np.ndarray],
        bboxes: Sequence | None = None,
        points: Sequence | None = None,
        mode: str = "box+points",
    ) -> list[np.ndarray]:
        """Masks of B images (sizes may differ), one backbone pass: -> B bool masks [H_i, W_i].

        ``bboxes`` / ``points`` are per-image lists (each may be None when ``mode`` does not use it).
        """
        images = [_check_image(image) for image in images]
        n = len(images)
        if n == 0:
            return []
        bboxes = [None] * n if bboxes is None else list(bboxes)
        points = [None] * n if points is None else list(points)
        if len(bboxes) != n or len(points) != n:
            raise ValueError(f"got {n} images, {len(bboxes)} bboxes and {len(points)} points lists")
        prompts = [sam2_prompts(b, p, mode) for b, p in zip(bboxes, points)]
        box_batch = None if prompts[0][0] is None else [box for box, _, _ in prompts]
        coords_batch = None if prompts[0][1] is None else [coords for _, coords, _ in prompts]
        labels_batch = None if prompts[0][2] is None else [labels for _, _, labels in prompts]
        with self._autocast():
            self.predictor.set_image_batch(list(images))
            masks, scores, _ = self.predictor.predict_batch(
                point_coords_batch=coords_batch,
                point_labels_batch=labels_batch,
                box_batch=box_batch,
                multimask_output=True,
            )  # B x masks [3, H_i, W_i], B x scores [3]
        self.predictor.reset_predictor()
        return [best_mask(m, s) for m, s in zip(masks, scores)]

    @torch.inference_mode()
    def segment_objects(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence,
        points: Sequence,
        mode: str = "box+points",
    ) -> list[np.ndarray]:
        """Per-object masks of B images, K_i (box, ONE point) prompts each (multi-object mode).

        ``boxes[i]`` is [K_i, 4] and ``points[i]`` [K_i, 2] (original-image pixels; K_i may be 0).
        The images with prompts go through the backbone together (``set_image_batch``); the K_i
        prompts of an image are decoded in one batched call (box [K, 4], point_coords [K, 1, 2],
        point_labels [K, 1] = 1). Each object keeps its highest-scoring multimask output.
        Returns B bool arrays [K_i, H_i, W_i] (K_i = 0: an empty [0, H_i, W_i] array).
        """
        if mode not in PROMPT_MODES:
            raise ValueError(f"mode must be one of {PROMPT_MODES}, got {mode!r}")
        images = [_check_image(image) for image in images]
        if len(boxes) != len(images) or len(points) != len(images):
            raise ValueError(f"got {len(images)} images, {len(boxes)} box lists and {len(points)} point lists")
        prompts = []
        for i, (bxs, pts) in enumerate(zip(boxes, points)):
            bxs = np.asarray(bxs, dtype=np.float32).reshape(-1, 4)  # [K, 4]
            pts = np.asarray(pts, dtype=np.float32).reshape(-1, 2)  # [K, 2]
            if len(bxs) != len(pts) or not (np.isfinite(bxs).all() and np.isfinite(pts).all()):
                raise ValueError(f"image {i}: need as many finite boxes [K, 4] as points [K, 2], "
                                 f"got {len(bxs)} and {len(pts)}")
            prompts.append((bxs, pts))
        out = [np.zeros((0, *image.shape[:2]), dtype=bool) for image in images]
        todo = [i for i, (bxs, _) in enumerate(prompts) if len(bxs)]
        if not todo:
            return out
        use_box, use_points = mode in ("box+points", "box"), mode in ("box+points", "points")
        with self._autocast():
            self.predictor.set_image_batch([images[i] for i in todo])
            masks, scores, _ = self.predictor.predict_batch(
                point_coords_batch=[prompts[i][1][:, None, :] for i in todo] if use_points else None,  # [K, 1, 2]
                point_labels_batch=[np.ones((len(prompts[i][1]), 1), np.int32) for i in todo] if use_points else None,
                box_batch=[prompts[i][0] for i in todo] if use_box else None,  # [K, 4]
                multimask_output=True,
            )  # per image: masks [K, 3, H, W] (the K axis squeezed away when K = 1), scores [K, 3]
        self.predictor.reset_predictor()
        for i, m, sc in zip(todo, masks, scores):
            k = len(prompts[i][0])
            h, w = images[i].shape[:2]
            m, sc = m.reshape(k, -1, h, w), sc.reshape(k, -1)  # [K, 3, H, W], [K, 3]
            out[i] = np.stack([best_mask(m[j], sc[j]) for j in range(k)])  # [K, H, W]
        return out

    def __call__(self, image: np.ndarray, bbox=None, points=None) -> np.ndarray:
        """``segment`` with the mode implied by the prompts given (both, box only or points only)."""
        if bbox is None and points is None:
            raise ValueError("give a bbox, points, or both")
        mode = "box+points" if bbox is not None and points is not None else ("box" if points is None else "points")
        return self.segment(image, bbox=bbox, points=points, mode=mode)
