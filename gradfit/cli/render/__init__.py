"""What the command line draws with Rich, one module per area: common (console, titled tables, number
formatting), progress (training and sweep progress), training (summary, sweep ranking, config), gradients
(compare-grads, trace), runs (runs, compare), trained (eval, inference), bench, data (data describe).

Imported by the commands only, inside the functions that print (Rich tables are not needed for ``--help``).
Draws what the library returns and computes nothing of its own. May import the library (mostly for types), but
no jax at module level.
"""
