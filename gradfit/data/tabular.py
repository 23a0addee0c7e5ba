"""One reader for tabular data, in row blocks: a CSV, an .npz, or a folder made by ``gradfit data convert``.

Training, evaluation, prediction, inference, ``gradfit data convert`` and ``gradfit data describe`` all read
through ``open_table``: one set of checks, one wording of every error, each naming the file, the line (CSV) or
row (.npz, converted folder) and the column. Files are opened through ``gradfit.files`` (regular files only,
lines of bounded length, .npz headers checked before anything is allocated); nothing is ever unpickled.

CSV rules: UTF-8 (a byte-order mark is skipped), ``\\n`` or ``\\r\\n`` line ends, a header naming the columns,
one record per line (a quoted field cannot span lines), blank or whitespace-only lines skipped, every feature
cell a finite number of magnitude at most ``MAX_FEATURE``. Blocks are parsed by NumPy's C parser; a line with a
quote, or longer than the csv module's field limit, is also split by the csv module so that an unclosed quote or
an over-long field is refused (the line-level work is ``gradfit.data.text``'s). No jax.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import difflib
import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gradfit import files
from gradfit.data import converted
from gradfit.data.labels import LabelIndex, Labels, check_label_dtype, class_values, distinct_labels
from gradfit.data.text import (
    csv_lines,
    decoded,
    label_fields,
    not_utf8,
    open_csv_text,
    preview,
    raise_bad_cell,
    split_line,
)
from gradfit.errors import DataError

BLOCK_ROWS = 1 << 16  # rows per block at most
BLOCK_CELLS = 1 << 22  # cells per block at most: 32 MB of float64 (784 columns: 5,350 rows), so memory stays flat
MAX_FEATURE = 1e150  # largest feature magnitude: its square (a variance) cannot overflow float64

Locate = Callable[[int], str]  # a position (CSV line, row index) -> where it is, for a message


class Block(NamedTuple):
    """Consecutive rows of a table.

    x: (b, d) float64 (float32 where an .npz or converted folder stores float32), columns in ``Table.names`` order.
    labels: (b,) raw labels (stripped text for a CSV, the stored values otherwise), or None.
    positions: (b,) int64: CSV line numbers, or row indices.
    """

    x: np.ndarray
    labels: np.ndarray | None
    positions: np.ndarray


@dataclasses.dataclass
class Table:
    """An opened table, its header checked: iterate ``blocks()`` (each call reads the file again)."""

    path: Path
    kind: str  # "csv", "npz" or "converted"
    names: list[str]  # the feature columns, in the order blocks hold them
    has_labels: bool  # blocks carry labels
    rows: int | None  # known up front for .npz and converted folders; None for a CSV
    _read: Callable[[int], Iterator[Block]]
    meta: dict | None = None  # a converted folder's meta.json, and its arrays, memory-mapped:
    stored_x: np.ndarray | None = None  # (n, d) features in stored column order
    stored_codes: np.ndarray | None = None  # (n,) int class index per row, into ``classes``
    classes: np.ndarray | None = None

    checked: bool = True  # refuse non-finite cells and those beyond MAX_FEATURE (describe counts them instead)
    bytes_read: int = 0  # of a CSV, so far: what a progress bar shows

    def blocks(self, rows: int | None = None) -> Iterator[Block]:
        """Blocks of at most ``rows`` rows (default: ``BLOCK_CELLS`` cells, at most ``BLOCK_ROWS`` rows)."""
        return self._read(rows or max(1, min(BLOCK_ROWS, BLOCK_CELLS // max(len(self.names), 1))))

    def locate(self, position: int) -> str:
        """Where a block position is, for a message: "data.csv:7" or "data.npz: X row 5"."""
        if self.kind == "csv":
            return f"{self.path}:{position}"
        return f"{self.path}: X row {position}" if self.kind == "npz" else f"{self.path}: row {position}"

    def no_rows(self) -> DataError:
        return DataError(
            f"{self.path}: the header has no data rows below it"
            if self.kind == "csv"
            else f"{self.path}: X has no rows"
        )

    def read_all(self) -> tuple[np.ndarray, Labels, np.ndarray]:
        """Every row: x (n, d), the labels (distinct values and a code per row), each row's position."""
        xs, positions, codes, stored = [], [], [], []
        index = LabelIndex()
        for block in self.blocks():
            xs.append(block.x)
            positions.append(block.positions)
            if block.labels is None or self.kind == "converted":
                continue
            if self.kind == "csv":
                codes.append(index.codes(block.labels))
            else:
                stored.append(block.labels)
        if not xs:
            raise self.no_rows()
        x, where = np.concatenate(xs), np.concatenate(positions)
        if self.classes is not None and self.stored_codes is not None:  # a converted folder: codes already
            return x, Labels(self.classes, np.asarray(self.stored_codes)), where
        if self.kind == "npz":
            return x, distinct_labels(np.concatenate(stored), str(self.path)), where
        return x, Labels(index.values(text=True), np.concatenate(codes)), where


