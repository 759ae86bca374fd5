"""Checks of the output paths users name (run directories, output files), made before any heavy
work so that a mistake costs seconds, not a whole run. Each raises ValueError naming the option,
the path and what to do.

Writability is tested by creating (and removing) a probe file in the nearest existing folder, the
only test that holds for every user and filesystem (``os.access`` says yes to root on a read-only
mount).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest existing ancestor (``path`` is absolute: "/" exists)."""
    return next(candidate for candidate in (path, *path.parents) if candidate.exists())


def _check_writable_folder(folder: Path, option: str, path: Path) -> None:
    if not folder.is_dir():
        raise ValueError(f"{option} {str(path)!r}: {str(folder)!r} is not a directory; pass a path under a "
                         f"directory")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"{option} {str(path)!r}: cannot write in {str(folder)!r} ({err.strerror}); pass a "
                         f"writable location") from None


def check_output_dir(path: str | os.PathLike, option: str) -> None:
    """``path`` is a writable directory, or can be created as one (its nearest existing ancestor is
    a writable directory). ``option`` is how the user named it (``--output-dir``)."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {str(path)!r} exists and is not a directory; pass a directory")
    _check_writable_folder(_nearest_existing(path), option, path)


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """``path`` can be written as a file: it is not a directory, and its folder is (or can be
    created as) a writable directory."""
    path = Path(path).absolute()
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a directory; pass a file path, e.g. "
                         f"{str(path / 'train.parquet')!r}")
    _check_writable_folder(_nearest_existing(path.parent), option, path)
