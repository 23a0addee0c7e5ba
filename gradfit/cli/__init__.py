"""The ``gradfit`` command line: the console script (``entry``), the Typer app with its error edge (``app``), one
module per command group (``commands``), what the commands share (``options``) and what they draw with Rich
(``render``). The only package that prints or chooses exit codes.

Keep jax out of module level here: ``gradfit --help`` must not import it. May import everything.
"""
