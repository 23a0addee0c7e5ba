"""New data for a trained run, read in batches: CSV or .npz, columns checked against the run's features.

A batch is ``(x, labels, line_numbers)``: x (b, d) float64 with the columns in training order (matched by
name, so a file may order them differently), the raw labels (b,) or None, and each row's line number in a CSV
(row index in an .npz). Files are never loaded whole: a CSV is parsed ``batch_rows`` lines at a time by NumPy's C
parser, an .npz array is read from its zip member in slices (a column-major one, whose rows are not contiguous,
whole). The header is checked when ``read_batches`` is called, so a wrong file fails before any output. No jax.
"""

from __future__ import annotations

import collections
import csv
import difflib
import itertools
import zipfile
import zlib
from pathlib import Path
from typing import Iterator, NamedTuple, NoReturn, Optional, Sequence

import numpy as np

from gradfit.data import preview
from gradfit.errors import DataError

BATCH_ROWS = 1 << 16


class Batch(NamedTuple):
    x: np.ndarray  # (b, d) float64, training column order
    labels: Optional[np.ndarray]  # (b,) raw labels, or None
    line_numbers: np.ndarray  # (b,) CSV line numbers, or .npz row indices


def read_batches(path: Path, feature_names: Sequence[str], target: Optional[str], need_labels: bool,
                 batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """Batches of a CSV (with a header) or an .npz (arrays X, optional y and feature_names).

    Args:
        feature_names: the run's features; the file must have exactly these (any order), plus the label column.
        target: the label column of a CSV: read when ``need_labels``, otherwise ignored if present.
        need_labels: read the labels, and raise if the file has none.

    Raises:
        DataError: missing or unreadable file, mismatched columns, a malformed or non-finite cell (with its line
            and column).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    names = list(feature_names)
    if path.suffix.lower() == ".npz":
        for _ in _npz_body(path, names, need_labels, batch_rows, check_only=True):
            pass
        return _npz_body(path, names, need_labels, batch_rows)
    with _open_text(path) as f:
        _csv_columns(f, path, names, target, need_labels)
    return _csv_body(path, names, target, need_labels, batch_rows)


def _open_text(path: Path):
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def _csv_body(path: Path, names: list[str], target: Optional[str], need_labels: bool,
              batch_rows: int) -> Iterator[Batch]:
    with _open_text(path) as f:
        header, feature_cols, label_col = _csv_columns(f, path, names, target, need_labels)
        line = 2  # of the first line of the next batch
        while True:
            try:
                lines = list(itertools.islice(f, batch_rows))
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: not a UTF-8 text file ({exc.reason}); save it as UTF-8 CSV") from None
            if not lines:
                return
            numbers = [line + i for i, text in enumerate(lines) if text.strip()]  # blank lines are skipped
            rows = [text for text in lines if text.strip()]
            if rows:
                _check_field_counts(path, rows, numbers, len(header))
                yield _parse_rows(path, header, rows, np.array(numbers), feature_cols, label_col)
            line += len(lines)


def _csv_columns(f, path: Path, names: list[str], target: Optional[str], need_labels: bool):
    """Read and check the header line: (header, feature column indices in training order, label column or None).

    The label column is None unless ``need_labels``: predict ignores labels, even empty ones.
    """
    try:
        header = [h.strip() for h in next(csv.reader([f.readline()]), [])]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason}); save it as UTF-8 CSV") from None
    if not any(header):
        raise DataError(f"{path}: file is empty; expected a header row naming the columns")
    if need_labels and target not in header:
        close = difflib.get_close_matches(target or "", header, n=1)
        hint = f"did you mean '{close[0]}'? (pass --target)" if close else "pass --target NAME"
        raise DataError(f"{path}: no label column '{target}' in the header; {hint}")
    _match_columns(path, [h for h in header if h != target], names)
    index = {h: i for i, h in enumerate(header)}
    return header, [index[n] for n in names], index[target] if need_labels else None


def _match_columns(path: Path, present: list[str], names: list[str]) -> dict[str, int]:
    """{feature name: its index among ``present``}, after checking that ``present`` holds exactly ``names``."""
    counts = collections.Counter(present)
    wanted = set(names)
    duplicates = sorted(h for h, c in counts.items() if c > 1)
    missing = [n for n in names if n not in counts]
    extra = [h for h in present if h not in wanted]
    if duplicates or missing or extra:
        parts = [f"missing {preview(missing)}" if missing else "", f"unexpected {preview(extra)}" if extra else "",
                 f"duplicated {preview(duplicates)}" if duplicates else ""]
        raise DataError(f"{path}: the feature columns do not match the {len(names)} the run was trained on "
                        f"({'; '.join(p for p in parts if p)}); the run's preprocessing.json lists them")
    return {h: i for i, h in enumerate(present)}


def _check_field_counts(path: Path, rows: list[str], numbers: list[int], n_fields: int) -> None:
    """NumPy ignores extra or missing fields outside the columns it reads: a ragged row must not pass."""
    for text, number in zip(rows, numbers):
        count = len(next(csv.reader([text]))) if '"' in text else text.count(",") + 1
        if count != n_fields:
            raise DataError(f"{path}:{number}: {count} fields but the header has {n_fields} columns")


def _parse_rows(path: Path, header: list[str], rows: list[str], numbers: np.ndarray, feature_cols: list[int],
                label_col: Optional[int]) -> Batch:
    options = dict(delimiter=",", quotechar='"', comments=None, ndmin=2)
    try:
        x = np.loadtxt(rows, usecols=feature_cols, dtype=np.float64, **options)
    except ValueError:
        _raise_bad_cell(path, header, rows, numbers, feature_cols)
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        r, c = bad[0]
        raise DataError(f"{path}:{numbers[r]}: column '{header[feature_cols[c]]}' is {x[r, c]}; remove or impute "
                        "missing and infinite values first")
    labels = None
    if label_col is not None:
        labels = np.char.strip(np.loadtxt(rows, usecols=[label_col], dtype=str, **options)[:, 0])
        empty = np.flatnonzero(labels == "")
        if len(empty):
            raise DataError(f"{path}:{numbers[empty[0]]}: missing label in column '{header[label_col]}'")
    return Batch(x, labels, numbers)


def _raise_bad_cell(path: Path, header: list[str], rows: list[str], numbers: np.ndarray,
                    feature_cols: list[int]) -> NoReturn:
    for text, number in zip(rows, numbers):
        row = next(csv.reader([text]))
        for c in feature_cols:
            try:
                float(row[c])
            except ValueError:
                raise DataError(f"{path}:{number}: column '{header[c]}' has non-numeric value {row[c]!r}; "
                                "features must be numbers") from None
    raise DataError(f"{path}: lines {numbers[0]}-{numbers[-1]}: cannot parse as CSV numbers")


def _npz_body(path: Path, names: list[str], need_labels: bool, batch_rows: int,
              check_only: bool = False) -> Iterator[Batch]:
    try:
        with zipfile.ZipFile(path) as archive:
            yield from _npz_batches(archive, path, names, need_labels, batch_rows, check_only)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a valid .npz file, or a damaged one ({exc}); save it with "
                        "np.savez(path, X=..., y=...)") from None


def _npz_batches(archive: zipfile.ZipFile, path: Path, names: list[str], need_labels: bool, batch_rows: int,
                 check_only: bool) -> Iterator[Batch]:
    members = {name.removesuffix(".npy") for name in archive.namelist()}
    if "X" not in members or (need_labels and "y" not in members):
        wanted = "X and y" if need_labels else "X"
        raise DataError(f"{path}: needs array(s) {wanted}; found {sorted(members) or 'none'}")
    labels = _small_array(archive, "y", path) if need_labels else None
    stored = [str(n) for n in _small_array(archive, "feature_names", path)] if "feature_names" in members else None
    with archive.open("X.npy") as member:
        shape, fortran_order, dtype = _npy_header(member, path)
        if len(shape) != 2 or dtype.kind not in "biuf":
            raise DataError(f"{path}: X must be a 2-D numeric array, got shape {shape} dtype {dtype}")
        order = list(range(shape[1]))
        if stored is not None:
            position = _match_columns(path, stored, names)
            order = [position[n] for n in names]
        elif shape[1] != len(names):
            raise DataError(f"{path}: X has {shape[1]} columns but the run was trained on {len(names)} features")
        if labels is not None and labels.shape != (shape[0],):
            raise DataError(f"{path}: y has shape {labels.shape}; X has {shape[0]} rows")
        if check_only:
            return
        whole = None
        if fortran_order:  # column-major (X[:, cols], df.to_numpy()): rows are not contiguous, read it whole
            whole = np.frombuffer(_read_exactly(member, shape[0] * shape[1] * dtype.itemsize, path), dtype)
            whole = whole.reshape(shape, order="F")
        for start in range(0, shape[0], batch_rows):
            count = min(batch_rows, shape[0] - start)
            if whole is not None:
                x = whole[start:start + count]
            else:
                raw = _read_exactly(member, count * shape[1] * dtype.itemsize, path)
                x = np.frombuffer(raw, dtype).reshape(count, shape[1])
            x = x[:, order].astype(np.float64)
            bad = np.argwhere(~np.isfinite(x))
            if len(bad):
                raise DataError(f"{path}: X row {start + bad[0][0]}, column '{names[bad[0][1]]}' is not finite")
            yield Batch(x, None if labels is None else labels[start:start + count], np.arange(start, start + count))


def _read_exactly(member, size: int, path: Path) -> bytes:
    data = member.read(size)
    if len(data) != size:
        raise DataError(f"{path}: X is truncated (its header promises more rows than the file holds)")
    return data


def _npy_header(member, path: Path) -> tuple[tuple, bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(member)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(member)
    except ValueError as exc:
        raise DataError(f"{path}: X is not a NumPy array file ({exc})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: X is an object array; gradfit never unpickles objects")
    return shape, fortran_order, dtype


def _small_array(archive: zipfile.ZipFile, name: str, path: Path) -> np.ndarray:
    try:
        with archive.open(f"{name}.npy") as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: cannot read array {name} ({exc}); gradfit never unpickles objects") from None
