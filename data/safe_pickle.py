"""Loading the refer ``refs(*.p)`` pickles without executing code from them (SPEC.md section 6).

A pickle is a small program: ``GLOBAL``/``STACK_GLOBAL`` opcodes import any callable and
``REDUCE`` calls it, so ``pickle.load`` on a downloaded file can run ``os.system``. The refs
files only hold lists, dicts, strings and numbers, which the pickle virtual machine builds with
its own opcodes without ever importing anything. :class:`RestrictedUnpickler` therefore refuses
EVERY import (``find_class``) and every persistent id: a file that needs one is not a refs file and
raises :class:`pickle.UnpicklingError` naming the refused object.

Python 2 ``str`` objects (the refs pickles were written by Python 2) are decoded as UTF-8, with
undecodable bytes replaced.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any, BinaryIO


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only what the pickle opcodes build themselves
    (dict, list, tuple, str, bytes, int, float, bool, None); any global is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"refused to load global '{module}.{name}': this pickle wants to import code, "
            f"only plain containers, strings and numbers are allowed (untrusted file)")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"refused persistent id {pid!r} (untrusted file)")


def safe_load(file: str | os.PathLike | BinaryIO | bytes) -> Any:
    """Unpickle plain data from a path, an open binary file or bytes; refuse any code."""
    if isinstance(file, (bytes, bytearray)):
        return RestrictedUnpickler(io.BytesIO(file), encoding="utf-8", errors="replace").load()
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return RestrictedUnpickler(f, encoding="utf-8", errors="replace").load()
    return RestrictedUnpickler(file, encoding="utf-8", errors="replace").load()
