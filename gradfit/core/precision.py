"""Floating-point precision, decided in one place: parameter dtype, matmul input dtype, and whether x64 is on.

``float32`` and ``float64`` compute in the parameters' dtype. ``bfloat16`` is mixed precision as JAX users on
accelerators expect: parameters, optimizer state, losses and accumulations stay float32, and only the inputs
of matrix products (data and weights) are bfloat16, with float32 results. No jax import at module level.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Literal

import ml_dtypes
import numpy as np

PrecisionName = Literal["float32", "float64", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class Precision:
    name: PrecisionName

    @property
    def x64(self) -> bool:
        """Whether JAX's 64-bit mode must be on (only for float64: it is enabled per run, never globally)."""
        return self.name == "float64"

    @property
    def param_dtype(self) -> np.dtype:
        """dtype of parameters, optimizer state, losses and metrics."""
        return np.dtype(np.float64 if self.x64 else np.float32)

    @property
    def compute_dtype(self) -> np.dtype:
        """dtype of the inputs of matrix products, and of the features held on the device."""
        return np.dtype(ml_dtypes.bfloat16) if self.name == "bfloat16" else self.param_dtype

    @property
    def mixed(self) -> bool:
        return self.compute_dtype != self.param_dtype

    @property
    def significant_digits(self) -> int:
        """Digits that print a parameter-dtype value exactly (9 for float32, 17 for float64)."""
        return 17 if self.x64 else 9

    def scope(self) -> contextlib.AbstractContextManager:
        """A context in which arrays of this precision can be made and programs traced (x64 on or off)."""
        import jax

        return jax.enable_x64(self.x64)


def of(config) -> Precision:
    """The precision a config's ``runtime.precision`` names."""
    return Precision(config.runtime.precision)
