"""Training one run.

- ``plan``: the schedule: steps, batches, log points and evaluations.
- ``programs``: the compiled step and chunk, built from plain values (``Settings``), never from a config.
- ``evaluate``: the full-split evaluations, in memory and streamed.
- ``prepare``: everything before the first step (data, devices, memory checks, the initial state, compiling):
  the ``Prepared`` pieces that a single run and a sweep both build on.
- ``loop``: training from a config (``fit``, ``train``) and its progress hooks (``Callbacks``).
- ``reuse``: compiled programs kept in a process for the next run of the same key (the scikit-learn estimators).
- ``session``: the host-side ``Session``: chunks, log points, evaluations, checkpoints, stopping.
- ``records``: the lines of metrics.jsonl; ``stopping``: the stopping rules and early stopping; ``payload``: what
  a checkpoint holds, written and read; ``summary``: summary.json; ``failures``: what a run that did not
  complete tells its user.
- ``progress``: the live display of a run (``TrainProgress``), shared by ``gradfit train`` and
  ``gradfit.fit(progress=True)``.
- ``resume``: continuing a run from its newest checkpoint; ``supervise``: the parent process that watches a
  distributed run.

May import: ``gradfit.runs``, ``gradfit.data``, ``gradfit.runtime``, ``gradfit.core``, ``gradfit.config`` and the
top-level helpers (``errors``, ``files``, ``abort``, ``version``).
"""
