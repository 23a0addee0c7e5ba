"""The sizes and repeats of one benchmark run (``BenchOptions``); ``gradfit.bench.engine`` holds the presets."""

from __future__ import annotations

import dataclasses

from gradfit.bench import helmholtz

# What a run can measure besides what every run does (gradfit's whole training loop per config and, with peers,
# the minimal JAX loop, PyTorch eager and scikit-learn against it): the Python loop and the fused chunk with
# their compile times ("throughput"), one gradient against one loss ("gradient_cost"), the full gradient by
# method as the size grows ("methods"), the Helmholtz study ("helmholtz"), the NumPy gradient-descent peer
# ("numpy_step") and the scaling over devices ("scaling").
SECTIONS = ("throughput", "gradient_cost", "methods", "helmholtz", "numpy_step", "scaling")


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
    sections: tuple = SECTIONS  # of SECTIONS: what is measured besides gradfit's loop and its peers
