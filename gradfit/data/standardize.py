"""Per-column moments of rows seen a block at a time, and the standardization fitted from them. No jax.

``Moments`` is the one implementation of a column's count, mean and sum of squared deviations: training's
standardization statistics (``statistics``, whether the rows are in memory or streamed from disk) and
``gradfit data describe`` both accumulate through it. Each block's moments are exact two-pass figures in float64;
blocks merge with Chan et al.'s parallel update, so memory stays flat in the number of rows, and a table read in
one block gets exactly the two-pass figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from gradfit.errors import DataError

CHUNK_ROWS = 1 << 16  # rows per chunk when scanning features, so no full-size temporary is made
MIN_STD = 1e-12  # a column whose std is below this is constant: its std becomes 1, so it standardizes to 0

Chunks = Callable[[], Iterable[np.ndarray]]  # each call yields the same rows again, in (n_i, d) chunks


class Moments:
    """Per-column count, mean and sum of squared deviations (M2) of the finite cells of the rows added so far.

    Non-finite cells are counted (``non_finite``) and left out of the other figures.
    """

    def __init__(self, width: int):
        self.count = np.zeros(width)
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.non_finite = np.zeros(width, np.int64)

    def add(self, x: np.ndarray) -> None:
        """Merge the moments of a block ``x`` (b, d) of any real dtype into the running ones."""
        finite = np.isfinite(x)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if finite.all():
                n, mean, m2 = _block_moments(x)
            else:
                self.non_finite += (~finite).sum(axis=0)
                n, mean, m2 = _masked_block_moments(x, finite)
            total = self.count + n
            delta = mean - self.mean
            share = np.where(total > 0, n / np.maximum(total, 1), 0.0)
            self.mean = self.mean + delta * share
            self.m2 = self.m2 + m2 + delta**2 * self.count * share
        self.count = total

    def std(self) -> np.ndarray:
        """Population standard deviation per column (0 where no cell was seen; inf or NaN where M2 overflowed)."""
        with np.errstate(invalid="ignore"):
            return np.sqrt(self.m2 / np.maximum(self.count, 1))


def _block_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean, M2) per column of a block of finite cells, in float64, in two passes over it."""
    n = np.full(x.shape[1], float(len(x)))
    mean = x.sum(axis=0, dtype=np.float64) / n
    return n, mean, _sum_of_squares([x], mean, None)


def _masked_block_moments(x: np.ndarray, finite: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_block_moments`` of the finite cells only (a column without any gets mean 0)."""
    n = finite.sum(axis=0).astype(np.float64)
    clean = np.where(finite, np.asarray(x, np.float64), 0.0)
    mean = np.where(n > 0, clean.sum(axis=0) / np.maximum(n, 1), 0.0)
    centered = np.where(finite, clean - mean, 0.0)
    return n, mean, np.einsum("ij,ij->j", centered, centered)


def row_chunks(x: np.ndarray, rows: int = CHUNK_ROWS) -> Chunks:
    """``x`` (n, d) as ``Chunks`` of ``rows`` consecutive rows (views, no copies)."""
    return lambda: (x[start : start + rows] for start in range(0, len(x), rows))


def taken_chunks(x: np.ndarray, rows: np.ndarray, size: int = CHUNK_ROWS) -> Chunks:
    """The rows ``x[rows]`` as ``Chunks`` of ``size``, each taken when yielded (no copy of them all at once)."""
    return lambda: (x[rows[start : start + size]] for start in range(0, len(rows), size))


def statistics(chunks: Chunks, names: Sequence[str], origin: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std in float64 of the finite rows ``chunks()`` yields (constant features get std 1,
    so they become 0 instead of NaN).

    One pass over the chunks (``Moments``), three where a column's sum of squares overflows (cells near
    ``MAX_FEATURE`` over millions of rows): its std is then taken again on values scaled by the column's largest
    deviation. In-memory and streamed rows in the same chunks give the same numbers.

    Raises:
        DataError: a column whose mean or std is not finite in float64, named by ``names`` and ``origin``.
    """
    moments: Moments | None = None
    for chunk in chunks():
        if moments is None:
            moments = Moments(chunk.shape[1])
        moments.add(chunk)
    if moments is None:
        raise DataError(f"{origin}: no rows to take the standardization statistics from")
    mean, std = moments.mean, moments.std()
    overflowed = np.flatnonzero(~np.isfinite(std))
    if len(overflowed):
        std[overflowed] = _rescaled_std(chunks, mean, overflowed, moments.count[overflowed])
    std[std < MIN_STD] = 1.0
    bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std)))
    if len(bad):  # cannot happen for cells within MAX_FEATURE: a guard, so that null never reaches the JSON
        raise DataError(
            f"{origin}: column '{names[bad[0]]}': its mean or standard deviation overflows float64; rescale it"
        )
    return mean, std


def _rescaled_std(chunks: Chunks, mean: np.ndarray, columns: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The std of ``columns`` whose sum of squares overflows: scale * sqrt(sum(((x - mean) / scale)**2) / n),
    with scale the column's largest deviation from its mean."""
    with np.errstate(over="ignore", invalid="ignore"):
        scale = np.max(
            [np.max(np.abs(chunk[:, columns].astype(np.float64) - mean[columns]), axis=0) for chunk in chunks()], axis=0
        )
        parts = (chunk[:, columns] for chunk in chunks())
        return scale * np.sqrt(_sum_of_squares(parts, mean[columns], scale) / count)


def _sum_of_squares(chunks: Iterable[np.ndarray], mean: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """sum over rows of ((x - mean) / scale)**2 (scale None: 1), per column, in float64."""
    squares = np.zeros(len(mean))
    for chunk in chunks:
        centered = chunk.astype(np.float64)
        centered -= mean  # in place: one float64 copy of the chunk, not two
        if scale is not None:
            centered /= scale
        squares += np.einsum("ij,ij->j", centered, centered)
    return squares


def standardized(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(raw - mean) / std`` in raw's dtype; a cell beyond the dtype's range becomes inf (the caller reports it)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return (raw - mean.astype(raw.dtype)) / std.astype(raw.dtype)


def standardize_in_place(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``standardized`` written over ``raw`` (the same arithmetic, so the same bits), which it returns."""
    with np.errstate(over="ignore", invalid="ignore"):
        raw -= mean.astype(raw.dtype)
        raw /= std.astype(raw.dtype)
    return raw
