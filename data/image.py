"""Image decoding and the 840 x 840 resize of SPEC.md section 1.

- :func:`load_image`: a path or encoded bytes -> uint8 RGB [H, W, 3]. The stored pixel grid is
  used as is (no EXIF rotation), since the datasets' masks and polygons are drawn on that grid.
  16-bit grayscale images (PNG, TIFF) are scaled from their 0..65535 range to 0..255
  (v -> round(v / 257)), not clipped at 255 as PIL's own conversion does; 32-bit integer and
  float images, whose range the file does not state, are refused.
- :func:`resize_to_frame`: [H, W, 3] -> [840, 840, 3], bilinear (PIL's BILINEAR filter, which the
  authors' PIL-based preparation uses), aspect ratio NOT kept.
- :func:`encode_image`: uint8 RGB -> PNG / JPEG bytes (for the parquet and LISA writers).
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from data.types import FRAME


def load_image(path_or_bytes, name: str | None = None) -> np.ndarray:
    """Decode an image file or encoded bytes to uint8 RGB [H, W, 3].

    Args:
        path_or_bytes: a path, or the encoded bytes of a PNG/JPEG/... file.
        name: how to call the image in error messages (defaults to the path, or "<bytes>").

    Raises:
        ValueError: naming the file, when it is missing or cannot be decoded.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        label = name or f"<{len(path_or_bytes)} bytes>"
        source = io.BytesIO(bytes(path_or_bytes))
    elif isinstance(path_or_bytes, (str, os.PathLike)):
        label = name or os.fspath(path_or_bytes)
        source = os.fspath(path_or_bytes)
    else:
        raise ValueError(f"expected a path or bytes, got {type(path_or_bytes).__name__}")
    try:
        with Image.open(source) as im:
            if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
                # 16-bit grayscale (PIL opens a 16-bit PNG as "I;16", or "I" in older versions)
                gray = np.asarray(im, dtype=np.float64)  # [H, W], forces the full decode
                gray8 = np.rint(np.clip(gray, 0, 65535) / 257.0).astype(np.uint8)
                return np.repeat(gray8[:, :, None], 3, axis=2)  # [H, W, 3]
            if im.mode in ("I", "F"):
                raise ValueError(f"unsupported image {label}: {'32-bit float' if im.mode == 'F' else '32-bit integer'} "
                                 f"pixels have no known range; convert it to an 8-bit RGB image")
            rgb = im.convert("RGB")  # forces the full decode: truncated files fail here
    except FileNotFoundError as e:
        raise ValueError(f"image file not found: {label}") from e
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        raise ValueError(f"unreadable image {label}: {e}") from e
    return np.asarray(rgb, dtype=np.uint8).copy()  # [H, W, 3]


def resize_to_frame(image: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """Bilinear resize of uint8 RGB [H, W, 3] to [frame, frame, 3], aspect ratio not kept."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
    if image.shape[:2] == (frame, frame):
        return image
    resized = Image.fromarray(image).resize((frame, frame), Image.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def encode_image(image: np.ndarray, fmt: str = "PNG", quality: int = 95) -> bytes:
    """uint8 RGB [H, W, 3] -> encoded bytes ("PNG" lossless or "JPEG")."""
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt not in ("PNG", "JPEG"):
        raise ValueError(f"image format must be PNG or JPEG, got {fmt!r}")
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format=fmt, **kwargs)
    return buf.getvalue()
