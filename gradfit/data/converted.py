"""The folder ``gradfit data convert`` writes: ``X.npy`` (rows x features), ``y.npy`` (each row's class index)
and ``meta.json`` (format, rows, feature names, classes), checked and memory-mapped here for the readers. No jax.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gradfit import files
from gradfit.errors import DataError

CONVERTED_FORMAT = "gradfit-table"  # meta.json's "format" in a converted folder
CONVERTED_FILES = ("X.npy", "y.npy", "meta.json")


def is_converted(path: Path) -> bool:
    """Whether ``path`` names a folder (only a converted folder is data); ``read_meta`` checks it is one."""
    return Path(path).is_dir()


def read_meta(path: Path) -> dict:
    """A converted folder's meta.json, checked."""
    if not any((path / name).exists() for name in CONVERTED_FILES):
        raise DataError(
            f"{path}: data file is a directory, not a regular file nor a folder made by 'gradfit data "
            "convert' (X.npy, y.npy, meta.json)"
        )
    for name in CONVERTED_FILES:
        if not (path / name).is_file():
            raise DataError(
                f"{path}: a folder given as data must be one made by 'gradfit data convert' (X.npy, "
                f"y.npy, meta.json); {name} is missing"
            )
    text = files.read_text(path / "meta.json", "meta.json", DataError, files.MAX_JSON_BYTES)
    try:
        meta = json.loads(text)
        ok = (
            meta.get("format") == CONVERTED_FORMAT
            and isinstance(meta.get("rows"), int)
            and isinstance(meta.get("feature_names"), list)
            and isinstance(meta.get("classes"), list)
        )
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise DataError(
            f"{path}/meta.json: not a gradfit data convert record (format, rows, feature_names, "
            "classes); convert the data again"
        )
    return meta


def open_npy(path: Path) -> np.ndarray:
    """A .npy file memory-mapped read-only (its pages are read when touched; object arrays refused)."""
    handle = files.open_regular(path, "data file", DataError)
    handle.close()
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable NumPy array ({exc}); convert the data again") from None
