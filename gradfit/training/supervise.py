"""A distributed training process, watched by a small parent that reports how it ended.

When one process of a ``jax.distributed`` group dies, JAX ends every other process of the group once the lost
one misses its heartbeats, or at once when the lost one ran the coordinator (process 0): a C++ fatal error and
``abort()``, which no Python code survives, with a native stack trace on stderr. So ``gradfit train --distributed``
runs the training in a child process and stays light itself (no JAX): the child's own output reaches the user as it
is, everything native libraries write (JAX's and gRPC's log lines, gloo's notes, stack traces) goes to a file the
parent reads once the child has ended, signals are forwarded, and when JAX ends the child the parent prints one
line naming the lost process and how to resume, marks the run failed in summary.json (process 0) and exits 1.
Nothing here starts other processes of the group: a launcher (SLURM, mpirun, ssh, a shell) does.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from gradfit.errors import TrainingFailed

INIT_TIMEOUT_S = 300  # the defaults of --init-timeout and --heartbeat-timeout
HEARTBEAT_TIMEOUT_S = 60
WORKER = "GRADFIT_DISTRIBUTED_WORKER"  # set in the child: the file where it says which run it writes
NATIVE_LOG = "native.log"  # next to that file: what native libraries wrote in the child
_NATIVE_TAIL = 1 << 20  # the bytes of it read: JAX's last report is at the end
_RUN_DIR_KEY = "gradfit/run_dir"  # in JAX's key-value store: process 0's run directory, for every process


def wanted(argv: list[str]) -> bool:
    """True in the process a user started with ``gradfit train --distributed`` (not in its child)."""
    return "train" in argv and "--distributed" in argv and WORKER not in os.environ


def run(argv: list[str]) -> int:
    """Run ``gradfit *argv`` in a child process and return the exit code to end with."""
    with tempfile.TemporaryDirectory(prefix="gradfit-") as folder:
        told = Path(folder) / "run.json"
        child = subprocess.Popen(
            [sys.executable, "-m", "gradfit", *argv],
            env={**os.environ, WORKER: str(told)},
            preexec_fn=_die_with_parent,
        )
        signals: list[int] = []

        def forward(signum, frame):  # a second signal stops the child at once, even inside a collective
            signals.append(signum)
            child.send_signal(signal.SIGKILL if len(signals) > 1 else signum)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, forward)
        code = child.wait()
        if code >= 0:  # the child ended itself: its own message and exit code stand (JAX's report adds nothing)
            return code
        if signals == [-code]:  # forwarded while the child's interpreter was starting, before it could catch it
            print(f"interrupted: {signal.Signals(-code).name}", file=sys.stderr)
            return 130
        run = {**json.loads(told.read_text()), "started": told.stat().st_mtime} if told.exists() else {}
        held = _native_lines(Path(folder) / NATIVE_LOG)
    refused = _refused_start(argv, held)
    if refused is not None:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    print(f"error: {_ended(argv, held, signals, code, run)}", file=sys.stderr)
    return 1


def _refused_start(argv: list[str], held: list[bytes]) -> str | None:
    """What stopped the group from forming, from JAX's report (None: it had formed)."""
    if not any(b"/RegisterTask" in line for line in held):  # how JAX's report says it gave up joining
        return None
    coordinator = _flag(argv, "--coordinator", "JAX_COORDINATOR_ADDRESS")
    timeout = _flag(argv, "--init-timeout", None) or INIT_TIMEOUT_S
    if _flag(argv, "--process-id", "JAX_PROCESS_ID") == "0":
        count = _flag(argv, "--num-processes", "JAX_NUM_PROCESSES") or "all"
        return (
            f"not every process joined at {coordinator} within {timeout} s; check that {count} processes were "
            "started, each with the same --coordinator and --num-processes, and that this address and port are "
            "reachable from their hosts"
        )
    return (
        f"could not join the processes at {coordinator} within {timeout} s; check that process 0 runs, that the "
        "address and port are reachable from here and that every process was given the same --num-processes"
    )


def _ended(argv: list[str], held: list[bytes], signals: list[int], code: int, run: dict) -> str:
    """The line that says why the child was ended (``code``: minus the signal) and how to go on."""
    lost = _lost_processes(held)
    if any(b"leader task" in line for line in held) and "0" not in lost:  # the coordinator stopped answering
        lost.insert(0, "0")
    who = f"process {', '.join(lost)}" if lost else "another process of the group"
    if len(signals) > 1 and code == -signal.SIGKILL:
        reason = f"stopped at once by a second {signal.Signals(signals[-1]).name}"
    elif lost or any(b"heartbeat" in line for line in held):
        reason = f"lost {who}: it stopped sending heartbeats to the JAX coordinator, and JAX ended this process"
        if lost == ["0"]:
            reason = "lost process 0: the JAX coordinator it runs stopped answering, and JAX ended this process"
    else:
        reason = f"the training process was ended by {signal.Signals(-code).name}"
    run_dir = run.get("run_dir")
    if not run_dir:
        return reason
    if run.get("process") != 0:  # process 0 may be the one that was lost: this process says how to go on
        return f"{reason}. {resume_advice(run_dir, argv)}"
    said = f"{reason}; {run_dir}/summary.json says failed"
    if _mark_failed(Path(run_dir), reason, run["started"]):
        return f"{said}. {resume_advice(run_dir, argv)}"
    return f"{said}. No checkpoint was written before it: start the run again"


