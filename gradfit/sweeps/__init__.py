"""Many trainings in one compiled program: what a sweep trains (``plan``: the ``sweep:`` section, grids and seeds;
``random_search``: the drawn settings), the members that share one program, compiled with ``jax.vmap``
(``group``), and training them, each member written as a normal run directory (``run``).

May import: ``gradfit.training`` and everything below it.
"""
