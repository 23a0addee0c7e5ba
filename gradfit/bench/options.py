"""The sizes and repeats of one benchmark run (``BenchOptions``); ``gradfit.bench.engine`` holds the presets."""

from __future__ import annotations

import dataclasses

from gradfit.bench import helmholtz


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """Sizes and repeats of one benchmark run (``QUICK`` and ``FULL`` are the presets)."""

    steps: int = 200  # optimizer steps per timed training run
    repeats: int = 5
    logreg_dims: tuple = (8, 32, 128, 512, 2048)
    mlp_widths: tuple = (8, 16, 32, 64)
    rows: int = 1000  # rows of the synthetic data in the method-scaling section
    helmholtz_sizes: tuple = helmholtz.FULL["sizes"]  # variables n of the Helmholtz free-energy study
    symbolic_max_n: int = helmholtz.FULL["symbolic_max_n"]  # SymPy's expressions swell: up to this n
    peers: bool = True
