"""Every file of a run, typed: the run directory and its summary (``rundir``), its lock (``lock``), checkpoints,
metrics.jsonl (``metrics``), derived metric logs (``loggers``), listing and comparing runs from their files alone
(``catalog``) and training curves (``plot``).

No jax here. May import: ``gradfit.config``, ``gradfit.errors``, ``gradfit.files``, ``gradfit.abort``,
``gradfit.version``.
"""
