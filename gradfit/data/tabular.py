"""One reader for tabular data, in row blocks: a CSV, an .npz, or a folder made by ``gradfit data convert``.

Training, evaluation, prediction, inference, ``gradfit data convert`` and ``gradfit data describe`` all read
through ``open_table``: one set of checks, one wording of every error, each naming the file, the line (CSV) or
row (.npz, converted folder) and the column. Files are opened through ``gradfit.files`` (regular files only,
lines of bounded length, .npz headers checked before anything is allocated); nothing is ever unpickled.

CSV rules: UTF-8 (a byte-order mark is skipped), ``\\n`` or ``\\r\\n`` line ends, a header naming the columns,
one record per line (a quoted field cannot span lines), blank or whitespace-only lines skipped, every feature
cell a finite number of magnitude at most ``MAX_FEATURE``. Blocks are parsed by NumPy's C parser; a line with a
quote, or longer than the csv module's field limit, is also split by the csv module so that an unclosed quote or
an over-long field is refused. No jax.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import difflib
import io
import itertools
import json
import re
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, NoReturn, Optional, Sequence

import numpy as np

from gradfit import files
from gradfit.errors import DataError

BLOCK_ROWS = 1 << 16  # rows per block at most
BLOCK_CELLS = 1 << 22  # cells per block at most: 32 MB of float64 (784 columns: 5,350 rows), so memory stays flat
MAX_FEATURE = 1e150  # largest feature magnitude: its square (a variance) cannot overflow float64
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)  # what NumPy's parser reads
NOT_FINITE = {"nan", "inf", "infinity"}
CONVERTED_FORMAT = "gradfit-table"  # meta.json's "format" in a converted folder
CONVERTED_FILES = ("X.npy", "y.npy", "meta.json")
_REFUSED_LABELS = {"c": "complex numbers", "M": "dates (datetime64)", "m": "time spans (timedelta64)",
                   "V": "structured records", "O": "Python objects"}

Locate = Callable[[int], str]  # a position (CSV line, row index) -> where it is, for a message


class Block(NamedTuple):
    """Consecutive rows of a table.

    x: (b, d) float64 (float32 where an .npz or converted folder stores float32), columns in ``Table.names`` order.
    labels: (b,) raw labels (stripped text for a CSV, the stored values otherwise), or None.
    positions: (b,) int64: CSV line numbers, or row indices.
    """

    x: np.ndarray
    labels: Optional[np.ndarray]
    positions: np.ndarray


class Labels(NamedTuple):
    """Raw labels, stored once per distinct value: ``values[codes]`` are the labels of the rows."""

    values: np.ndarray  # (k,) distinct raw labels
    codes: np.ndarray  # (n,) int index into values


class LabelIndex:
    """Raw labels coded by first appearance: a label is stored once, however many rows hold it."""

    def __init__(self):
        self.index: dict = {}

    def codes(self, labels: np.ndarray) -> np.ndarray:
        """(b,) int64 codes of a block's labels, new labels getting the next codes."""
        return np.fromiter((self.index.setdefault(v, len(self.index)) for v in labels.tolist()), np.int64,
                           len(labels))

    def values(self, text: bool) -> np.ndarray:
        """The distinct labels in code order: an object array of str (``text``: a CSV's) or a typed array."""
        if not text:
            return np.asarray(list(self.index))
        values = np.empty(len(self.index), dtype=object)
        values[:] = list(self.index)
        return values


