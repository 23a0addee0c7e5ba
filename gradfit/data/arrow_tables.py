"""CSV, Parquet and Arrow IPC / Feather files read by pyarrow, a record batch at a time, into raw blocks. No jax.

CSV rules: UTF-8 (a byte-order mark is skipped), ``\\n`` or ``\\r\\n`` line ends, a header naming the columns,
one record per line (a quoted field cannot span lines), blank or whitespace-only lines skipped. A numeric cell is
a number (spaces around it allowed) or missing: empty or one of ``text.NA_TEXT``; a categorical cell is text
(stripped), missing when empty or NA. Every present number must be finite and at most ``MAX_FEATURE``.

pyarrow's streaming reader parses the clean file (``open_csv``, every column's type given, so nothing is
guessed from the first rows). When it stops on a problem, the slow path (``gradfit.data.text``) reads the lines
again to name the line and column in gradfit's words; if the slow path finds nothing wrong (whitespace-only
lines, which pyarrow does not skip), the rest of the file is read through a filter that drops them. Row positions
are counted by pyarrow and turned into line numbers only where a message or ``predict`` needs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq

from gradfit import files
from gradfit.data import text
from gradfit.data.blocks import Block, Table, check_features, choose_columns, column_hint
from gradfit.data.columns import CategoryCodes, floats, integers
from gradfit.data.labels import check_label_dtype
from gradfit.errors import DataError

CSV_BLOCK_BYTES = 1 << 20  # text parsed per batch: measured fastest of 1, 4 and 16 MB on 200,000 x 50
ARROW_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "feather",
    ".feather": "feather",
    ".ipc": "feather",
}


def kind_of(path: Path) -> str | None:
    """ "parquet" or "feather" for a file pyarrow reads by its suffix, else None."""
    return ARROW_SUFFIXES.get(Path(path).suffix.lower())


@dataclasses.dataclass(frozen=True)
class Request:
    """Which columns to read and how (the arguments of ``tabular.open_table``)."""

    target: str | None
    features: Sequence[str] | None
    need_labels: bool | None
    target_hint: str
    drop: Collection[str]
    categorical: Collection[str] | str
    run_inputs: bool
    extra_ok: bool

    def labels(self, path: Path, columns: list[str]) -> bool:
        """Whether to read labels; refuses a table without the label column it needs, or with it twice."""
        need = self.need_labels if self.need_labels is not None else self.target in columns
        if need and columns.count(self.target or "") > 1:
            raise DataError(f"{path}: duplicate column name(s) in the header: '{self.target}'")
        if need and self.target not in columns:
            hint = column_hint(self.target or "", columns)
            raise DataError(f"{path}: no label column '{self.target}' ({self.target_hint}); {hint}")
        return bool(need)

    def inputs(self, path: Path, columns: list[str]) -> list[str]:
        present = [c for c in columns if c != self.target]
        if self.features is None and self.run_inputs is False and len(present) == 0:
            raise DataError(f"{path}: the only column is the target '{self.target}'; there are no features")
        return choose_columns(path, present, self.features, self.drop, self.run_inputs, self.extra_ok)

    def categorical_among(self, path: Path, names: list[str], text_columns: Collection[str]) -> list[str]:
        """The categorical input columns: those named (each must be an input), or with auto the text ones."""
        if self.categorical == "auto":
            return [n for n in names if n in text_columns]
        unknown = [n for n in self.categorical if n not in names]
        if unknown:
            raise DataError(
                f"{path}: data.categorical names {text.preview(unknown)}, not a feature column; "
                f"{column_hint(unknown[0], names)}"
            )
        return [n for n in names if n in self.categorical]


def open_arrow_table(path: Path, kind: str, request: Request) -> Table:
    """Open a CSV ("csv"), Parquet or Arrow IPC / Feather ("parquet", "feather") file and check its header."""
    if kind == "csv":
        return _open_csv(path, request)
    return _open_columnar(path, kind, request, _columnar_reader(path, kind))


class MemoryTable(NamedTuple):
    """Rows handed over in memory (``gradfit.fit(config, X=..., y=...)``) as one Arrow table, and how a message
    names it ("X")."""

    table: pa.Table
    origin: str


def open_memory_table(given: MemoryTable, request: Request) -> Table:
    """An in-memory table, read as a Parquet file is read: the same checks, and messages naming ``given.origin``
    and the row."""
    table = given.table

    def batches(columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
        return iter(table.select(columns).to_batches(max_chunksize=rows))

    return _open_columnar(Path(given.origin), "memory", request, (table.schema, table.num_rows, batches))


# ---------------------------------------------------------------------------------------------------- CSV


def _open_csv(path: Path, request: Request) -> Table:
    header = text.read_header(path)
    has_labels = request.labels(path, header)
    names = request.inputs(path, header)
    inferred = _text_columns(path, header) if request.categorical == "auto" else set()
    categorical = request.categorical_among(path, names, inferred)
    label = header.index(request.target) if has_labels and request.target is not None else None
    columns = [header.index(n) for n in names]
    internal = [f"c{i}" for i in range(len(header))]  # header names may repeat among columns not read
    types = {internal[c]: pa.string() if header[c] in categorical else pa.float64() for c in columns}
    if label is not None:
        types[internal[label]] = pa.string()
    table = Table(
        path, "csv", names, has_labels, None, lambda rows: _csv_blocks(table, header, internal, types, label, rows)
    )
    table.categories = CategoryCodes({n: [] for n in categorical})
    table.target = request.target if has_labels or request.target in header else None
    return table


def _text_columns(path: Path, header: list[str]) -> set[str]:
    """The columns pyarrow reads as something other than numbers in the file's first block (for auto)."""
    internal = [f"c{i}" for i in range(len(header))]
    try:
        with files.open_regular(path, "data file", DataError) as handle:
            reader = pa_csv.open_csv(pa.PythonFile(handle, mode="r"), **_csv_options(internal, None, CSV_BLOCK_BYTES))
            schema = reader.schema
    except pa.ArrowException:
        return set()  # the reading pass names the problem
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_null, pa.types.is_decimal)
    return {header[i] for i, f in enumerate(schema) if not any(test(f.type) for test in numeric)}


