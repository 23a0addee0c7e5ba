"""Data that stay on disk: a converted folder (read as asked, see ``RowFile``) or synthetic rows generated on
demand, read in row blocks and standardized with statistics taken in streamed passes. No jax.

A ``StreamedDataset``'s splits hand out rows by index (``StreamedSplit.take``) exactly as the in-memory path
would have them: the same split, the same row order for the same shuffle mode, the same standardization
arithmetic, the same casts. That is what makes a streamed run's parameters equal an in-memory run's bit for bit.
Whether a run streams is decided in ``gradfit.data.load``.

Row order within the splits: ``train.shuffle: full`` keeps the split's seeded permutation (rows are then read
at random: fast on an SSD or from the page cache, slow from a spinning disk); ``blocks`` keeps the rows of each
split in file order, so that a block of consecutive training rows is one run of the file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gradfit.config.schema import GradfitConfig, data_seed
from gradfit.data import blocks, standardize, synthetic
from gradfit.data.dataset import (
    fit_encoding,
    only_numeric,
    open_source,
    preprocessing_record,
    shuffle_mode,
    split_indices,
    target_statistics,
)
from gradfit.data.encoding import Encoding
from gradfit.data.labels import Labels, encode_labels, label_dtype, numeric_target, with_weights
from gradfit.data.weighting import Weighting, class_positions
from gradfit.errors import DataError

# ---------------------------------------------------------------------------------------------------- sources


class DataChanged(DataError):
    """A data file changed size while a run read it. Exit code 1, as for a full disk: the input was fine when the
    run started, which stops with a failed summary.json."""

    exit_code = 1


SPAN_GAP_BYTES = 1 << 14  # rows at most this far apart in the file are read in one call, with what lies between
PIECE_BYTES = 1 << 23  # bytes read at most into one scratch buffer (one per reading thread) before rows are picked
MAX_SPAN_SHARE = 2  # read spans while they hold at most this many file rows per wanted row...
SPAN_SLACK_BYTES = 64  # ...or, for rows of a few bytes (y.npy's class codes), this many bytes per wanted row...
MIN_SPAN_ROWS, MIN_SPAN_BYTES = 8, 1 << 15  # ...and, per call, this many wanted rows or bytes; else use the map


class RowFile:
    """The rows of a .npy array in C order, copied into new arrays: rows that lie close together in the file with
    ``os.preadv`` (a span at a time), scattered rows from the file's memory map.

    Why not only the map: a file truncated while it is mapped kills the process with SIGBUS at the first page past
    its new end (exit 135: no message, no summary.json). A read comes back short instead; that, or a size other
    than the file had when it was opened (checked before every read, whichever way it reads), is ``DataChanged``.
    A file replaced under the same name changes nothing: the descriptor and the map keep the one opened.

    Why not only reads: scattered rows cost a call each (3-6 us, where the map's gather takes 0.4-0.8 us a row) or
    the bytes between them, which the kernel copies out of the page cache at about half the speed of a gather from
    the map. Measured on a 2-core VM with 50 float32 features: reading spans that hold up to 4 file rows per wanted
    row made ``gradfit train`` 0.87x as fast with ``train.shuffle: full`` and 0.95x with ``blocks`` (200,000 rows),
    and reading everything made ``take`` 0.28x as fast with ``full`` over 4M rows; with the thresholds above,
    training runs at 0.99-1.01x the map-only reader's speed. So scattered rows are gathered from the map after the
    size check, and a file truncated during that gather (milliseconds) can still end the process with SIGBUS.
    Which way a read goes depends only on where its rows lie. With ``blocks`` (the streaming default) runs, the
    standardization pass, the training split's evaluation and the class codes are read, while the features of a
    training group (rows of a few 4,096-row blocks) and the validation and test splits mostly gather; with
    ``full`` over a file many times a group's size, nearly every read gathers.
    """

    def __init__(self, path: Path, mapped: np.ndarray):
        if not isinstance(mapped, np.memmap) or not mapped.flags.c_contiguous:
            raise DataError(
                f"{path}: not stored in C order, as 'gradfit data convert' writes it; convert the data again"
            )
        self.path, self.mapped = path, mapped
        self.row_bytes = mapped.dtype.itemsize * int(np.prod(mapped.shape[1:], dtype=np.int64))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        weakref.finalize(self, os.close, fd)
        self.fd, self.size = fd, os.fstat(fd).st_size
        self._local = threading.local()  # the feeding thread and evaluation read at once
        if self.size < mapped.offset + mapped.nbytes:
            raise self.changed(self.size)

    def changed(self, size: int) -> DataChanged:
        return DataChanged(
            f"{self.path}: changed size during training or evaluation ({self.size:,} bytes when opened, {size:,} "
            "now); data must stay as they are while a run reads them: restore the file and resume the run, or "
            "start a new one"
        )

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (sorted; repeats allowed), (len(rows), *shape[1:]), in a new array."""
        size = os.fstat(self.fd).st_size
        if size != self.size:
            raise self.changed(size)
        out = np.empty((len(rows), *self.mapped.shape[1:]), self.mapped.dtype)
        if not len(rows) or not self.row_bytes:
            return out
        steps = np.diff(rows)
        if (steps == 1).all():  # one run of the file: straight into place
            self._read_into(out.reshape(-1).view(np.uint8).data, int(rows[0]))
            return out
        gap, piece = max(1, SPAN_GAP_BYTES // self.row_bytes), max(1, PIECE_BYTES // self.row_bytes)
        # spans: runs of wanted rows at most ``gap`` rows apart, cut where a piece of the file ends
        starts = np.flatnonzero(np.concatenate(([True], (steps > gap) | (np.diff(rows // piece) != 0))))
        ends = np.append(starts[1:], len(rows))
        firsts, lengths = rows[starts], rows[ends - 1] + 1 - rows[starts]  # each span's first row, rows in it
        wanted_bytes = len(rows) * self.row_bytes
        spread = lengths.sum() * self.row_bytes > len(rows) * max(MAX_SPAN_SHARE * self.row_bytes, SPAN_SLACK_BYTES)
        if spread or len(starts) * min(MIN_SPAN_ROWS * self.row_bytes, MIN_SPAN_BYTES) > wanted_bytes:
            return np.asarray(self.mapped[rows])  # scattered rows: see the class's docstring
        items = out.reshape(-1).view(np.dtype((np.void, self.row_bytes)))  # rows as opaque items: one copy each
        pieces = np.append(np.flatnonzero(np.diff(firsts // piece, prepend=-1)), len(starts))
        for low, high in zip(pieces[:-1].tolist(), pieces[1:].tolist()):  # the spans in one piece of the file
            offsets = np.cumsum(lengths[low:high]) - lengths[low:high]  # where each span goes in ``scratch``
            scratch = self._scratch(piece)
            for first, offset, length in zip(firsts[low:high].tolist(), offsets.tolist(), lengths[low:high].tolist()):
                self._read_into(scratch[offset * self.row_bytes : (offset + length) * self.row_bytes].data, first)
            wanted = slice(int(starts[low]), int(ends[high - 1]))
            local = rows[wanted] - np.repeat(firsts[low:high] - offsets, ends[low:high] - starts[low:high])
            # "clip": the positions are in range, and only then does numpy write into ``out`` without a buffer
            np.take(scratch.view(items.dtype), local, out=items[wanted], mode="clip")
        return out

    def _scratch(self, rows: int) -> np.ndarray:
        """This thread's buffer for ``rows`` rows: one kept per thread, since a new one costs a page fault per 4 KiB
        (about as long as the read itself)."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None or len(scratch) < rows * self.row_bytes:
            scratch = self._local.scratch = np.empty(rows * self.row_bytes, np.uint8)
        return scratch

    def _read_into(self, view: memoryview, row: int) -> None:
        """Fill ``view`` with the file's bytes from ``row`` on; a file that ends before is a ``DataChanged``."""
        position, done = self.mapped.offset + row * self.row_bytes, 0
        while done < len(view):  # a read returns at most about 2 GiB
            got = _pread_into(self.fd, view[done:], position + done)
            if not got:
                raise self.changed(os.fstat(self.fd).st_size)
            done += got


def _pread_into(fd: int, view: memoryview, position: int) -> int:
    if hasattr(os, "preadv"):  # Linux, BSD: into the array, no copy
        return os.preadv(fd, [view], position)
    data = os.pread(fd, len(view), position)
    view[: len(data)] = data
    return len(data)


class ConvertedRows:
    """Rows of a converted folder, read from its files as asked (see ``RowFile``)."""

    def __init__(self, table: blocks.Table, weight: str | None = None):
        if table.stored_x is None or table.stored_codes is None or table.classes is None or table.rows is None:
            raise DataError(f"{table.path}: only a folder made by 'gradfit data convert' can be streamed")
        self.table, self.classes = table, table.classes
        self.x = RowFile(table.path / "X.npy", table.stored_x)
        self.codes = RowFile(table.path / "y.npy", table.stored_codes)
        self.n_rows, self.names = table.rows, table.names
        self.dictionaries = table.categories.dictionaries
        stored = list(table.meta["feature_names"]) if table.meta is not None else self.names
        order = [stored.index(n) for n in self.names]
        self.order = None if order == list(range(len(stored))) else order  # data.features or data.drop
        self.weight, self.all_names = weight, self.names
        if weight is not None:  # a column of the folder's features, split off as it is read
            blocks.check_weight_column(self.all_names, self.dictionaries, weight)
            self.names = [n for n in self.names if n != weight]

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows (len(rows), d) and class codes of ``rows`` (sorted; repeats allowed), in that order."""
        x, codes, _ = self.read_weighted(rows)
        return x, codes

    def read_weighted(self, rows: np.ndarray, locate: Callable[[int], str] = str) -> tuple:
        """``read`` and the rows' sample weights (data.weight's column, checked), None without one."""
        x = self.x.read(rows)
        x = x if self.order is None else x[:, self.order]
        if self.weight is None:
            return x, self.codes.read(rows), None
        x, _, weights = blocks.split_weight(x, self.all_names, self.dictionaries, self.weight, locate)
        return x, self.codes.read(rows), weights

    def classes_in(self, rows: np.ndarray) -> int:
        """How many distinct classes ``rows`` (any order) hold: the codes read in file order, a piece at a time."""
        wanted = np.zeros(self.n_rows, bool)
        wanted[rows] = True
        present = np.zeros(len(self.classes), bool)
        step = standardize.CHUNK_ROWS * 16
        for start in range(0, self.n_rows, step):
            block = np.arange(start, min(start + step, self.n_rows))
            present[self.codes.read(block)[wanted[block]]] = True
        return int(present.sum())

    def digest(self) -> int:
        """CRC-32 of the folder's files."""
        crc = 0
        for name in ("X.npy", "y.npy", "meta.json"):
            with open(self.table.path / name, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 24), b""):
                    crc = zlib.crc32(chunk, crc)
        return crc


class SyntheticRows:
    """Synthetic rows generated on demand, a generator block at a time (the last few are kept)."""

    def __init__(self, config: GradfitConfig):
        self.spec, self.seed = config.data.synthetic, data_seed(config)
        self.regression = config.model.regression
        self.n_rows, self.names = self.spec.n_samples, synthetic.feature_names(self.spec.n_features)
        self.dictionaries: dict[str, list[str]] = {}
        self.seen = np.zeros(self.spec.n_classes, bool)  # classes drawn so far
        self.made: set[int] = set()  # blocks generated so far
        self._block = functools.lru_cache(maxsize=4)(self._make_block)

    def _make_block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        self.made.add(block)
        start = block * synthetic.SYNTHETIC_BLOCK
        x, y = synthetic.synthetic_rows(
            self.spec, self.seed, start, min(start + synthetic.SYNTHETIC_BLOCK, self.n_rows), self.regression
        )
        if not self.regression:
            self.seen[np.unique(y)] = True
        return x, y

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (len(rows), d) float32 and class ids (or numeric targets) of ``rows`` (any order)."""
        blocks = rows // synthetic.SYNTHETIC_BLOCK
        x = np.empty((len(rows), self.spec.n_features), np.float32)
        y = np.empty(len(rows), np.float64 if self.regression else np.int64)
        for block in np.unique(blocks):
            mine = np.flatnonzero(blocks == block)
            bx, by = self._block(int(block))
            offset = rows[mine] - block * synthetic.SYNTHETIC_BLOCK
            x[mine], y[mine] = bx[offset], by[offset]
        return x, y

    def digest(self) -> int:
        """CRC-32 of the generator's settings."""
        return zlib.crc32(json.dumps([self.spec.model_dump(), self.seed]).encode())


Rows = ConvertedRows | SyntheticRows


# ---------------------------------------------------------------------------------------------------- dataset


@dataclasses.dataclass(frozen=True)
class StreamedSplit:
    """A split whose rows stay on disk: ``rows`` are their indices in the file, in the split's order."""

    rows: np.ndarray
    dataset: StreamedDataset

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, positions: np.ndarray, param_dtype: Any, compute_dtype: Any) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the rows at ``positions`` (any order, repeats allowed) as the loss wants them: standardized
        x in ``compute_dtype``; y as +-1 in ``param_dtype`` (binary) or int32 class ids. The in-memory path's
        arithmetic and casts, so the same bits; the rows are read from the source in file order."""
        wanted = self.rows[positions]
        order = np.argsort(wanted, kind="stable")
        source = self.dataset.source
        if isinstance(source, ConvertedRows):
            located = lambda i: self.dataset.locate(int(wanted[order][i]))  # noqa: E731
            sorted_x, sorted_codes, sorted_weights = source.read_weighted(wanted[order], located)
        else:
            (sorted_x, sorted_codes), sorted_weights = source.read(wanted[order]), None
        raw = np.empty_like(sorted_x)
        raw[order] = sorted_x
        codes = np.empty_like(sorted_codes)
        codes[order] = sorted_codes
        sample = None
        if sorted_weights is not None:
            sample = np.empty_like(sorted_weights)
            sample[order] = sorted_weights
        del sorted_x
        encoded = self.dataset.encoding.transform(
            raw, self.dataset.source.dictionaries, lambda i: self.dataset.locate(int(wanted[i]))
        )
        x = self.dataset.standardize_in_place(encoded)  # encoded is not needed after, unless a cell overflows
        with np.errstate(over="ignore"):
            x = np.asarray(x, param_dtype).astype(compute_dtype, copy=False)
        if not np.isfinite(x).all():
            row, col = np.argwhere(~np.isfinite(x))[0]
            raw_row = self.dataset.source.read(wanted[row : row + 1])[0]
            blocks.check_features(raw_row, self.dataset.feature_names, self.dataset.locate, wanted[row : row + 1])
            value = raw_row[0, col]
            raise DataError(
                f"{self.dataset.locate(wanted[row])}: column '{self.dataset.feature_names[col]}' is "
                f"{float(value)!r}, beyond {np.dtype(compute_dtype).name}'s range after preprocessing; "
                "remove or impute it, or set runtime.precision: float64"
            )
        y = self.dataset.labels(codes)
        weighting = self.dataset.weighting
        if weighting is not None:
            y = with_weights(y, weighting.rows(sample, class_positions(y, list(self.dataset.classes))))
        return x, np.asarray(y, label_dtype(self.dataset.n_classes, param_dtype, weighting is not None))

    def blocks(
        self, rows: int, param_dtype: Any = np.float64, compute_dtype: Any = np.float64
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``take`` of consecutive rows, ``rows`` at a time (as ``Split.blocks`` hands them out)."""
        for start in range(0, len(self), rows):
            yield self.take(np.arange(start, min(start + rows, len(self))), param_dtype, compute_dtype)


@dataclasses.dataclass(frozen=True)
class StreamedDataset:
    """A ``Dataset`` whose splits read their rows from ``source`` when asked."""

    name: str
    source: Rows
    split_rows: tuple  # (train, val, test) row indices in the file
    feature_names: tuple[str, ...]
    classes: tuple
    encoded: np.ndarray  # class code -> y as the loss wants it (+-1, class id, or a numeric target's raw value)
    mean: np.ndarray | None
    std: np.ndarray | None
    encoding: Encoding
    target: str | None
    target_scale: tuple[float, float] | None = None  # a numeric target's (mean, std) over the training split
    weighting: Weighting | None = None

    def labels(self, codes: np.ndarray) -> np.ndarray:
        """The stored labels of some rows (class codes; a synthetic numeric target's values) as the loss wants
        them: +-1, class ids, or the standardized target, computed as ``load_dataset`` does."""
        if self.target_scale is None:
            return self.encoded[codes]
        values = codes if codes.dtype.kind == "f" else self.encoded[codes]
        return (values - self.target_scale[0]) / self.target_scale[1]

    @property
    def train(self) -> StreamedSplit:
        return StreamedSplit(self.split_rows[0], self)

    @property
    def val(self) -> StreamedSplit:
        return StreamedSplit(self.split_rows[1], self)

    @property
    def test(self) -> StreamedSplit:
        return StreamedSplit(self.split_rows[2], self)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def locate(self, row: int) -> str:
        """Where a row of the source is, for a message."""
        return f"{self.name}: row {row}"

    def standardize_in_place(self, raw: np.ndarray) -> np.ndarray:
        """``(raw - mean) / std`` in raw's dtype, as ``load_dataset`` computes it, written over ``raw``."""
        if self.mean is not None and self.std is not None:  # beyond the dtype's range: reported by ``take``
            return standardize.standardize_in_place(raw, self.mean, self.std)
        return raw

    def digest(self) -> str:
        """CRC-32 of the source (the files' bytes, or the generator's settings) and of the splits."""
        crc = self.source.digest()
        for rows in self.split_rows:
            crc = zlib.crc32(np.ascontiguousarray(rows, np.int64).data, crc)
        return f"{crc:08x}"

    def preprocessing(self) -> dict:
        """JSON-ready record of the feature names, label mapping and standardization (the in-memory one's)."""
        return preprocessing_record(self)


def load_streamed(config: GradfitConfig) -> StreamedDataset:
    """Open the source, split it (the in-memory split), take the training statistics in a streamed pass."""
    data = config.data
    source: Rows
    if data.source == "synthetic":
        source, origin, target = SyntheticRows(config), "synthetic", None
    else:
        table = open_source(data)
        source, origin, target = ConvertedRows(table, data.weight), str(table.path), table.target
    n = source.n_rows
    try:
        splits = split_indices(n, data.val_fraction, data.test_fraction, data_seed(config))
    except DataError as exc:
        raise DataError(f"{origin}: {exc}") from None
    splits = tuple(rows.astype(np.int32 if n < 2**31 else np.int64) for rows in splits)  # 100M rows: 400 MB
    if shuffle_mode(config, True) == "blocks":
        for rows in splits:
            rows.sort()
    train = splits[0]
    chunks = _training_chunks(source, train, origin)
    encoding = fit_encoding(data, chunks, source.names, source.dictionaries, origin)
    names = encoding.feature_names
    mean = std = None
    if data.standardize:
        statistics = standardize.statistics(_training_chunks(source, train, origin, encoding), names, origin)
        mean, std = only_numeric(encoding, *statistics)
    if config.model.regression:
        encoded = _target_values(source, origin, target)
        scale = _target_statistics(source, encoded, np.sort(train), origin)
        weighting = Weighting.of(config, data.weight is not None, [], None, origin)
        return StreamedDataset(
            origin, source, splits, tuple(names), (), encoded, mean, std, encoding, target, scale, weighting
        )
    classes, encoded = _classes(config, source, origin, train)
    counts = _class_counts(source, encoded, len(classes), np.sort(train)) if config.model.class_weight else None
    weighting = Weighting.of(config, data.weight is not None, classes, counts, origin)
    return StreamedDataset(
        origin, source, splits, tuple(names), tuple(classes), encoded, mean, std, encoding, target, None, weighting
    )


def _class_counts(source: Rows, encoded: np.ndarray, k: int, train: np.ndarray) -> np.ndarray:
    """Training rows per class, or their summed sample weights (for class_weight: balanced, as scikit-learn counts
    them), the labels read a chunk at a time."""
    counts = np.zeros(k)
    for start in range(0, len(train), standardize.CHUNK_ROWS * 16):
        rows = train[start : start + standardize.CHUNK_ROWS * 16]
        weights = None
        if isinstance(source, ConvertedRows):
            _, codes, weights = source.read_weighted(rows) if source.weight else (None, source.codes.read(rows), None)
        else:
            codes = source.read(rows)[1]
        ids = class_positions(encoded[codes], [None] * k)
        assert ids is not None
        counts += np.bincount(ids, weights, minlength=k)
    return counts


def _target_statistics(source: Rows, encoded: np.ndarray, train: np.ndarray, origin: str) -> tuple[float, float]:
    """``target_statistics`` of the training rows' targets, read a chunk at a time (memory flat in the rows)."""
    moments = standardize.Moments(1)
    for start in range(0, len(train), standardize.CHUNK_ROWS * 16):
        rows = train[start : start + standardize.CHUNK_ROWS * 16]
        values = encoded[source.codes.read(rows)] if isinstance(source, ConvertedRows) else source.read(rows)[1]
        moments.add(np.asarray(values, np.float64)[:, None])
    return target_statistics(moments, origin)


def _target_values(source: Rows, origin: str, target: str | None) -> np.ndarray:
    """A numeric target's value per stored code (a converted folder's classes), checked as ``load_dataset`` checks
    them; empty for synthetic rows, which hold the values themselves."""
    if isinstance(source, SyntheticRows):
        return np.zeros(0)
    values = source.classes
    return numeric_target(Labels(values, np.arange(len(values))), origin, target)


def _training_chunks(
    source: Rows, train: np.ndarray, origin: str, encoding: Encoding | None = None
) -> standardize.Chunks:
    """The training rows in split order, ``CHUNK_ROWS`` at a time, each chunk read in file order and checked, and
    encoded by ``encoding`` when given."""

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, len(train), standardize.CHUNK_ROWS):
            rows = train[start : start + standardize.CHUNK_ROWS]
            order = np.argsort(rows, kind="stable")
            x, _ = source.read(rows[order])
            blocks.check_features(x, source.names, lambda row: f"{origin}: row {row}", rows[order])
            x = x[np.argsort(order, kind="stable")]
            if encoding is not None:
                x = encoding.transform(x, source.dictionaries, _rows_of(origin, rows))
            yield x

    return chunks


def _rows_of(origin: str, rows: np.ndarray) -> Callable[[int], str]:
    """Where a chunk's row is, for a message."""
    return lambda i: f"{origin}: row {rows[i]}"


def _classes(config: GradfitConfig, source: Rows, origin: str, train: np.ndarray) -> tuple[list, np.ndarray]:
    """The classes (as ``encode_labels`` would list them) and, per stored class code, its encoding."""
    if isinstance(source, SyntheticRows):
        block_rows = synthetic.SYNTHETIC_BLOCK
        for block in range(-(-source.n_rows // block_rows)):  # the blocks the statistics did not draw
            if block not in source.made:
                source.read(np.array([block * block_rows]))
        values = np.flatnonzero(source.seen)
    else:
        values = source.classes
    encoded, classes = encode_labels(Labels(values, np.arange(len(values))), origin)
    if isinstance(source, ConvertedRows) and source.classes_in(train) < 2:
        raise DataError(f"{origin}: the training split holds a single class; use more rows or another seed")
    if isinstance(source, SyntheticRows):  # class ids index the table of seen values
        table = np.zeros(config.data.synthetic.n_classes, encoded.dtype)
        table[values] = encoded
        encoded = table
    return classes, encoded