@dataclasses.dataclass
class Table:
    """An opened table, its header checked: iterate ``blocks()`` (each call reads the file again)."""

    path: Path
    kind: str  # "csv", "npz" or "converted"
    names: list[str]  # the feature columns, in the order blocks hold them
    has_labels: bool  # blocks carry labels
    rows: Optional[int]  # known up front for .npz and converted folders; None for a CSV
    _read: Callable[[int], Iterator[Block]]
    meta: Optional[dict] = None  # a converted folder's meta.json, and its arrays, memory-mapped:
    stored_x: Optional[np.ndarray] = None  # (n, d) features in stored column order
    stored_codes: Optional[np.ndarray] = None  # (n,) int class index per row, into ``classes``
    classes: Optional[np.ndarray] = None

    checked: bool = True  # refuse non-finite cells and those beyond MAX_FEATURE (describe counts them instead)
    bytes_read: int = 0  # of a CSV, so far: what a progress bar shows

    def blocks(self, rows: Optional[int] = None) -> Iterator[Block]:
        """Blocks of at most ``rows`` rows (default: ``BLOCK_CELLS`` cells, at most ``BLOCK_ROWS`` rows)."""
        return self._read(rows or max(1, min(BLOCK_ROWS, BLOCK_CELLS // max(len(self.names), 1))))

    def locate(self, position: int) -> str:
        """Where a block position is, for a message: "data.csv:7" or "data.npz: X row 5"."""
        if self.kind == "csv":
            return f"{self.path}:{position}"
        return f"{self.path}: X row {position}" if self.kind == "npz" else f"{self.path}: row {position}"

    def no_rows(self) -> DataError:
        return DataError(f"{self.path}: the header has no data rows below it" if self.kind == "csv" else
                         f"{self.path}: X has no rows")

    def read_all(self) -> tuple[np.ndarray, Labels, np.ndarray]:
        """Every row: x (n, d), the labels (distinct values and a code per row), each row's position."""
        xs, labels, positions = [], [], []
        index = LabelIndex()
        for block in self.blocks():
            xs.append(block.x)
            positions.append(block.positions)
            if self.kind == "csv":
                labels.append(index.codes(block.labels))
            elif self.kind == "npz":
                labels.append(block.labels)
        if not xs:
            raise self.no_rows()
        x, positions = np.concatenate(xs), np.concatenate(positions)
        if self.kind == "converted":  # already distinct values and codes
            return x, Labels(self.classes, np.asarray(self.stored_codes)), positions
        if self.kind == "npz":
            return x, distinct_labels(np.concatenate(labels), str(self.path)), positions
        return x, Labels(index.values(text=True), np.concatenate(labels)), positions


def open_table(path: Path, target: Optional[str] = "target", features: Optional[Sequence[str]] = None,
               need_labels: Optional[bool] = True, target_hint: str = "set data.target") -> Table:
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


def is_converted(path: Path) -> bool:
    return Path(path).is_dir()


# ---------------------------------------------------------------------------------------------------- checks


def preview(values, limit: int = 5) -> str:
    """The first values, repr'd, for an error message: "'a', 'b', ... (12 in all)"."""
    shown = ", ".join(repr(v) for v in list(values)[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def check_label_dtype(dtype: np.dtype, origin: str) -> None:
    """Refuse labels that cannot be classes: complex numbers, dates, time spans, structured records, objects."""
    what = _REFUSED_LABELS.get(dtype.kind)
    if what is not None:
        raise DataError(f"{origin}: labels of dtype {dtype} ({what}) cannot be classes; gradfit takes labels that "
                        "are integers, booleans, real numbers or text: convert them first (for example "
                        "y.astype(str))")


def check_features(x: np.ndarray, names: Sequence[str], locate: Locate, positions: Optional[np.ndarray] = None,
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
        chunk = x[start:start + BLOCK_ROWS]
        ok = np.isfinite(chunk) if small else np.abs(chunk) <= MAX_FEATURE
        if ok.all():
            continue
        row, col = (int(i) for i in np.argwhere(~ok)[0])
        value = chunk[row, col]
        row += start
        where = f"{locate(row if positions is None else int(positions[row]))}: column '{names[col]}' is " \
                f"{float(value)!r}"
        if not np.isfinite(value):
            raise DataError(f"{where}; remove or impute missing and infinite values first")
        raise DataError(f"{where}, beyond the magnitude of {MAX_FEATURE:g} gradfit accepts for a feature (its square "
                        "must fit in float64); such a value is almost always a sentinel for a missing value: remove "
                        "or impute it")


def distinct_labels(labels: np.ndarray, origin: str) -> Labels:
    """Raw labels (n,) as their distinct values and a code per row; refused: dtypes that cannot be classes."""
    if labels.dtype.kind != "O":  # object arrays come from gradfit's own CSV reader: str, checked when encoded
        check_label_dtype(labels.dtype, origin)
    try:
        values, codes = np.unique(labels, return_inverse=True)
    except TypeError:
        raise DataError(f"{origin}: the labels mix types; use one type (text or numbers) for every label") from None
    return Labels(values, codes.reshape(-1))


def _match_columns(path: Path, present: list[str], names: Sequence[str]) -> dict[str, int]:
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


# ---------------------------------------------------------------------------------------------------- CSV


def _open_text(path: Path) -> io.TextIOWrapper:
    return io.TextIOWrapper(files.open_regular(path, "data file", DataError), encoding="utf-8-sig", newline="")


def _lines(f, path: Path) -> Iterator[str]:
    return files.bounded_lines(f, path, DataError, max_chars=files.MAX_LINE_CHARS)


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    return DataError(f"{path}: not a UTF-8 text file ({exc.reason}); save it as UTF-8 CSV")


def _csv_error(path: Path, line: int, exc: csv.Error, part: str = "row") -> DataError:
    if "field larger than field limit" in str(exc):
        return DataError(f"{path}:{line}: a field of the CSV {part} is longer than {csv.field_size_limit():,} "
                         "characters, the most gradfit reads in one cell; is a '\"' quote left open, or is this not a "
                         "CSV file?")
    return DataError(f"{path}:{line}: malformed CSV {part} ({exc}); is a '\"' quote left open? (a record must "
                     "fit on one line)")


def _split(path: Path, text: str, line: int, part: str = "row") -> list[str]:
    """One line's fields by the csv module (strict): its errors name the line."""
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error as exc:
        raise _csv_error(path, line, exc, part) from None


def _open_csv(path: Path, target: Optional[str], features: Optional[Sequence[str]], need_labels: bool,
              target_hint: str) -> Table:
    with _open_text(path) as f:
        try:
            lines = _lines(f, path)
            first = next(lines, "")
            later = first.isspace() and any(not line.isspace() for line in lines)
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc) from None
    header = [h.strip() for h in _split(path, first, 1, "header")]
    if later:
        raise DataError(f"{path}:1: the first line is blank; the header row naming the columns must come first")
    if not any(header):
        raise DataError(f"{path}: file is empty; expected a header row naming the columns")
    if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
        raise DataError(f"{path}: the header has a single column {header[0][:100]!r}; gradfit reads comma-separated "
                        "files, and this one seems to use another separator")
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
    label = index[target] if need_labels else None
    table = Table(path, "csv", names, need_labels, None, lambda rows: _csv_blocks(table, header, columns, label, rows))
    return table


def _csv_blocks(table: Table, header: list[str], columns: list[int], label: Optional[int], rows: int
                ) -> Iterator[Block]:
    path = table.path
    with _open_text(path) as f:
        lines = _lines(f, path)
        table.bytes_read = len(next(lines, "").encode())  # the header, checked by _open_csv
        line = 2  # of the first line of the next block
        while True:
            try:
                chunk = list(itertools.islice(lines, rows))
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, exc) from None
            if not chunk:
                return
            table.bytes_read += sum(map(len, chunk))  # characters: bytes for the ASCII of numbers
            kept = [(line + i, text) for i, text in enumerate(chunk) if not text.isspace()]
            line += len(chunk)
            if kept:
                numbers = np.fromiter((n for n, _ in kept), np.int64, len(kept))
                yield _parse_block(path, header, [t for _, t in kept], numbers, columns, label, table.checked)


def _parse_block(path: Path, header: list[str], texts: list[str], numbers: np.ndarray, columns: list[int],
                 label: Optional[int], checked: bool) -> Block:
    fields = _fields(path, texts, numbers, len(header), label)
    try:
        x = np.loadtxt(texts, usecols=columns, dtype=np.float64, delimiter=",", quotechar='"', comments=None, ndmin=2)
    except ValueError:
        _raise_bad_cell(path, header, texts, numbers, columns)
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


def _fields(path: Path, texts: list[str], numbers: np.ndarray, n_fields: int, label: Optional[int]) -> list[str]:
    """Check every line's field count (NumPy ignores fields outside the columns it reads: a ragged row must not
    pass) and return its label field, stripped. A line with a quote or longer than the csv module's field
    limit is split by the csv module, which refuses an unclosed quote and an over-long field."""
    limit = csv.field_size_limit()
    labels = []
    for text, number in zip(texts, numbers):
        if '"' in text or len(text) > limit:
            fields = _split(path, text, int(number))
            count, value = len(fields), fields[label] if label is not None and len(fields) == n_fields else ""
        else:  # split only as far as the label (from the nearer end): a few fields, not all
            count = text.count(",") + 1
            if label is None or count != n_fields:
                value = ""
            elif 2 * label < n_fields:
                value = text.split(",", label + 1)[label]
            else:
                value = text.rsplit(",", n_fields - label)[1]
        if count != n_fields:
            raise DataError(f"{path}:{number}: {count} fields but the header has {n_fields} columns")
        labels.append(value.strip())
    return labels


def _raise_bad_cell(path: Path, header: list[str], texts: list[str], numbers: np.ndarray,
                    columns: list[int]) -> NoReturn:
    for text, number in zip(texts, numbers):
        row = _split(path, text, int(number))
        for c in columns:
            try:
                if not PLAIN_NUMBER.fullmatch(row[c].strip()) and row[c].strip().lower().lstrip("+-") not in \
                        NOT_FINITE:  # float() also reads "1_000" and other digits, which NumPy refuses
                    raise ValueError(row[c])
            except ValueError:
                if not row[c].strip():
                    raise DataError(f"{path}:{number}: column '{header[c]}' is empty; remove or impute missing "
                                    "values first") from None
                raise DataError(f"{path}:{number}: column '{header[c]}' has non-numeric value {row[c][:100]!r}; "
                                "features must be numbers (encode categories as numbers first)") from None
    raise DataError(f"{path}: lines {numbers[0]}-{numbers[-1]}: cannot parse as CSV numbers")


# ---------------------------------------------------------------------------------------------------- .npz


def _open_npz(path: Path, features: Optional[Sequence[str]], need_labels: bool) -> Table:
    with files.open_npz(path, "data file", DataError) as (archive, members):
        if need_labels is None:
            need_labels = "y" in members
        if "X" not in members or (need_labels and "y" not in members):
            missing = [k for k in ("X", "y") if k not in members and (k == "X" or need_labels)]
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}; found {sorted(members) or 'none'}. "
                            "Save with np.savez(path, X=features, y=labels)")
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
                    raise DataError(f"{path}: y must be 1-D with one label per row of X; X has {shape[0]} rows, y "
                                    f"has shape {member.shape}")
                check_label_dtype(member.dtype, f"{path}: y")
    present = stored if stored is not None else [f"x{i}" for i in range(shape[1])]
    if features is None:
        names, order = present, None
    else:
        if stored is None and shape[1] != len(features):
            raise DataError(f"{path}: X has {shape[1]} columns but the run was trained on {len(features)} features")
        position = _match_columns(path, present, features) if stored is not None else {n: i for i, n in
                                                                                         enumerate(features)}
        names, order = list(features), [position[n] for n in features]
        if order == list(range(shape[1])):
            order = None
    table = Table(path, "npz", names, need_labels, shape[0],
                  lambda rows: _npz_blocks(path, names, order, need_labels, rows, table.checked))
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
            raise DataError(f"{path}: feature_names must be a 1-D array of strings, got shape {member.shape} dtype "
                            f"{member.dtype}")
        stored = member.read()
    if stored.dtype.kind == "S":
        return decoded(stored, f"{path}: feature_names")
    return [str(n) for n in stored.tolist()]


def decoded(values: np.ndarray, origin: str) -> list[str]:
    """Byte strings (as h5py and np.bytes_ arrays hold text) decoded as UTF-8."""
    try:
        return [bytes(v).decode("utf-8") for v in values.tolist()]
    except UnicodeDecodeError as exc:
        raise DataError(f"{origin} are byte strings that are not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "decode them first (for example y.astype(str))") from None


def _npz_blocks(path: Path, names: list[str], order: Optional[list[int]], need_labels: bool, rows: int,
                checked: bool) -> Iterator[Block]:
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
                    x = whole[start:start + count]
                else:
                    raw = member.member.read(count * shape[1] * dtype.itemsize)
                    if len(raw) != count * shape[1] * dtype.itemsize:
                        raise DataError(f"{path}: X is truncated (its header promises more rows than the file holds)")
                    x = np.frombuffer(raw, dtype).reshape(count, shape[1])
                yield _stored_block(x, order, names, None if labels is None else labels[start:start + count],
                                    start, lambda row: f"{path}: X row {row}", checked)


def _stored_block(x: np.ndarray, order: Optional[list[int]], names: list[str], labels: Optional[np.ndarray],
                  start: int, locate: Locate, checked: bool) -> Block:
    """A block of stored numbers: float32 kept, anything else float64, columns reordered, cells checked."""
    if order is not None:
        x = x[:, order]
    x = np.array(x, np.float32 if x.dtype == np.float32 else np.float64)  # a writable copy of its own
    positions = np.arange(start, start + len(x), dtype=np.int64)
    if checked:
        check_features(x, names, locate, positions)
    return Block(x, labels, positions)


# ---------------------------------------------------------------------------------------------------- converted


def _open_converted(path: Path, features: Optional[Sequence[str]], need_labels: Optional[bool]) -> Table:
    meta = read_meta(path)
    need_labels = need_labels is not False
    x = open_npy(path / "X.npy")
    y = open_npy(path / "y.npy")
    if x.ndim != 2 or x.dtype not in (np.float32, np.float64) or x.shape != (meta["rows"], len(meta["feature_names"])):
        raise DataError(f"{path}/X.npy: shape {x.shape} of {x.dtype}, but meta.json says {meta['rows']} rows x "
                        f"{len(meta['feature_names'])} float columns; convert the data again")
    if y.shape != (meta["rows"],) or y.dtype.kind not in "iu" or (len(y) and not 0 <= y.min() <= y.max() <
                                                                       len(meta["classes"])):
        raise DataError(f"{path}/y.npy: not one class index per row into meta.json's {len(meta['classes'])} "
                        "classes; convert the data again")
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
            labels = classes[y[start:start + rows]] if need_labels else None
            yield _stored_block(x[start:start + rows], order, names, labels, start, lambda row: f"{path}: row {row}",
                                table.checked)

    table = Table(path, "converted", names, need_labels, meta["rows"], blocks, meta, x, y, classes)
    return table


def class_values(classes: list) -> np.ndarray:
    """A converted folder's classes (JSON values) as an array labels can be taken from: the type they had."""
    if all(isinstance(c, bool) for c in classes):
        return np.array(classes, dtype=bool)
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return np.array(classes, dtype=np.int64)
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes):
        return np.array(classes, dtype=np.float64)
    values = np.empty(len(classes), dtype=object)
    values[:] = [str(c) for c in classes]
    return values


def read_meta(path: Path) -> dict:
    """A converted folder's meta.json, checked."""
    if not any((path / name).exists() for name in CONVERTED_FILES):
        raise DataError(f"{path}: data file is a directory, not a regular file nor a folder made by 'gradfit data "
                        "convert' (X.npy, y.npy, meta.json)")
    for name in CONVERTED_FILES:
        if not (path / name).is_file():
            raise DataError(f"{path}: a folder given as data must be one made by 'gradfit data convert' (X.npy, "
                            f"y.npy, meta.json); {name} is missing")
    text = files.read_text(path / "meta.json", "meta.json", DataError, files.MAX_JSON_BYTES)
    try:
        meta = json.loads(text)
        ok = (meta.get("format") == CONVERTED_FORMAT and isinstance(meta.get("rows"), int)
              and isinstance(meta.get("feature_names"), list) and isinstance(meta.get("classes"), list))
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise DataError(f"{path}/meta.json: not a gradfit data convert record (format, rows, feature_names, "
                        "classes); convert the data again")
    return meta


def open_npy(path: Path) -> np.ndarray:
    """A .npy file memory-mapped read-only (its pages are read when touched; object arrays refused)."""
    handle = files.open_regular(path, "data file", DataError)
    handle.close()
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable NumPy array ({exc}); convert the data again") from None
