"""The mathematics, as pure functions over pytrees: models, losses with their hand-derived gradients, the optax
optimizer a config names, floating-point precision, and classification metrics.

May import: ``gradfit.config``, ``gradfit.errors``.
"""
