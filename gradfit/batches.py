"""New data for a trained run, read in batches: CSV or .npz, columns checked against the run's features.

A batch is ``(x, labels, line_numbers)``: x (b, d) float64 with the columns in training order (matched by
name, so a file may order them differently), the raw labels (b,) or None, and each row's line number in a CSV
(row index in an .npz). Files are never loaded whole: a CSV is parsed ``batch_rows`` lines at a time by NumPy's C
parser, an .npz array is read from its zip member in slices (a column-major one, whose rows are not contiguous,
whole). The header is checked when ``read_batches`` is called, so a wrong file fails before any output.

Files are opened through ``gradfit.files``, as training opens them: only regular files (a FIFO or a device is
refused, never read), CSV lines of at most ``files.MAX_LINE_CHARS`` characters, .npz headers checked against
the archive before anything is allocated. Cells are checked as training checks them (``data.check_features``:
finite, at most 1e150 in magnitude). No jax.
"""

from __future__ import annotations

import collections
import csv
import difflib
import io
import itertools
from pathlib import Path
from typing import Iterator, NamedTuple, NoReturn, Optional, Sequence

import numpy as np

from gradfit import files
from gradfit.data import check_features, check_label_dtype, csv_error, npy_member, preview, read_feature_names
from gradfit.errors import DataError

BATCH_ROWS = 1 << 16


class Batch(NamedTuple):
    x: np.ndarray  # (b, d) float64, training column order
    labels: Optional[np.ndarray]  # (b,) raw labels (stripped text for a CSV), or None
    line_numbers: np.ndarray  # (b,) CSV line numbers, or .npz row indices


def read_batches(path: Path, feature_names: Sequence[str], target: Optional[str], need_labels: bool,
                 batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """Batches of a CSV (with a header) or an .npz (arrays X, optional y and feature_names).

    Args:
        feature_names: the run's features; the file must have exactly these (any order), plus the label column.
        target: the label column of a CSV: read when ``need_labels``, otherwise ignored if present.
        need_labels: read the labels, and raise if the file has none.

    Raises:
        DataError: a missing file or one that is not a regular file, mismatched columns, a malformed, overlong,
            non-finite or out-of-range cell (with its line and column).
    """
    path = Path(path)
    names = list(feature_names)
    if is_npz(path):
        for _ in _npz_body(path, names, need_labels, batch_rows, check_only=True):
            pass
        return _npz_body(path, names, need_labels, batch_rows)
    with _open_text(path) as f:
        _csv_columns(_lines(f, path), path, names, target, need_labels)
    return _csv_body(path, names, target, need_labels, batch_rows)


def is_npz(path: Path) -> bool:
    """Whether ``read_batches`` reads ``path`` as an .npz (its positions are rows) rather than a CSV (lines)."""
    return Path(path).suffix.lower() == ".npz"


def batch_position(path: Path, position: int) -> str:
    """Where a batch row is, for a message: "new.csv:7" (its line) or "new.npz: X row 5"."""
    return f"{path}: X row {position}" if is_npz(path) else f"{path}:{position}"


def _open_text(path: Path) -> io.TextIOWrapper:
    return io.TextIOWrapper(files.open_regular(path, "data file", DataError), encoding="utf-8-sig", newline="")


def _lines(f, path: Path) -> Iterator[str]:
    return files.bounded_lines(f, path, DataError, max_chars=files.MAX_LINE_CHARS)


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    return DataError(f"{path}: not a UTF-8 text file ({exc.reason}); save it as UTF-8 CSV")


def _csv_body(path: Path, names: list[str], target: Optional[str], need_labels: bool,
              batch_rows: int) -> Iterator[Batch]:
    with _open_text(path) as f:
        lines = _lines(f, path)
        header, feature_cols, label_col = _csv_columns(lines, path, names, target, need_labels)
        line = 2  # of the first line of the next batch
        while True:
            try:
                chunk = list(itertools.islice(lines, batch_rows))
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, exc) from None
            if not chunk:
                return
            numbers = [line + i for i, text in enumerate(chunk) if text.strip()]  # blank lines are skipped
            rows = [text for text in chunk if text.strip()]
            if rows:
                _check_field_counts(path, rows, numbers, len(header))
                yield _parse_rows(path, header, rows, np.array(numbers), feature_cols, label_col)
            line += len(chunk)


def _csv_columns(lines: Iterator[str], path: Path, names: list[str], target: Optional[str], need_labels: bool):
    """Read and check the header line: (header, feature column indices in training order, label column or None).

    The label column is None unless ``need_labels``: predict ignores labels, even empty ones.
    """
    try:
        first = next(lines, "")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    try:
        header = [h.strip() for h in next(csv.reader([first]), [])]
    except csv.Error as exc:
        raise csv_error(path, 1, exc, "header") from None
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


def _split(path: Path, text: str, number: int) -> list[str]:
    """One line's fields by the csv module; its errors (a field over its limit...) name the line."""
    try:
        return next(csv.reader([text]))
    except csv.Error as exc:
        raise csv_error(path, number, exc) from None


