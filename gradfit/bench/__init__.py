"""Honest numbers: how fast gradfit trains and differentiates, against simple alternatives.

Modules:

- ``engine``: the whole benchmark (``run_bench``) or one study (``run_study``), with the presets ``FULL`` and
  ``QUICK``.
- ``options``: ``BenchOptions``, the sizes, repeats and sections (``SECTIONS``) of one run.
- ``training_speed``: compile time and steps/s of the jitted step, the fused chunk and the whole training loop.
- ``differentiation``: one gradient against one loss, and the full gradient's cost by method as the size grows.
- ``peers``: the same training as a minimal JAX loop, a NumPy step, a PyTorch step and scikit-learn's L-BFGS.
- ``scaling``: steps/s over 1, 2, 4, ... devices.
- ``helmholtz``: the Helmholtz free-energy study of Baydin et al. (2018).
- ``timing``: the timing rules every section follows, and the dispatch floor that growth fits must clear.

May import: ``gradfit.training`` and everything below it.
"""
