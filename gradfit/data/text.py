"""Text as data files hold it: CSV lines read as UTF-8 and split into fields, numbers written the way NumPy's
parser reads them, byte strings decoded as UTF-8, and values shown in a message. No jax.

A line is split by the csv module (strict) only where it holds a quote or is longer than the csv module's field
limit; otherwise at commas, as far as the label field. Every error names the file and line.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np

from gradfit import files
from gradfit.errors import DataError

PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)  # what NumPy's parser reads
NOT_FINITE = {"nan", "inf", "infinity"}


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


def raise_bad_cell(
    path: Path, header: list[str], texts: list[str], numbers: np.ndarray, columns: list[int]
) -> NoReturn:
    """Name the first cell among ``columns`` of lines ``texts`` (numbered ``numbers``) that is not a number."""
    for text, number in zip(texts, numbers):
        row = split_line(path, text, int(number))
        for c in columns:
            cell = row[c].strip()
            if is_number(cell):  # float() also reads "1_000" and other digits, which NumPy refuses
                continue
            if not cell:
                raise DataError(
                    f"{path}:{number}: column '{header[c]}' is empty; remove or impute missing values first"
                )
            raise DataError(
                f"{path}:{number}: column '{header[c]}' has non-numeric value {row[c][:100]!r}; "
                "features must be numbers (encode categories as numbers first)"
            )
    raise DataError(f"{path}: lines {numbers[0]}-{numbers[-1]}: cannot parse as CSV numbers")