def open_table(
    path: Path,
    target: str | None = "target",
    features: Sequence[str] | None = None,
    need_labels: bool | None = True,
    target_hint: str = "set data.target",
) -> Table:
    """Open a CSV, an .npz or a converted folder and check its header; nothing else is read yet.

    Args:
        target: the label column of a CSV (an .npz holds labels as ``y``).
        features: the feature columns wanted, in this order (a run's); the file must hold exactly these, in any
            order, besides the labels. None: every column but the target, in file order.
        need_labels: read the labels, and refuse a file without them; False: a label column is ignored; None:
            read the labels if the file has them.
        target_hint: how to name another label column, for the message when ``target`` is missing.
    """
    path = Path(path)
    if path.is_dir():
        return _open_converted(path, features, need_labels)
    if path.suffix.lower() == ".npz":
        return _open_npz(path, features, need_labels)
    return _open_csv(path, target, features, need_labels, target_hint)


# ---------------------------------------------------------------------------------------------------- checks


def check_features(
    x: np.ndarray,
    names: Sequence[str],
    locate: Locate,
    positions: np.ndarray | None = None,
) -> None:
    """Every cell of ``x`` (n, d) must be finite and at most ``MAX_FEATURE`` (1e150) in magnitude.

    The bound keeps a column's variance (a mean of squares) finite in float64; a value beyond it is almost
    always a sentinel for a missing value (-9.99e307, 1e300). Raises DataError naming the first bad cell (in row
    order) by ``locate(positions[row])`` (``locate(row)`` without positions) and column name.
    """
    if x.dtype.kind in "biu":  # integers are at most 1.8e19
        return
    small = x.dtype.itemsize < 8  # float16/float32 cannot exceed the bound: only check they are finite
    for start in range(0, len(x), BLOCK_ROWS):
        chunk = x[start : start + BLOCK_ROWS]
        ok = np.isfinite(chunk) if small else np.abs(chunk) <= MAX_FEATURE
        if ok.all():
            continue
        row, col = (int(i) for i in np.argwhere(~ok)[0])
        value = chunk[row, col]
        row += start
        where = (
            f"{locate(row if positions is None else int(positions[row]))}: column '{names[col]}' is {float(value)!r}"
        )
        if not np.isfinite(value):
            raise DataError(f"{where}; remove or impute missing and infinite values first")
        raise DataError(
            f"{where}, beyond the magnitude of {MAX_FEATURE:g} gradfit accepts for a feature (its square "
            "must fit in float64); such a value is almost always a sentinel for a missing value: remove "
            "or impute it"
        )


def _match_columns(path: Path, present: list[str], names: Sequence[str]) -> dict[str, int]:
    """{feature name: its index among ``present``}, after checking that ``present`` holds exactly ``names``."""
    counts = collections.Counter(present)
    wanted = set(names)
    duplicates = sorted(h for h, c in counts.items() if c > 1)
    missing = [n for n in names if n not in counts]
    extra = [h for h in present if h not in wanted]
    if duplicates or missing or extra:
        parts = [
            f"missing {preview(missing)}" if missing else "",
            f"unexpected {preview(extra)}" if extra else "",
            f"duplicated {preview(duplicates)}" if duplicates else "",
        ]
        raise DataError(
            f"{path}: the feature columns do not match the {len(names)} the run was trained on "
            f"({'; '.join(p for p in parts if p)}); the run's preprocessing.json lists them"
        )
    return {h: i for i, h in enumerate(present)}


# ---------------------------------------------------------------------------------------------------- CSV


