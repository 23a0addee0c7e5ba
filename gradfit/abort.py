"""Stopping at once on SIGINT, SIGTERM or SIGHUP, from the first instant of a command, leaving nothing behind.

The console script calls ``install()`` before it imports anything heavy. From then on such a signal removes what
``removed_on_abort`` holds (a temporary file being written, a run directory that has not started training), prints
one line and ends the process with exit code 130. It does not raise: a KeyboardInterrupt raised inside an import,
inside a thread join or inside a C++ callback of jaxlib gives a traceback, an abort, or is swallowed. The training
loop replaces these handlers with its own while it trains (it finishes the chunk in flight and checkpoints).

The set of paths is process-wide state by necessity: a signal handler has no other way to find them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

SIGNALS = tuple(s for s in (getattr(signal, name, None) for name in ("SIGINT", "SIGTERM", "SIGHUP")) if s)
EXIT_CODE = 130

_pending: list[Path] = []  # removed, newest first, when a signal ends the process
_holding = [0]  # the depth of nested _held_back blocks (a list: mutated in place, never rebound)
_held: list[int] = []  # signals recorded while held back
_exit = os._exit  # how the process ends (a test replaces it)


@contextlib.contextmanager
def removed_on_abort(make: Callable[[], Path]) -> Iterator[Path]:
    """``make()`` creates a file or folder and returns its path; within the block, a signal that ends the process
    removes it (a whole folder) first. A signal that arrives while ``make`` runs is held back until the path is
    registered, so none can land between the creation and the registration and leave the path behind."""
    with _held_back():
        path = Path(make())
        _pending.append(path)
    try:
        yield path
    finally:
        with contextlib.suppress(ValueError):
            _pending.remove(path)


@contextlib.contextmanager
def _held_back() -> Iterator[None]:
    """Within the block a signal is recorded, not acted on; the first one recorded is acted on when it ends.

    Done in the Python-level handler, not with ``pthread_sigmask``: a process-directed signal blocked in the main
    thread is delivered through one of jaxlib's threads instead, and its handler still runs in the main thread.
    """
    _holding[0] += 1
    try:
        yield
    finally:
        _holding[0] -= 1
        if not _holding[0] and _held:
            _abort(_held[0], None)


def install() -> None:
    """Make SIGINT/SIGTERM/SIGHUP end the process cleanly with exit code 130 (main thread only)."""
    for sig in SIGNALS:
        signal.signal(sig, _abort)


def _abort(signum, frame) -> None:
    if _holding[0]:
        _held.append(signum)
        return
    _held.clear()
    for path in reversed(list(_pending)):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    removed = "; nothing was left behind" if _pending else ""
    message = f"interrupted: {signal.Signals(signum).name}{removed}\n"
    with contextlib.suppress(Exception):
        if sys.stderr is not None and sys.stderr.isatty():
            message = "\r\x1b[2K\x1b[?25h" + message  # clear a progress line, show the cursor again
        os.write(_stderr_fd(), message.encode())
    _exit(EXIT_CODE)


def _stderr_fd() -> int:
    """Python's stderr: in a distributed run's training process file descriptor 2 carries only what native
    libraries write, which the watching parent holds back (see gradfit.training.supervise)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # None, or a stream without a descriptor (a test's StringIO)
        return 2
