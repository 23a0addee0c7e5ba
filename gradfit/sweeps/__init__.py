"""Many trainings in one compiled program: what a sweep trains (``plan``: the ``sweep:`` section, grids, random
search, seeds) and training it with ``jax.vmap``, each member written as a normal run directory (``run``).

May import: ``gradfit.training`` and everything below it.
"""