def _csv_options(internal: list[str], types: dict | None, block_bytes: int) -> dict[str, Any]:
    return {
        "read_options": pa_csv.ReadOptions(column_names=internal, skip_rows=1, block_size=block_bytes),
        "parse_options": pa_csv.ParseOptions(newlines_in_values=False),
        "convert_options": pa_csv.ConvertOptions(
            column_types=types,
            null_values=sorted(text.NA_TEXT),
            include_columns=list(types) if types else None,
            strings_can_be_null=False,  # categorical text: NA spellings are found by CategoryCodes; labels: kept
            quoted_strings_can_be_null=False,
        ),
    }


def _csv_blocks(
    table: Table, header: list[str], internal: list[str], types: dict, label: int | None, rows: int
) -> Iterator[Block]:
    path = table.path
    done = 0  # data rows handed out
    try:
        with files.open_regular(path, "data file", DataError) as handle:
            reader = pa_csv.open_csv(pa.PythonFile(handle, mode="r"), **_csv_options(internal, types, CSV_BLOCK_BYTES))
            for batch in reader:
                table.bytes_read = handle.tell()
                for block in _blocks_of(table, batch, header, internal, label, done, rows):
                    yield block
                    done += len(block.x)
            return
    except pa.ArrowException as exc:
        reason = str(exc)
    # the slow path: name the line; if all lines are fine, read on through a filter of whitespace-only lines
    text.locate_csv_error(path, header, _numeric_columns(table, header), label)
    with text.open_csv_text(path) as f:
        stream = pa.PythonFile(text.NonBlankLines(f, path), mode="r")
        try:
            reader = pa_csv.open_csv(stream, **_csv_options(internal, types, CSV_BLOCK_BYTES))
            skip = done
            for batch in reader:
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                batch, first, skip = batch.slice(skip), done, 0
                for block in _blocks_of(table, batch, header, internal, label, first, rows):
                    yield block
                    done += len(block.x)
        except pa.ArrowException as exc:
            raise DataError(f"{path}: cannot be read as CSV ({exc}; {reason})") from None


def _numeric_columns(table: Table, header: list[str]) -> list[int]:
    return [header.index(n) for n in table.names if n not in table.categories.index]


def _blocks_of(
    table: Table,
    batch: pa.RecordBatch,
    header: list[str],
    internal: list[str],
    label: int | None,
    first: int,
    rows: int,
) -> Iterator[Block]:
    """A record batch as blocks of at most ``rows`` rows; positions are data-row indices until ``lines``."""
    for start in range(0, batch.num_rows, rows):
        part = batch.slice(start, rows)
        positions = np.arange(first + start, first + start + part.num_rows, dtype=np.int64)
        x = _raw(table, part, [internal[header.index(n)] for n in table.names])
        labels = None
        if label is not None:
            labels = _text_labels(table, part.column(internal[label]), positions)
        if table.checked:
            try:
                check_features(x, table.names, table.locate, positions)
            except DataError:  # a huge cell may be an over-long field or a line the slow path refuses first
                text.locate_csv_error(
                    table.path, header, _numeric_columns(table, header), label, int(positions[-1]) + 1
                )
                raise
        yield Block(x, labels, positions)


