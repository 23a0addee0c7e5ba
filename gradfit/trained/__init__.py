"""A finished run used: loaded back for eval and predict (``run``) and its coefficient table (``inference``: the
binary logistic regression's, and the front door; ``multinomial``: softmax regression's; ``wald``: what both share).

May import: ``gradfit.runs``, ``gradfit.data``, ``gradfit.core``, ``gradfit.config``, ``gradfit.errors``.
"""
