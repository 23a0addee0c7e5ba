"""Trusting the gradient: a config's objective at a point (``problem``), reverse mode against forward mode,
finite differences and the hand-derived gradient (``gradcheck``), and the evaluation trace of a loss (``trace``).

May import: ``gradfit.training`` and everything below it.
"""