def _raw(table: Table, batch: pa.RecordBatch | pa.Table, columns: Sequence[str]) -> np.ndarray:
    """Raw rows (n, d) float64 of a batch: numbers (nulls as NaN), or category codes."""
    x = np.empty((batch.num_rows, len(columns)), np.float64)
    for j, (name, column) in enumerate(zip(table.names, columns)):
        array = batch.column(column)
        if name in table.categories.index:
            x[:, j] = table.categories.codes(name, array)
        else:
            x[:, j] = floats(array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array)
    return x


def _text_labels(table: Table, column: Any, positions: np.ndarray) -> np.ndarray:
    """A CSV's labels as stripped Python str; an empty one is refused."""
    encoded = pc.dictionary_encode(pc.utf8_trim_whitespace(column))
    values = np.empty(len(encoded.dictionary), dtype=object)
    values[:] = encoded.dictionary.to_pylist()
    labels = values[integers(encoded.indices)]
    empty = np.flatnonzero(labels == "")
    if len(empty):
        raise DataError(f"{table.locate(int(positions[empty[0]]))}: missing label in column '{table.target}'")
    return labels


# ---------------------------------------------------------------------------------------------------- Parquet, Feather


def _columnar_reader(path: Path, kind: str) -> tuple[pa.Schema, int, Any]:
    """(schema, rows, a function: (columns, rows) -> record batches) of a Parquet or Arrow IPC file."""
    handle = files.open_regular(path, "data file", DataError)  # a regular file: never a FIFO or a device
    handle.close()
    try:
        if kind == "parquet":
            parquet = pq.ParquetFile(path)
            return (
                parquet.schema_arrow,
                parquet.metadata.num_rows,
                lambda columns, rows: parquet.iter_batches(batch_size=rows, columns=columns),
            )
        source = pa.memory_map(str(path))
        try:
            ipc: Any = pa_ipc.open_file(source)
            batches = lambda: (ipc.get_batch(i) for i in range(ipc.num_record_batches))  # noqa: E731
        except pa.ArrowInvalid:
            source.seek(0)
            stream = pa_ipc.open_stream(source).read_all()
            ipc, batches = stream, lambda: iter(stream.to_batches())
        total = sum(batch.num_rows for batch in batches())
        return (
            ipc.schema,
            total,
            lambda columns, rows: (
                piece
                for batch in batches()
                for piece in pa.Table.from_batches([batch.select(columns)]).to_batches(rows)
            ),
        )
    except (pa.ArrowException, OSError) as exc:
        what = "Parquet" if kind == "parquet" else "Arrow IPC (Feather)"
        raise DataError(f"{path}: not a readable {what} file ({exc})") from None


def _open_columnar(path: Path, kind: str, request: Request, reader: tuple[pa.Schema, int, Any]) -> Table:
    schema, total, batches = reader
    columns = list(schema.names)
    has_labels = request.labels(path, columns)
    names = request.inputs(path, columns)
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_null, pa.types.is_decimal, pa.types.is_boolean)
    texts = {f.name for f in schema if not any(test(f.type) for test in numeric)}
    categorical = request.categorical_among(path, names, texts)
    refused = [n for n in names if n in texts and n not in categorical]
    if refused:
        kind_text = schema.field(refused[0]).type
        raise DataError(
            f"{path}: column '{refused[0]}' holds {kind_text}, not numbers; name it in data.categorical (or set "
            "data.categorical: auto) to one-hot encode it, or drop it (data.drop)"
        )
    wanted = names + ([request.target] if has_labels and request.target is not None else [])

    def blocks(rows: int) -> Iterator[Block]:
        done = 0
        try:
            for batch in batches(wanted, rows):
                positions = np.arange(done, done + batch.num_rows, dtype=np.int64)
                done += batch.num_rows
                x = _raw(table, batch, names)
                if table.checked:
                    check_features(x, names, table.locate, positions)
                labels = _stored_labels(table, batch.column(request.target), positions) if has_labels else None
                yield Block(x, labels, positions)
        except pa.ArrowException as exc:
            raise DataError(f"{path}: cannot be read ({exc})") from None

    table = Table(path, kind, names, has_labels, total, blocks)
    table.categories = CategoryCodes({n: [] for n in categorical})
    table.target = request.target if request.target in columns else None
    return table


def _stored_labels(table: Table, column: Any, positions: np.ndarray) -> np.ndarray:
    """Labels as stored (numbers, or text as Python str); a missing one is refused."""
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{table.locate(int(positions[row]))}: missing label in column '{table.target}'")
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
        labels = floats(column) if pa.types.is_floating(column.type) else np.array(column.to_pylist())
    else:
        labels = np.empty(len(column), dtype=object)
        labels[:] = column.to_pylist()  # text: an object array of str, as a CSV's labels
        if not all(isinstance(v, str) for v in labels[:1]):
            labels = np.array(column.to_pylist())  # anything else: refused below by its type
    if labels.dtype.kind != "O":
        check_label_dtype(labels.dtype, f"{table.path}: column '{table.target}'")
    return labels
