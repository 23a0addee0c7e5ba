"""Training one run: the compiled programs and what prepares them (``programs``), the host-side loop of log
points, evaluations, checkpoints and stopping rules (``loop``), resuming (``resume``), and the parent process
that watches a distributed run (``supervise``).

May import: ``gradfit.runs``, ``gradfit.runtime``, ``gradfit.data``, ``gradfit.core``, ``gradfit.config`` and the
top-level helpers (``errors``, ``files``, ``abort``, ``version``).
"""
