"""The commands of the ``gradfit`` command line, one module per group: train (train, sweep), gradients
(compare-grads, trace), bench, trained (eval, predict, inference), runs (runs, compare, plot), config (config show,
init, validate) and data (data convert, describe).

Each command is a plain function whose parameters declare its options; ``gradfit.cli.app`` registers them. A
command raises library errors (gradfit.errors) and leaves their message and exit code to the app. Keep jax out of
module level. May import gradfit.cli.options, gradfit.cli.render and the library.
"""
