"""Training from a config: ``fit`` writes a new run directory, ``train`` also hands back the trained parameters (or
writes nothing), and ``Callbacks`` are the progress hooks either reports to. The loop of chunks itself is
``gradfit.training.session``'s.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from gradfit.config.load import GradfitConfig
from gradfit.core import precision
from gradfit.data.supplied import Supplied
from gradfit.runs import rundir
from gradfit.training.prepare import compile_programs, prepare
from gradfit.training.session import Session, Trained, stage


class Callbacks:
    """Progress hooks; the engine prints nothing itself. Override what you need."""

    def on_stage(self, message: str) -> None:
        """Before the first step: 'loading data', 'compiling', ..."""

    def on_start(self, info: dict) -> None: ...

    def on_log(self, record: dict) -> None: ...

    def on_end(self, summary: rundir.Summary) -> None: ...


def fit(
    config: GradfitConfig,
    out_dir: str | Path = "runs",
    callbacks: Callbacks | None = None,
    supplied: Supplied | None = None,
) -> rundir.Summary:
    """Train as the config says and write a new run directory; returns the summary (also in summary.json).

    ``supplied``: the rows of ``data.source: memory`` (``gradfit.data.supplied``).

    Raises:
        GradfitError: bad data, settings or device (before the run directory is created).
        TrainingFailed: the loss or parameters became non-finite (summary.json says why).
        Interrupted: SIGINT or SIGTERM; a checkpoint was written first.
    """
    return train(config, Path(out_dir), callbacks, supplied).summary


def train(
    config: GradfitConfig,
    out_dir: Path | None,
    callbacks: Callbacks | None = None,
    supplied: Supplied | None = None,
    reuse_programs: bool = False,
) -> Trained:
    """``fit``, returning the trained parameters too; ``out_dir`` None writes nothing (no run directory, no
    checkpoint: what the scikit-learn estimators do unless given ``out_dir``). ``reuse_programs``: take the
    compiled programs of an earlier run of this process with the same key (``gradfit.training.reuse``)."""
    with precision.of(config).scope():
        started = time.perf_counter()
        callbacks = stage(callbacks, "loading data")
        run = prepare(config, supplied, reuse_programs)  # all that can reject the input comes before the run directory
        callbacks = stage(callbacks, "compiling")
        programs = compile_programs(run)
        if not run.topology.writes or out_dir is None:  # another process of a distributed run computes, 0 writes
            session = Session.start(run, programs, None, started, callbacks, written=out_dir is not None)
            return session.trained(session.train())
        with contextlib.ExitStack() as held:  # the lock, held from the folder's creation to the end of training
            with rundir.RunDir.fresh(out_dir, config.name) as run_dir:  # removed if anything fails before training
                held.enter_context(run_dir.locked())
                session = Session.start(run, programs, run_dir, started, callbacks)
            return session.trained(session.train())
