"""How rows weigh in the objective: ``data.weight``'s column times ``model.class_weight``'s weight of the row's class
(``Weighting``), and the checks on them. No jax.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gradfit.config.schema import GradfitConfig
from gradfit.data.labels import class_weights
from gradfit.errors import DataError


def refuse_weightless_class(ids: np.ndarray, weights: np.ndarray, classes: list, origin: str) -> None:
    """A class whose training rows all weigh 0 is one the model is asked to predict but never sees."""
    rows = np.bincount(ids, minlength=len(classes))
    weighed = np.bincount(ids, weights, minlength=len(classes))
    zero = np.flatnonzero((rows > 0) & (weighed == 0))
    if len(zero):
        raise DataError(
            f"{origin}: every training row of class {classes[zero[0]]!r} weighs 0 (data.weight, "
            "model.class_weight): the model cannot learn a class it never sees; drop those rows or weigh them"
        )


def class_positions(y: np.ndarray, classes: list) -> np.ndarray | None:
    """Each row's index into ``classes`` from its encoded label (±1 or a class id); None for a numeric target."""
    if not classes:
        return None
    return (y > 0).astype(np.int64) if len(classes) == 2 else np.asarray(y, np.int64)


@dataclasses.dataclass(frozen=True)
class Weighting:
    """How rows are weighted in the objective: ``data.weight``'s column and ``model.class_weight`` per class."""

    column: str | None  # the sample-weight column, or None
    classes: tuple[float, ...] | None  # one weight per class, in the classes' order, or None

    @classmethod
    def of(
        cls,
        config: GradfitConfig,
        sampled: bool,
        classes: list,
        counts: np.ndarray | None,
        origin: str,
    ) -> Weighting | None:
        """The weighting ``config`` asks for (``sampled``: the source has a weight column; ``counts``: training rows
        per class, None for a numeric target); None without any."""
        per_class = None
        if counts is not None:
            per_class = class_weights(config.model.class_weight, classes, counts, origin)
        if not sampled and per_class is None:
            return None
        return cls(config.data.weight if sampled else None, None if per_class is None else tuple(per_class.tolist()))

    def rows(self, sample: np.ndarray | None, ids: np.ndarray | None) -> np.ndarray:
        """Each row's weight: its sample weight times its class's weight, float64."""
        per_class = None if self.classes is None or ids is None else np.asarray(self.classes)[ids]
        if sample is None:
            assert per_class is not None, "a weighting has a weight column or class weights"
            return per_class
        return np.asarray(sample, np.float64) * (1.0 if per_class is None else per_class)
