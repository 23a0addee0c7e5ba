"""Trusting the gradient.

Modules:

- ``problem``: a config's training objective at a point, what ``compare-grads`` and ``trace`` work on.
- ``gradcheck``: ``check_gradient``, reverse mode against forward mode, finite differences and the hand-derived
  gradient, per parameter group, with its progress hooks (``CheckCallbacks``); and ``planted_error``, a known bug
  to measure what a check can see.
- ``checked_point``: the loss around the checked point, with batched evaluations in the checked precision and
  in float64.
- ``finite_differences``: central differences, their measured noise, and the verdict of each entry.
- ``exact_methods``: forward mode, the hand-derived gradient and float64 reverse mode, within rounding.
- ``check_report``: the verdicts and the report types of a check.
- ``step_sweep``: the finite-difference error against the step (V-shaped or flat).
- ``trace``: ``evaluation_trace`` of a loss for one parameter entry, and its graph (DOT, SVG).
- ``trace_result``: what a trace is (its rows, operands and derivatives) and how its arrays are summarized.
- ``trace_jaxpr``: the loss's jaxpr as trace rows, evaluated with a JVP and a VJP per equation.

May import: ``gradfit.training`` and everything below it.
"""
