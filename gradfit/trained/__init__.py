"""A finished run used: loaded back for eval and predict (``run``) and its coefficient table (``inference``).

May import: ``gradfit.runs``, ``gradfit.data``, ``gradfit.core``, ``gradfit.config``, ``gradfit.errors``.
"""