def resume_advice(run_dir: str, argv: list[str]) -> str:
    """How every process resumes ``run_dir`` after a lost process (or that it starts again, when this host sees the
    run directory and it holds no checkpoint). ``argv``: the command line the process was started with."""
    from gradfit.runs import checkpoints

    if Path(run_dir).is_dir() and checkpoints.latest(Path(run_dir)) is None:
        return "No checkpoint was written before it: start the run again"
    command = shlex.join(["gradfit", "train", "--resume", run_dir, *_distributed_flags(argv)])
    return (
        f"Resume from the newest checkpoint with every process, the same number of them: {command} "
        "(on each, with its --process-id)"
    )


def divert_native_output() -> None:
    """In the child: what native libraries write to the C stdout and stderr (JAX's and gRPC's log lines, gloo's
    notes, a fatal error's stack trace) goes to a file, which the parent reads once the child has ended; Python's
    stdout and stderr, which carry gradfit's own output (``--json`` on stdout), stay where they were."""
    try:
        native = os.open(Path(os.environ[WORKER]).with_name(NATIVE_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except (KeyError, OSError):
        return  # no parent folder to write to: native output stays on stderr
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = getattr(sys, name)
        stream.flush()
        own = os.dup(fd)
        os.dup2(native, fd)
        setattr(sys, name, open(own, "w", buffering=1, encoding=stream.encoding, errors=stream.errors))
    os.close(native)


def _die_with_parent() -> None:
    """In the child: a killed parent takes the child along (Linux), so the group sees a process die."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _native_lines(path: Path) -> list[bytes]:
    """The end of what native libraries wrote in the child (nothing when it wrote nothing)."""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, os.fstat(log.fileno()).st_size - _NATIVE_TAIL))
            return log.read().splitlines(keepends=True)
    except OSError:
        return []


def _lost_processes(held: list[bytes]) -> list[str]:
    """The task numbers JAX lists after 'stopped sending heartbeats' (one per line, or comma-separated)."""
    text = b"".join(held).decode(errors="replace")
    match = re.search(r"stopped sending heartbeats\):\s*\n((?:[\d, ]+\n)+)", text)
    if not match:
        return []
    return sorted({n for n in re.findall(r"\d+", match.group(1))}, key=int)


def _flag(argv: list[str], name: str, variable: str | None) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``argv``, else of the environment ``variable``."""
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return os.environ.get(variable) if variable else None


def _distributed_flags(argv: list[str]) -> list[str]:
    """The --distributed flags of the command line, without --process-id (it differs per process)."""
    kept = ["--distributed"]
    for name in ("--coordinator", "--num-processes", "--init-timeout", "--heartbeat-timeout", "--coordinator-bind"):
        value = _flag(argv, name, None)
        if value is not None:
            kept += [name, value]
    return kept


def _mark_failed(run_dir: Path, reason: str, started: float) -> bool:
    """summary.json says failed, unless this session got as far as writing its own summary; True when there is a
    checkpoint to resume from."""
    from gradfit.runs import checkpoints, rundir

    newest = checkpoints.latest(run_dir)
    run = rundir.RunDir(run_dir)
    if run.summary_file.exists() and run.summary_file.stat().st_mtime >= started:
        return newest is not None
    run.write_summary(
        rundir.Summary(
            run_dir=str(run_dir),
            status="failed",
            stop_reason=reason,
            steps=None if newest is None else checkpoints.step_of(newest),
            checkpoint=None if newest is None else str(newest),
        )
    )
    return newest is not None


def tell(info: dict, run_dir: str | None) -> None:
    """In the child: tell the parent this process's number and the run directory (called when training starts)."""
    where = os.environ.get(WORKER)
    if where:
        Path(where).write_text(json.dumps({"run_dir": run_dir, "process": info["process"]}))


def share_run_dir(info: dict) -> str | None:
    """In every process of a group: the run directory as process 0 names it (``info``: ``on_start``'s). Process 0
    puts it in JAX's key-value store of the group, the others read it from there (waiting at most a minute), so that
    a process that outlives process 0 can say how to resume. None when it could not be read."""
    with contextlib.suppress(Exception):  # without it, a survivor only says less
        from jax._src import distributed  # the group's key-value store: JAX has no public entry point for it

        client = distributed.global_state.client
        if client is not None and info["process"] == 0:
            client.key_value_set(_RUN_DIR_KEY, info["run_dir"])
        elif client is not None:
            return client.blocking_key_value_get(_RUN_DIR_KEY, HEARTBEAT_TIMEOUT_S * 1000)
    return info["run_dir"] if info["process"] == 0 else None


class Telling:
    """Progress callbacks that first learn and tell the watching parent where the run is (see ``tell``)."""

    def __init__(self, callbacks: Any | None):
        self._callbacks = callbacks
        self.run_dir: str | None = None
        self.process: int | None = None

    def on_start(self, info: dict) -> None:
        self.process, self.run_dir = info["process"], share_run_dir(info)
        tell(info, self.run_dir)
        if self._callbacks is not None:
            self._callbacks.on_start(info)

    def lost(self, exc: TrainingFailed, argv: list[str]) -> TrainingFailed:
        """``exc`` in a process other than 0 that lost contact with the group (a collective failed), saying itself
        how to resume: process 0, which would say it, may be the process that died. Other errors stand."""
        import jax

        from gradfit.training import failures

        cause = exc.__context__
        if self.process in (None, 0) or not self.run_dir or not isinstance(cause, jax.errors.JaxRuntimeError):
            return exc
        reason = failures.crash_reason(cause, lost=True)
        advice = resume_advice(self.run_dir, argv)
        return TrainingFailed(f"{reason}: a process of the group died or was stopped. {advice}", exc.summary)

    def __getattr__(self, name: str):
        return getattr(self._callbacks, name) if self._callbacks is not None else None
