"""One front door for tabular data, read in row blocks: a CSV, Parquet or Arrow IPC / Feather file
(``gradfit.data.arrow_tables``), an .npz, a folder made by ``gradfit data convert``, or rows handed over in memory
(``gradfit.data.supplied``).

Training, evaluation, prediction, inference, ``gradfit data convert`` and ``gradfit data describe`` all read
through ``open_table``: one set of checks, one wording of every error, each naming the file, the line (CSV) or
row and the column. Files are opened through ``gradfit.files`` (regular files only, lines of bounded length, .npz
headers checked before anything is allocated); nothing is ever unpickled. Blocks hold raw rows
(``gradfit.data.blocks``): numbers, category codes, NaN for a missing cell. No jax.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import numpy as np

from gradfit import files
from gradfit.data import converted
from gradfit.data.arrow_tables import MemoryTable, Request, kind_of, open_arrow_table, open_memory_table
from gradfit.data.blocks import Block, Locate, Table, check_features, choose_columns
from gradfit.data.columns import CategoryCodes
from gradfit.data.labels import check_label_dtype, class_values
from gradfit.data.text import decoded, preview
from gradfit.errors import DataError


def open_table(
    path: Path | MemoryTable,
    target: str | None = "target",
    features: Sequence[str] | None = None,
    need_labels: bool | None = True,
    target_hint: str = "set data.target",
    *,
    drop: Collection[str] = (),
    categorical: Collection[str] | str = (),
    run_inputs: bool | None = None,
    extra_ok: bool = False,
) -> Table:
    """Open a table and check its header; nothing else is read yet.

    Args:
        path: a file or converted folder, or rows handed over in memory (``MemoryTable``).
        target: the label column (an .npz holds labels as ``y``; a converted folder knows its own).
        features: the input columns wanted, in this order (``data.features``, or a run's); None: every column
            but the target and ``drop``, in file order.
        need_labels: read the labels, and refuse a file without them; False: a label column is ignored; None:
            read the labels if the file has them.
        target_hint: how to name another label column, for the message when ``target`` is missing.
        drop: columns to ignore (``data.drop``).
        categorical: the categorical input columns, or "auto" (every column whose cells are not numbers).
        run_inputs: ``features`` are a trained run's input columns (default: whenever ``features`` is given).
        extra_ok: columns beyond ``features`` and ``drop`` are ignored rather than refused.
    """
    request = Request(
        target,
        features,
        need_labels,
        target_hint,
        drop,
        categorical,
        features is not None if run_inputs is None else run_inputs,
        extra_ok,
    )
    if isinstance(path, MemoryTable):
        return open_memory_table(path, request)
    path = Path(path)
    if path.is_dir():
        return _open_converted(path, request)
    if path.suffix.lower() == ".npz":
        return _open_npz(path, request)
    return open_arrow_table(path, kind_of(path) or "csv", request)


def _stored_categorical(path: Path, request: Request, names: list[str], stored: Collection[str]) -> list[str]:
    """The categorical columns of a stored table (their kind is fixed), checked against what is asked."""
    chosen = [n for n in names if n in stored]
    if request.categorical == "auto":
        return chosen
    asked = request.categorical_among(path, names, stored)
    numeric = [n for n in asked if n not in stored]
    if numeric:
        raise DataError(
            f"{path}: column '{numeric[0]}' is stored as numbers, but data.categorical names it; convert the data "
            f"again with --categorical {numeric[0]}"
        )
    unasked = [n for n in chosen if n not in asked]
    if unasked:
        raise DataError(
            f"{path}: column '{unasked[0]}' is categorical; name it in data.categorical (or set "
            "data.categorical: auto) to one-hot encode it, or drop it (data.drop)"
        )
    return chosen


# ---------------------------------------------------------------------------------------------------- .npz


def _open_npz(path: Path, request: Request) -> Table:
    with files.open_npz(path, "data file", DataError) as (archive, members):
        need_labels = "y" in members if request.need_labels is None else request.need_labels
        if "X" not in members or (need_labels and "y" not in members):
            missing = [k for k in ("X", "y") if k not in members and (k == "X" or need_labels)]
            raise DataError(
                f"{path}: missing array(s) {', '.join(missing)}; found {sorted(members) or 'none'}. "
                "Save with np.savez(path, X=features, y=labels)"
            )
        stored = read_feature_names(archive, path) if "feature_names" in members else None
        with _member(archive, "X", path) as member:
            shape, dtype = member.shape, member.dtype
        if len(shape) != 2 or dtype.kind not in "biuf":
            raise DataError(f"{path}: X must be a 2-D numeric array, got shape {shape} dtype {dtype}")
        if stored is not None and len(stored) != shape[1]:
            raise DataError(f"{path}: feature_names has {len(stored)} entries but X has {shape[1]} columns")
        if need_labels:
            with _member(archive, "y", path) as member:
                if len(member.shape) != 1 or member.shape[0] != shape[0]:
                    raise DataError(
                        f"{path}: y must be 1-D with one label per row of X; X has {shape[0]} rows, y "
                        f"has shape {member.shape}"
                    )
                check_label_dtype(member.dtype, f"{path}: y")
    if request.categorical != "auto" and request.categorical:
        raise DataError(
            f"{path}: an .npz holds numbers only, but data.categorical names {preview(list(request.categorical))}; "
            "give the table as a CSV, Parquet or Feather file"
        )
    features = request.features
    if stored is None and features is not None and request.run_inputs:
        if shape[1] != len(features):
            raise DataError(f"{path}: X has {shape[1]} columns but the run was trained on {len(features)} features")
        stored = list(features)
    present = stored if stored is not None else [f"x{i}" for i in range(shape[1])]
    names = choose_columns(path, present, features, request.drop, request.run_inputs, request.extra_ok)
    position = {n: i for i, n in enumerate(present)}
    order: list[int] | None = [position[n] for n in names]
    if order == list(range(shape[1])):
        order = None
    table = Table(
        path,
        "npz",
        names,
        need_labels,
        shape[0],
        lambda rows: _npz_blocks(path, names, order, need_labels, rows, table.checked),
    )
    table.target = "y" if need_labels else None
    return table


@contextlib.contextmanager
def _member(archive, name: str, path: Path) -> Iterator[files.NpyMember]:
    """One array of an open .npz (header checked, data not read yet), closed afterwards."""
    member = files.NpyMember(archive, name, path, DataError)
    try:
        yield member
    finally:
        member.close()


def read_feature_names(archive, path: Path) -> list[str]:
    """The ``feature_names`` array of an open .npz as a list of str (bytes decoded as UTF-8)."""
    with _member(archive, "feature_names", path) as member:
        if len(member.shape) != 1 or member.dtype.kind not in "USiu":
            raise DataError(
                f"{path}: feature_names must be a 1-D array of strings, got shape {member.shape} dtype {member.dtype}"
            )
        stored = member.read()
    if stored.dtype.kind == "S":
        return decoded(stored, f"{path}: feature_names")
    return [str(n) for n in stored.tolist()]


def _npz_blocks(
    path: Path, names: list[str], order: list[int] | None, need_labels: bool, rows: int, checked: bool
) -> Iterator[Block]:
    with files.open_npz(path, "data file", DataError) as (archive, _):
        labels = None
        if need_labels:
            with _member(archive, "y", path) as member:
                labels = member.read()
        with _member(archive, "X", path) as member:
            shape, dtype = member.shape, member.dtype
            whole = member.read() if member.fortran_order else None  # column-major: rows are not contiguous
            for start in range(0, shape[0], rows):
                count = min(rows, shape[0] - start)
                if whole is not None:
                    x = whole[start : start + count]
                else:
                    raw = member.member.read(count * shape[1] * dtype.itemsize)
                    if len(raw) != count * shape[1] * dtype.itemsize:
                        raise DataError(f"{path}: X is truncated (its header promises more rows than the file holds)")
                    x = np.frombuffer(raw, dtype).reshape(count, shape[1])
                yield _stored_block(
                    x,
                    order,
                    names,
                    None if labels is None else labels[start : start + count],
                    start,
                    lambda row: f"{path}: X row {row}",
                    checked,
                )


def _stored_block(
    x: np.ndarray,
    order: list[int] | None,
    names: list[str],
    labels: np.ndarray | None,
    start: int,
    locate: Locate,
    checked: bool,
) -> Block:
    """A block of stored numbers: float32 kept, anything else float64, columns reordered, cells checked."""
    if order is not None:
        x = x[:, order]
    x = np.array(x, np.float32 if x.dtype == np.float32 else np.float64)  # a writable copy of its own
    positions = np.arange(start, start + len(x), dtype=np.int64)
    if checked:
        check_features(x, names, locate, positions)
    return Block(x, labels, positions)


# ---------------------------------------------------------------------------------------------------- converted


def _open_converted(path: Path, request: Request) -> Table:
    meta = converted.read_meta(path)
    need_labels = request.need_labels is not False
    x = converted.open_npy(path / "X.npy")
    y = converted.open_npy(path / "y.npy")
    if x.ndim != 2 or x.dtype not in (np.float32, np.float64) or x.shape != (meta["rows"], len(meta["feature_names"])):
        raise DataError(
            f"{path}/X.npy: shape {x.shape} of {x.dtype}, but meta.json says {meta['rows']} rows x "
            f"{len(meta['feature_names'])} float columns; convert the data again"
        )
    if (
        y.shape != (meta["rows"],)
        or y.dtype.kind not in "iu"
        or (len(y) and not 0 <= y.min() <= y.max() < len(meta["classes"]))
    ):
        raise DataError(
            f"{path}/y.npy: not one class index per row into meta.json's {len(meta['classes'])} "
            "classes; convert the data again"
        )
    present = list(meta["feature_names"])
    dictionaries = meta.get("categorical") or {}
    names = choose_columns(path, present, request.features, request.drop, request.run_inputs, request.extra_ok)
    categorical = _stored_categorical(path, request, names, dictionaries)
    position = {n: i for i, n in enumerate(present)}
    order: list[int] | None = [position[n] for n in names]
    if order == list(range(len(present))):
        order = None
    classes = class_values(meta["classes"])

    def blocks(rows: int) -> Iterator[Block]:
        for start in range(0, len(x), rows):
            labels = classes[y[start : start + rows]] if need_labels else None
            yield _stored_block(
                x[start : start + rows], order, names, labels, start, lambda row: f"{path}: row {row}", table.checked
            )

    table = Table(path, "converted", names, need_labels, meta["rows"], blocks, meta, x, y, classes)
    table.categories = CategoryCodes({n: dictionaries[n] for n in categorical})
    table.target = meta.get("target", "target")
    return table
