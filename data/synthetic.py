"""The synthetic dataset: procedurally drawn scenes of coloured shapes with exact masks.

It is the project's embedded default (no download needed) and exercises every reader: it can be
written in the authors' training parquet, the authors' ReasonSeg parquet and LISA's folder layout
(see :func:`write_authors_train_parquet`, :func:`write_reasonseg_parquet`,
:func:`write_lisa_folder`).

A scene (default 224 x 224, optional size jitter) holds 2-5 shapes, each a kind (circle, square,
rectangle, triangle, pentagon, hexagon, star), a colour (red, green, blue, yellow, purple,
orange) and a size class (small: radius 6-9 % of the short side, large: 14-20 %), at a random
position and rotation, drawn in order (later shapes on top) without anti-aliasing, so the label
map is exact, on a light background whose 2-D colour ramp encodes the position (``_paint``).
Constraints checked after every placement (a shape that cannot be placed in 30
tries is dropped): each shape keeps at least half of its pixels visible (no total occlusion) and
its visible region has no hole (LISA polygons cannot express holes).

The target's mask is its VISIBLE pixels. Two families of queries, each defined as a predicate
over the scene and used only when exactly one shape satisfies it (generate, then verify
uniqueness; the scene is re-drawn when no query is unambiguous):

- referring (``is_sentence=False``): "the small green triangle", "the blue circle", "the star",
  "the large hexagon", "the purple shape";
- reasoning (``is_sentence=True``): "the shape with the most corners" / "fewest corners"
  (corners: circle 0, triangle 3, square 4, rectangle 4, pentagon 5, hexagon 6, star 10),
  "the largest shape" / "the smallest shape" / "the largest red shape" (visible area, the winner
  at least 1.3x the runner-up), "the leftmost shape" etc. (visible centroid, margin 5 % of the
  side), "the shape to the left of the blue circle" / right of / above / below (its visible box
  entirely on that side of the anchor's), "the shape with the same colour as the red star".

Determinism: sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` only, so it does
not depend on how many samples exist or were generated before.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes

from data.ground_truth import solution_from_mask
from data.types import Sample

CORNERS = {"circle": 0, "triangle": 3, "square": 4, "rectangle": 4, "pentagon": 5,
           "hexagon": 6, "star": 10}
KINDS = tuple(CORNERS)
COLORS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215),
          "yellow": (235, 200, 20), "purple": (135, 60, 175), "orange": (245, 130, 20)}
SIZES = {"small": (0.06, 0.09), "large": (0.14, 0.20)}  # radius / short side
BACKGROUNDS = ((228, 228, 224), (222, 224, 228), (230, 226, 216), (216, 221, 216))

AREA_MARGIN = 1.3       # "largest"/"smallest": winner vs runner-up visible area ratio
POSITION_MARGIN = 0.05  # "leftmost" etc.: centroid gap, fraction of the image side
MIN_VISIBLE = 0.5       # fraction of a shape's pixels that must stay visible
RAMP = 48.0             # amplitude of the background's 2-D colour ramp (see SyntheticDataset._paint)

#: Query families of a synthetic set -> the probability that a sample asks a reasoning query.
#: "referring" and "reasoning" sets hold only that family (a scene with no such query is redrawn).
QUERY_FAMILIES = {"mixed": 0.5, "referring": 0.0, "reasoning": 1.0}

#: Query families of a multi-object synthetic set (data.multi_object.MultiObjectSynthetic) -> the
#: fraction of queries that refer to nothing. "present" sets refer to one or more shapes only, like
#: the authors' multi-object training data (whose accuracy reward gives an empty answer nothing).
MULTI_QUERY_FAMILIES = {"mixed": 0.2, "present": 0.0}


@dataclass
class Shape:
    kind: str
    color: str
    size: str
    cx: float
    cy: float
    radius: float
    angle: float  # radians

    def vertices(self) -> np.ndarray:
        """Polygon vertices [K, 2] (x, y) for every kind but the circle."""
        r, a = self.radius, self.angle
        if self.kind == "rectangle":
            hw, hh = r, 0.55 * r
            local = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
        elif self.kind == "star":
            k = np.arange(10)
            rad = np.where(k % 2 == 0, r, 0.45 * r)
            t = -np.pi / 2 + k * np.pi / 5
            local = np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)
        else:
            n = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[self.kind]
            t = -np.pi / 2 + np.arange(n) * 2 * np.pi / n
            local = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return local @ rot.T + np.array([self.cx, self.cy])  # [K, 2]

    def draw(self, canvas: np.ndarray, value) -> None:
        if self.kind == "circle":
            cv2.circle(canvas, (int(round(self.cx)), int(round(self.cy))), int(round(self.radius)),
                       value, thickness=-1, lineType=cv2.LINE_8)
        else:
            pts = np.round(self.vertices()).astype(np.int32)
            cv2.fillPoly(canvas, [pts], value, lineType=cv2.LINE_8)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "color": self.color, "size": self.size,
                "center": [round(self.cx, 1), round(self.cy, 1)],
                "radius": round(self.radius, 1)}


def _shape_ok(visible: np.ndarray, full_area: int) -> bool:
    """A shape keeps >= MIN_VISIBLE of its pixels and its visible region [H, W] has no hole."""
    if visible.sum() < MIN_VISIBLE * full_area:
        return False
    return not (binary_fill_holes(visible) != visible).any()


def _unique(matches: list[int]) -> int | None:
    return matches[0] if len(matches) == 1 else None


def _describe(shapes: list[Shape], t: int) -> list[str]:
    """Referring descriptions of shape t that no other shape matches."""
    s = shapes[t]
    out = []
    for attrs in (("kind",), ("color", "kind"), ("size", "kind"), ("size", "color", "kind"),
                  ("color",)):
        if sum(all(getattr(o, a) == getattr(s, a) for a in attrs) for o in shapes) == 1:
            words = [getattr(s, a) for a in attrs]
            out.append("the " + " ".join(words) + ("" if "kind" in attrs else " shape"))
    return out


def _extreme(values: list[float], largest: bool, margin_ratio: float) -> int | None:
    """Index of the unique max (or min) value, beating the runner-up by a factor margin_ratio."""
    order = np.argsort(values)[::-1] if largest else np.argsort(values)
    if len(values) < 2:
        return None
    best, second = values[order[0]], values[order[1]]
    if largest and best >= margin_ratio * second:
        return int(order[0])
    if not largest and second >= margin_ratio * best:
        return int(order[0])
    return None


def scene_queries(shapes: list[Shape], masks: list[np.ndarray]) -> list[tuple[str, str, int]]:
    """Every unambiguous query of a scene as (family, text, target index).

    family is "referring" or "reasoning"; masks are the visible masks [H, W] bool of the shapes.
    """
    n = len(shapes)
    h, w = masks[0].shape
    out: list[tuple[str, str, int]] = []
    for t in range(n):
        out.extend(("referring", text, t) for text in _describe(shapes, t))

    corners = [CORNERS[s.kind] for s in shapes]
    for largest, word in ((True, "most"), (False, "fewest")):
        best = max(corners) if largest else min(corners)
        t = _unique([k for k in range(n) if corners[k] == best])
        if t is not None:
            out.append(("reasoning", f"the shape with the {word} corners", t))

    areas = [float(m.sum()) for m in masks]
    for largest, word in ((True, "largest"), (False, "smallest")):
        t = _extreme(areas, largest, AREA_MARGIN)
        if t is not None:
            out.append(("reasoning", f"the {word} shape", t))
        for color in sorted({s.color for s in shapes}):
            idx = [k for k in range(n) if shapes[k].color == color]
            if len(idx) >= 2:
                t = _extreme([areas[k] for k in idx], largest, AREA_MARGIN)
                if t is not None:
                    out.append(("reasoning", f"the {word} {color} shape", idx[t]))

    ys_xs = [np.nonzero(m) for m in masks]
    centroids = [(float(xs.mean()), float(ys.mean())) for ys, xs in ys_xs]
    boxes = [(xs.min(), ys.min(), xs.max(), ys.max()) for ys, xs in ys_xs]
    for axis, side, word, largest in ((0, w, "leftmost", False), (0, w, "rightmost", True),
                                      (1, h, "topmost", False), (1, h, "bottom-most", True)):
        if n < 2:
            break
        vals = sorted(((c[axis], k) for k, c in enumerate(centroids)), reverse=largest)
        if abs(vals[0][0] - vals[1][0]) >= POSITION_MARGIN * side:
            out.append(("reasoning", f"the {word} shape", vals[0][1]))

    relations = {
        "to the left of": lambda b, a: b[2] < a[0],
        "to the right of": lambda b, a: b[0] > a[2],
        "above": lambda b, a: b[3] < a[1],
        "below": lambda b, a: b[1] > a[3],
    }
    for a in range(n):
        anchors = [d for d in _describe(shapes, a) if not d.endswith(" shape")]
        if not anchors:
            continue
        anchor = min(anchors, key=len)
        for rel, test in relations.items():
            t = _unique([k for k in range(n) if k != a and test(boxes[k], boxes[a])])
            if t is not None:
                out.append(("reasoning", f"the shape {rel} {anchor}", t))
        t = _unique([k for k in range(n) if k != a and shapes[k].color == shapes[a].color])
        if t is not None and shapes[t].kind != shapes[a].kind:
            out.append(("reasoning", f"the shape with the same colour as {anchor}", t))
    return out


#: The query templates of :func:`scene_queries`, as :func:`query_template` names them.
QUERY_TEMPLATES = (
    "kind", "colour kind", "size kind", "size colour kind", "colour",             # referring
    "corners", "largest / smallest", "largest / smallest of a colour",             # reasoning
    "extreme position", "relation", "same colour",
)
_REFERRING_WORDS = {"size": ("small", "large"), "colour": tuple(COLORS), "kind": KINDS}


def query_template(text: str) -> str:
    """The template of a synthetic query (one of :data:`QUERY_TEMPLATES`): e.g. "the small red
    circle" -> "size colour kind", "the shape to the left of the blue star" -> "relation".

    Raises ValueError for a text :func:`scene_queries` does not write.
    """
    words = text.split()
    if len(words) < 2 or words[0] != "the":
        raise ValueError(f"not a synthetic query: {text!r}")
    if text.startswith("the shape with the ") and text.endswith(" corners") and words[4] in ("most", "fewest"):
        return "corners"
    if text.startswith("the shape with the same colour as the "):
        return "same colour"
    if text.startswith(("the shape to the left of the ", "the shape to the right of the ",
                        "the shape above the ", "the shape below the ")):
        return "relation"
    if len(words) == 3 and words[2] == "shape":
        if words[1] in ("leftmost", "rightmost", "topmost", "bottom-most"):
            return "extreme position"
        if words[1] in ("largest", "smallest"):
            return "largest / smallest"
        if words[1] in COLORS:
            return "colour"
    if len(words) == 4 and words[1] in ("largest", "smallest") and words[2] in COLORS and words[3] == "shape":
        return "largest / smallest of a colour"
    attrs = []
    for word in words[1:]:
        attr = next((a for a, vocab in _REFERRING_WORDS.items() if word in vocab), None)
        if attr is None:
            raise ValueError(f"not a synthetic query: {text!r}")
        attrs.append(attr)
    if attrs in (["kind"], ["colour", "kind"], ["size", "kind"], ["size", "colour", "kind"]):
        return " ".join(attrs)
    raise ValueError(f"not a synthetic query: {text!r}")


class SyntheticDataset:
    """A SampleSource of ``num_samples`` procedurally drawn scenes (see the module docstring).

    Args:
        num_samples: number of samples (ids "synthetic-{seed}-{index}").
        seed: dataset seed; sample i depends on (seed, i) only.
        image_size: (H, W) of every image.
        size_jitter: each side is scaled by a factor drawn in [1 - j, 1 + j] (0 = fixed size).
        min_shapes, max_shapes: number of shapes drawn per scene (2-5 by default; 1 gives the
            single-shape scenes of the toy policy's curriculum).
        reasoning_fraction: probability that a sample asks a reasoning-style query (0 or 1: only
            that family; otherwise a scene without a query of the drawn family uses the other).
            :data:`QUERY_FAMILIES` names the three usual values.
    """

    def __init__(self, num_samples: int, seed: int = 0, image_size: tuple[int, int] = (224, 224),
                 size_jitter: float = 0.0, min_shapes: int = 2, max_shapes: int = 5,
                 reasoning_fraction: float = 0.5):
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if len(image_size) != 2 or min(image_size) < 64:
            raise ValueError(f"image_size must be (H, W) with both sides >= 64, got {image_size}")
        if not 0.0 <= size_jitter < 1.0:
            raise ValueError(f"size_jitter must be in [0, 1), got {size_jitter}")
        if not 1 <= min_shapes <= max_shapes:
            raise ValueError(f"need 1 <= min_shapes <= max_shapes, got {min_shapes}, {max_shapes}")
        if not 0.0 <= reasoning_fraction <= 1.0:
            raise ValueError(f"reasoning_fraction must be in [0, 1], got {reasoning_fraction}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.size_jitter = float(size_jitter)
        self.min_shapes, self.max_shapes = int(min_shapes), int(max_shapes)
        self.reasoning_fraction = float(reasoning_fraction)
        self.ids = [f"synthetic-{self.seed}-{i}" for i in range(self.num_samples)]

    def __len__(self) -> int:
        return self.num_samples

    def _random_shape(self, rng: np.random.Generator, h: int, w: int) -> Shape:
        size = str(rng.choice(list(SIZES)))
        lo, hi = SIZES[size]
        r = float(rng.uniform(lo, hi)) * min(h, w)
        return Shape(kind=str(rng.choice(KINDS)), color=str(rng.choice(list(COLORS))), size=size,
                     cx=float(rng.uniform(r, w - 1 - r)), cy=float(rng.uniform(r, h - 1 - r)),
                     radius=r, angle=float(rng.uniform(0, 2 * np.pi)))

    def _draw_scene(self, rng: np.random.Generator, h: int, w: int):
        """Place shapes one at a time; returns (shapes, label map [H, W] uint8, 0 = background)."""
        n = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        shapes: list[Shape] = []
        full_areas: list[int] = []
        label = np.zeros((h, w), dtype=np.uint8)
        for _ in range(n):
            for _try in range(30):
                s = self._random_shape(rng, h, w)
                alone = np.zeros((h, w), dtype=np.uint8)
                s.draw(alone, 1)
                if alone.sum() == 0:
                    continue
                # Only the shapes the new one covers can lose pixels or gain a hole.
                covered = np.unique(label[alone > 0])
                trial = label.copy()
                s.draw(trial, len(shapes) + 1)
                if all(_shape_ok(trial == k, full_areas[k - 1]) for k in covered if k > 0):
                    shapes.append(s)
                    full_areas.append(int(alone.sum()))
                    label = trial
                    break
        return shapes, label

    def __getitem__(self, index: int) -> Sample:
        return self.scene(index)[0]

    def scene(self, index: int) -> tuple[Sample, np.ndarray]:
        """(sample ``index``, the scene's label map [H, W] uint8): 0 = background, k = the visible
        pixels of ``sample.meta["shapes"][k - 1]`` (every shape's mask, e.g. to train a segmenter)."""
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        index %= self.num_samples
        rng = np.random.default_rng([self.seed, index])
        for _attempt in range(100):
            jh, jw = rng.uniform(1 - self.size_jitter, 1 + self.size_jitter, size=2)
            h, w = int(round(self.image_size[0] * jh)), int(round(self.image_size[1] * jw))
            shapes, label = self._draw_scene(rng, h, w)
            if len(shapes) < self.min_shapes:
                continue
            masks = [label == k + 1 for k in range(len(shapes))]
            queries = scene_queries(shapes, masks)
            want = "reasoning" if rng.random() < self.reasoning_fraction else "referring"
            pool = [q for q in queries if q[0] == want]
            if not pool and 0.0 < self.reasoning_fraction < 1.0:
                pool = queries
            if not pool:
                continue
            family, text, target = pool[int(rng.integers(len(pool)))]
            image = self._paint(rng, shapes, label)
            mask = masks[target].astype(np.uint8)
            return Sample(id=self.ids[index], image=image, query=text, mask=mask,
                          solution=solution_from_mask(mask), is_sentence=family == "reasoning",
                          meta={"target": target, "shapes": [s.as_dict() for s in shapes],
                                "family": family}), label
        raise RuntimeError(f"could not draw an unambiguous scene for sample {index} "
                           f"(seed {self.seed}) in 100 attempts")

    @staticmethod
    def _paint(rng: np.random.Generator, shapes: list[Shape], label: np.ndarray) -> np.ndarray:
        """RGB image [H, W, 3] from the label map: a light background with a gentle 2-D colour
        ramp (left to right: red up and blue down by up to +-RAMP; top to bottom: green and
        brightness up by up to +-RAMP / 2, on top of a base drawn from BACKGROUNDS), each shape's
        colour jittered by up to +-12 per channel.

        The ramp is the scene's absolute-position cue: Qwen2.5-VL's vision tower has no absolute
        position embedding (rotary only) and a toy-sized tower cannot learn one from the data it
        sees in minutes, so the background pixels around a shape tell the patch where it is."""
        h, w = label.shape
        bg = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], dtype=np.float32)
        dx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :, None]  # [1, W, 1]
        dy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None, None]  # [H, 1, 1]
        image = (bg + RAMP * dx * np.array([1.0, 0.0, -1.0], dtype=np.float32)
                 + 0.5 * RAMP * dy * np.array([0.5, 1.0, 0.5], dtype=np.float32))  # [H, W, 3]
        image = np.broadcast_to(image, (h, w, 3)).copy()
        for k, s in enumerate(shapes):
            color = np.array(COLORS[s.color], dtype=np.float32) + rng.uniform(-12, 12, size=3)
            image[label == k + 1] = color
        return np.clip(np.round(image), 0, 255).astype(np.uint8)
