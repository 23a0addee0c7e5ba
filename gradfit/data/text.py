"""Text as data files hold it: CSV lines read as UTF-8 and split into fields, numbers written the way NumPy's
parser reads them, byte strings decoded as UTF-8, and values shown in a message. No jax.

A line is split by the csv module (strict) only where it holds a quote or is longer than the csv module's field
limit; otherwise at commas, as far as the label field. Every error names the file and line.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gradfit import files
from gradfit.errors import DataError

PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)  # what NumPy's parser reads
NOT_FINITE = {"nan", "inf", "infinity"}
# a missing cell (after stripping spaces): pandas' and pyarrow's spellings, and pandas' "<NA>" and "None"
NA_TEXT = frozenset(
    ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA")
    + ("NULL", "NaN", "None", "n/a", "nan", "null")
)
LINE_CHUNK_BYTES = 1 << 23  # bytes scanned at a time when counting lines


def is_number(text: str) -> bool:
    """Whether stripped ``text`` is a plain ASCII decimal number, or nan/inf: what NumPy's parser reads.

    Python's float() also reads "1_000", "١" and "１", which NumPy refuses (and labels keep as text).
    """
    text = text.strip()
    return bool(PLAIN_NUMBER.fullmatch(text)) or text.lower().lstrip("+-") in NOT_FINITE


def preview(values: Collection, limit: int = 5) -> str:
    """The first values, repr'd, for an error message: "'a', 'b', ... (12 in all)"."""
    shown = ", ".join(repr(v) for v in list(values)[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def decoded(values: np.ndarray, origin: str) -> list[str]:
    """Byte strings (as h5py and np.bytes_ arrays hold text) decoded as UTF-8."""
    try:
        return [bytes(v).decode("utf-8") for v in values.tolist()]
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{origin} are byte strings that are not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "decode them first (for example y.astype(str))"
        ) from None


# ---------------------------------------------------------------------------------------------------- CSV lines


def open_csv_text(path: Path) -> io.TextIOWrapper:
    """A data file opened as UTF-8 text (a byte-order mark skipped), line ends kept as they are."""
    return io.TextIOWrapper(files.open_regular(path, "data file", DataError), encoding="utf-8-sig", newline="")


def csv_lines(f: io.TextIOWrapper, path: Path) -> Iterator[str]:
    """The lines of an open file, each refused beyond ``files.MAX_LINE_CHARS`` characters."""
    return files.bounded_lines(f, path, DataError, max_chars=files.MAX_LINE_CHARS)


def not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    """The error for a file that is not UTF-8 text."""
    return DataError(f"{path}: not a UTF-8 text file ({exc.reason}); save it as UTF-8 CSV")


def _csv_error(path: Path, line: int, exc: csv.Error, part: str = "row") -> DataError:
    if "field larger than field limit" in str(exc):
        return DataError(
            f"{path}:{line}: a field of the CSV {part} is longer than {csv.field_size_limit():,} "
            "characters, the most gradfit reads in one cell; is a '\"' quote left open, or is this not a "
            "CSV file?"
        )
    return DataError(
        f"{path}:{line}: malformed CSV {part} ({exc}); is a '\"' quote left open? (a record must fit on one line)"
    )


def split_line(path: Path, text: str, line: int, part: str = "row") -> list[str]:
    """One line's fields by the csv module (strict): its errors name the line."""
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error as exc:
        raise _csv_error(path, line, exc, part) from None


def label_fields(path: Path, texts: list[str], numbers: np.ndarray, n_fields: int, label: int | None) -> list[str]:
    """Check every line's field count (NumPy ignores fields outside the columns it reads: a ragged row must not
    pass) and return its label field, stripped. A line with a quote or longer than the csv module's field
    limit is split by the csv module, which refuses an unclosed quote and an over-long field."""
    limit = csv.field_size_limit()
    labels = []
    for text, number in zip(texts, numbers):
        if '"' in text or len(text) > limit:
            fields = split_line(path, text, int(number))
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


class NonNumericCell(DataError):
    """A text cell in a numeric column: ``where`` (file:line), ``column`` and ``value`` say which, for a caller
    that knows the column's role better (the sample-weight column)."""

    def __init__(self, where: str, column: str, value: str, message: str):
        super().__init__(message)
        self.where, self.column, self.value = where, column, value


def raise_bad_cell(path: Path, header: list[str], texts: list[str], numbers: np.ndarray, columns: list[int]) -> None:
    """Name the first cell among the numeric ``columns`` of lines ``texts`` (numbered ``numbers``) that is neither
    a number nor missing (empty, or one of ``NA_TEXT``); return if there is none."""
    for text, number in zip(texts, numbers):
        row = split_line(path, text, int(number))
        for c in columns:
            cell = row[c].strip()
            if is_number(cell) or cell in NA_TEXT:  # float() also reads "1_000" and other digits, which are text
                continue
            raise NonNumericCell(
                f"{path}:{number}",
                header[c],
                row[c][:100],
                f"{path}:{number}: column '{header[c]}' has non-numeric value {row[c][:100]!r}; name it in "
                "data.categorical (or set data.categorical: auto) to one-hot encode it, or drop it (data.drop)",
            )


# ---------------------------------------------------------------------------------------------------- the slow path


def read_header(path: Path) -> list[str]:
    """A CSV's header: its column names, stripped; refuses an empty file, a blank first line and another
    separator than the comma."""
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
    return header


def locate_csv_error(
    path: Path, header: list[str], numeric: list[int], label: int | None, until: int | None = None
) -> None:
    """Read a CSV line by line (as far as ``until`` data rows), where pyarrow's reader stopped or a cell was
    refused, and raise a DataError naming the first problem's line and column: not UTF-8, an over-long line or
    field, a wrong field count, an unclosed quote, a missing label, a numeric cell that is not a number. Returns
    if every line is fine."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    options = pa_csv.ConvertOptions(
        column_types={f"c{c}": pa.float64() for c in numeric},
        include_columns=[f"c{c}" for c in numeric],
        null_values=sorted(NA_TEXT),
    )
    names = pa_csv.ReadOptions(column_names=[f"c{i}" for i in range(len(header))])
    with open_csv_text(path) as f:
        lines = csv_lines(f, path)
        line, seen = 2, 0  # the line of the next chunk's first line; data rows read
        try:
            next(lines, "")
            while (until is None or seen < until) and (chunk := list(itertools.islice(lines, 4096))):
                kept = [(line + i, text) for i, text in enumerate(chunk) if not text.isspace()]
                seen += len(kept)
                line += len(chunk)
                if not kept:
                    continue
                texts, numbers = [t for _, t in kept], np.array([n for n, _ in kept], np.int64)
                labels = label_fields(path, texts, numbers, len(header), label)
                if label is not None and "" in labels:
                    number = numbers[labels.index("")]
                    raise DataError(f"{path}:{number}: missing label in column '{header[label]}'")
                try:
                    pa_csv.read_csv(io.BytesIO("".join(texts).encode()), read_options=names, convert_options=options)
                except pa.ArrowException:
                    raise_bad_cell(path, header, texts, numbers, numeric)
        except UnicodeDecodeError as exc:
            raise not_utf8(path, exc) from None


class NonBlankLines(io.RawIOBase):
    """The UTF-8 bytes of a text file's lines, whitespace-only lines left out (which pyarrow would read as rows)
    and unquoted fields stripped of spaces (which pyarrow would not read as missing: "   ", " NA ")."""

    def __init__(self, f: io.TextIOWrapper, path: Path):
        self.lines = csv_lines(f, path)
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            if not self.pending:
                line = next(self.lines, None)
                if line is None:
                    break
                if line.isspace():
                    continue
                if '"' not in line:  # fields stripped, so that pyarrow reads " NA " and "   " as missing
                    end = line[len(line.rstrip("\r\n")) :]
                    line = ",".join(field.strip() for field in line[: len(line) - len(end)].split(",")) + end
                self.pending = line.encode()
            taken = min(len(view) - filled, len(self.pending))
            view[filled : filled + taken] = self.pending[:taken]
            self.pending, filled = self.pending[taken:], filled + taken
        return filled


class LineNumbers:
    """The line numbers of a CSV's data rows (the lines after the header that are not blank), in order, found by
    scanning the file's bytes with NumPy (a line holding only spaces, tabs or a carriage return is blank)."""

    def __init__(self, path: Path):
        self.path = path
        self.found = np.zeros(0, np.int64)  # numbers found and not handed out yet
        self.lines = 0  # lines scanned so far
        self.carry = b""  # the start of a line not ended yet
        self.done = False
        self.header = True
        self._offset = 0  # bytes of the file scanned so far

    def next(self, count: int) -> np.ndarray:
        """The line numbers of the next ``count`` data rows (fewer at the end of the file)."""
        with files.open_regular(self.path, "data file", DataError) as handle:
            handle.seek(self._offset)
            while len(self.found) < count and not self.done:
                chunk = handle.read(LINE_CHUNK_BYTES)
                self._offset = handle.tell()
                self._scan(self.carry + chunk, final=not chunk)
        taken, self.found = self.found[:count], self.found[count:]
        return taken

    def _scan(self, data: bytes, final: bool) -> None:
        raw = np.frombuffer(data, np.uint8)
        ends = np.flatnonzero(raw == 10)
        if final:
            self.done = True
            if len(raw) and (not len(ends) or ends[-1] != len(raw) - 1):
                ends = np.append(ends, len(raw))  # a last line without a line end
        starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else ends
        filled = np.concatenate(([0], np.cumsum((raw != 32) & (raw != 9) & (raw != 13) & (raw != 10))))
        data_rows = filled[ends] - filled[starts] > 0
        numbers = self.lines + 1 + np.flatnonzero(data_rows)
        if self.header and len(ends):  # the header is line 1, never blank
            numbers, self.header = numbers[numbers > 1], False
        self.lines += len(ends)
        self.found = np.concatenate((self.found, numbers))
        self.carry = data[ends[-1] + 1 :] if len(ends) and not final else (b"" if final else data)


def line_of_row(path: Path, row: int) -> int:
    """The line of a CSV's data row ``row`` (0-based, as pyarrow counts rows)."""
    found = LineNumbers(path).next(row + 1)
    return int(found[-1]) if len(found) > row else row + 2