def _open_csv(
    path: Path, target: str | None, features: Sequence[str] | None, need_labels: bool | None, target_hint: str
) -> Table:
    with open_csv_text(path) as f:
        try:
            lines = csv_lines(f, path)
            first = next(lines, "")
            later = first.isspace() and any(not line.isspace() for line in lines)
        except UnicodeDecodeError as exc:
            raise not_utf8(path, exc) from None
    header = [h.strip() for h in split_line(path, first, 1, "header")]
    if later:
        raise DataError(f"{path}:1: the first line is blank; the header row naming the columns must come first")
    if not any(header):
        raise DataError(f"{path}: file is empty; expected a header row naming the columns")
    if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
        raise DataError(
            f"{path}: the header has a single column {header[0][:100]!r}; gradfit reads comma-separated "
            "files, and this one seems to use another separator"
        )
    if need_labels is None:
        need_labels = target in header
    if need_labels and target not in header:
        close = difflib.get_close_matches(target or "", header, n=1)
        hint = f"did you mean '{close[0]}'? ({target_hint})" if close else f"{target_hint} to the label column"
        raise DataError(f"{path}: no label column '{target}' in the header; {hint}")
    present = [h for h in header if h != target]
    if features is None:
        duplicates = sorted(h for h, n in collections.Counter(header).items() if n > 1)
        if duplicates:
            raise DataError(f"{path}: duplicate column name(s) in the header: {preview(duplicates)}")
        if not present:
            raise DataError(f"{path}: the only column is the target '{target}'; there are no features")
        names = present
    else:
        _match_columns(path, present, features)
        names = list(features)
    index = {h: i for i, h in enumerate(header)}
    columns = [index[n] for n in names]
    label = index[target] if need_labels and target is not None else None
    table = Table(path, "csv", names, need_labels, None, lambda rows: _csv_blocks(table, header, columns, label, rows))
    return table


def _csv_blocks(table: Table, header: list[str], columns: list[int], label: int | None, rows: int) -> Iterator[Block]:
    path = table.path
    with open_csv_text(path) as f:
        lines = csv_lines(f, path)
        table.bytes_read = len(next(lines, "").encode())  # the header, checked by _open_csv
        line = 2  # of the first line of the next block
        while True:
            try:
                chunk = list(itertools.islice(lines, rows))
            except UnicodeDecodeError as exc:
                raise not_utf8(path, exc) from None
            if not chunk:
                return
            table.bytes_read += sum(map(len, chunk))  # characters: bytes for the ASCII of numbers
            kept = [(line + i, text) for i, text in enumerate(chunk) if not text.isspace()]
            line += len(chunk)
            if kept:
                numbers = np.fromiter((n for n, _ in kept), np.int64, len(kept))
                yield _parse_block(path, header, [t for _, t in kept], numbers, columns, label, table.checked)


def _parse_block(
    path: Path,
    header: list[str],
    texts: list[str],
    numbers: np.ndarray,
    columns: list[int],
    label: int | None,
    checked: bool,
) -> Block:
    fields = label_fields(path, texts, numbers, len(header), label)
    try:
        x = np.loadtxt(texts, usecols=columns, dtype=np.float64, delimiter=",", quotechar='"', comments=None, ndmin=2)
    except ValueError:
        raise_bad_cell(path, header, texts, numbers, columns)
    if checked:
        check_features(x, [header[c] for c in columns], lambda line: f"{path}:{line}", numbers)
    labels = None
    if label is not None:
        # Python str objects: a 'U' array would take rows x the longest label x 4 bytes
        labels = np.empty(len(fields), dtype=object)
        labels[:] = fields
        empty = np.flatnonzero(labels == "")
        if len(empty):
            raise DataError(f"{path}:{numbers[empty[0]]}: missing label in column '{header[label]}'")
    return Block(x, labels, numbers)


# ---------------------------------------------------------------------------------------------------- .npz


def _open_npz(path: Path, features: Sequence[str] | None, need_labels: bool | None) -> Table:
    with files.open_npz(path, "data file", DataError) as (archive, members):
        if need_labels is None:
            need_labels = "y" in members
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
    present = stored if stored is not None else [f"x{i}" for i in range(shape[1])]
    if features is None:
        names, order = present, None
    else:
        if stored is None and shape[1] != len(features):
            raise DataError(f"{path}: X has {shape[1]} columns but the run was trained on {len(features)} features")
        position = (
            _match_columns(path, present, features) if stored is not None else {n: i for i, n in enumerate(features)}
        )
        names, order = list(features), [position[n] for n in features]
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


def _open_converted(path: Path, features: Sequence[str] | None, need_labels: bool | None) -> Table:
    meta = converted.read_meta(path)
    need_labels = need_labels is not False
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
    order = None
    names = present
    if features is not None:
        position = _match_columns(path, present, features)
        names = list(features)
        order = [position[n] for n in features]
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
    return table
