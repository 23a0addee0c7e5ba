"""The ``gradfit`` command line: the console script (``entry``), the commands (``app``) and what they draw with
Rich (``render``). The only package that prints or chooses exit codes.

Keep jax out of module level here: ``gradfit --help`` must not import it. May import everything.
"""