def _check_field_counts(path: Path, rows: list[str], numbers: list[int], n_fields: int) -> None:
    """NumPy ignores extra or missing fields outside the columns it reads: a ragged row must not pass.

    A line with a quote, or longer than the csv module's field limit, is split by the csv module, so a field
    over that limit is refused as training refuses it.
    """
    limit = csv.field_size_limit()
    for text, number in zip(rows, numbers):
        if '"' in text or len(text) > limit:
            count = len(_split(path, text, number))
        else:
            count = text.count(",") + 1
        if count != n_fields:
            raise DataError(f"{path}:{number}: {count} fields but the header has {n_fields} columns")


def _parse_rows(path: Path, header: list[str], rows: list[str], numbers: np.ndarray, feature_cols: list[int],
                label_col: Optional[int]) -> Batch:
    options = dict(delimiter=",", quotechar='"', comments=None, ndmin=2)
    try:
        x = np.loadtxt(rows, usecols=feature_cols, dtype=np.float64, **options)
    except ValueError:
        _raise_bad_cell(path, header, rows, numbers, feature_cols)
    check_features(x, [header[c] for c in feature_cols], lambda row: batch_position(path, numbers[row]))
    labels = None
    if label_col is not None:
        # Python str objects: a 'U' array would take rows x the longest label x 4 bytes
        raw = np.loadtxt(rows, usecols=[label_col], dtype=object, **options)[:, 0]
        labels = np.empty(len(raw), dtype=object)
        labels[:] = [label.strip() for label in raw]
        empty = np.flatnonzero(labels == "")
        if len(empty):
            raise DataError(f"{path}:{numbers[empty[0]]}: missing label in column '{header[label_col]}'")
    return Batch(x, labels, numbers)


def _raise_bad_cell(path: Path, header: list[str], rows: list[str], numbers: np.ndarray,
                    feature_cols: list[int]) -> NoReturn:
    for text, number in zip(rows, numbers):
        row = _split(path, text, number)
        for c in feature_cols:
            try:
                float(row[c])
            except ValueError:
                raise DataError(f"{path}:{number}: column '{header[c]}' has non-numeric value {row[c][:100]!r}; "
                                "features must be numbers") from None
    raise DataError(f"{path}: lines {numbers[0]}-{numbers[-1]}: cannot parse as CSV numbers")


def _npz_body(path: Path, names: list[str], need_labels: bool, batch_rows: int,
              check_only: bool = False) -> Iterator[Batch]:
    with files.open_npz(path, "data file", DataError) as (archive, members):
        yield from _npz_batches(archive, members, path, names, need_labels, batch_rows, check_only)


def _npz_batches(archive, members: list[str], path: Path, names: list[str], need_labels: bool, batch_rows: int,
                 check_only: bool) -> Iterator[Batch]:
    if "X" not in members or (need_labels and "y" not in members):
        wanted = "X and y" if need_labels else "X"
        raise DataError(f"{path}: needs array(s) {wanted}; found {sorted(members) or 'none'}")
    stored = read_feature_names(archive, path) if "feature_names" in members else None
    with npy_member(archive, "X", path) as member:
        shape, dtype = member.shape, member.dtype
        if len(shape) != 2 or dtype.kind not in "biuf":
            raise DataError(f"{path}: X must be a 2-D numeric array, got shape {shape} dtype {dtype}")
        if stored is None and shape[1] != len(names):  # before anything sized by the header is made
            raise DataError(f"{path}: X has {shape[1]} columns but the run was trained on {len(names)} features")
        order = list(range(shape[1]))
        if stored is not None:
            position = _match_columns(path, stored, names)
            order = [position[n] for n in names]
        labels = _npz_labels(archive, path, shape[0], check_only) if need_labels else None
        if check_only:
            return
        whole = member.read() if member.fortran_order else None  # column-major: rows are not contiguous
        for start in range(0, shape[0], batch_rows):
            count = min(batch_rows, shape[0] - start)
            if whole is not None:
                x = whole[start:start + count]
            else:
                raw = _read_exactly(member.member, count * shape[1] * dtype.itemsize, path)
                x = np.frombuffer(raw, dtype).reshape(count, shape[1])
            x = x[:, order].astype(np.float64)
            check_features(x, names, lambda row, start=start: batch_position(path, start + row))
            yield Batch(x, None if labels is None else labels[start:start + count], np.arange(start, start + count))


def _npz_labels(archive, path: Path, rows: int, check_only: bool) -> Optional[np.ndarray]:
    """The y array (checked: one label per row of X, a dtype labels can have); None when only checking."""
    with npy_member(archive, "y", path) as member:
        if tuple(member.shape) != (rows,):
            raise DataError(f"{path}: y has shape {member.shape}; X has {rows} rows")
        check_label_dtype(member.dtype, f"{path}: y")
        return None if check_only else member.read()


def _read_exactly(member, size: int, path: Path) -> bytes:
    data = member.read(size)
    if len(data) != size:
        raise DataError(f"{path}: X is truncated (its header promises more rows than the file holds)")
    return data
