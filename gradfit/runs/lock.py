"""The lock of a run (or sweep) directory: one writer at a time, and a way to see that a process is training it.

An OS file lock (``fcntl.flock``) on ``.lock``, released by the kernel when the process dies, so a killed run
never leaves it stale. No jax here.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from gradfit import files
from gradfit.errors import RunDirError

LOCK, LOCK_ATTEMPTS = ".lock", 20


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory, so two processes never write the same run.

    An OS file lock, released by the kernel when the process dies, so a killed run never leaves it stale.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; rely on the user
        yield
        return
    with files.open_append(Path(run_dir) / LOCK, RunDirError) as handle:
        for attempt in range(LOCK_ATTEMPTS):  # gradfit runs holds a shared lock for an instant: wait that out
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt == LOCK_ATTEMPTS - 1:
                    raise RunDirError(
                        f"{run_dir}: another gradfit process is writing this run; wait for it to finish or stop it"
                    ) from None
                time.sleep(0.01)
        yield


def held_by_another(run_dir: Path) -> bool:
    """True while a gradfit process holds the run's lock (it is training the run now).

    Probes with a shared lock held for an instant (``locked`` retries past it); a lock file that is not a regular
    file (a FIFO would block an open) counts as not held.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        return False
    try:
        handle = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return False
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(handle)
