"""A distributed training process, watched by a small parent that reports how it ended.

When one process of a ``jax.distributed`` group dies, JAX ends every other process of the group once the lost
one misses its heartbeats: a C++ fatal error and ``abort()``, which no Python code survives, with a native stack
trace on stderr. So ``gradfit train --distributed`` runs the training in a child process and stays light itself
(no JAX): it passes the child's output through, holds back JAX's native log lines, forwards signals, and when
JAX ends the child it prints one line naming the lost process, marks the run failed in summary.json (process 0)
and exits 1. Nothing here starts other processes of the group: a launcher (SLURM, mpirun, ssh, a shell) does.
"""

from __future__ import annotations

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

INIT_TIMEOUT_S = 300  # the defaults of --init-timeout and --heartbeat-timeout
HEARTBEAT_TIMEOUT_S = 60
WORKER = "GRADFIT_DISTRIBUTED_WORKER"  # set in the child: the file where it says which run it writes
_JAX_LOG = re.compile(rb"^[EFWI]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\]")  # absl's prefix
_NATIVE = (b"*** ", b"    @ ", b"[Gloo] ")  # a native stack trace; gloo's connection notes


def wanted(argv: list[str]) -> bool:
    """True in the process a user started with ``gradfit train --distributed`` (not in its child)."""
    return "train" in argv and "--distributed" in argv and WORKER not in os.environ


def run(argv: list[str]) -> int:
    """Run ``gradfit *argv`` in a child process and return the exit code to end with."""
    with tempfile.TemporaryDirectory(prefix="gradfit-") as folder:
        told = Path(folder) / "run.json"
        child = subprocess.Popen(
            [sys.executable, "-m", "gradfit", *argv],
            stderr=subprocess.PIPE,
            env={**os.environ, WORKER: str(told)},
            preexec_fn=_die_with_parent,
        )
        signals: list[int] = []

        def forward(signum, frame):  # a second signal stops the child at once, even inside a collective
            signals.append(signum)
            child.send_signal(signal.SIGKILL if len(signals) > 1 else signum)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, forward)
        held = _pass_through(child.stderr)
        code = child.wait()
        if code >= 0:  # the child ended itself: its own message and exit code stand (JAX's report adds nothing)
            return code
        run = {**json.loads(told.read_text()), "started": told.stat().st_mtime} if told.exists() else {}
    if any(b"/RegisterTask" in line for line in held):  # JAX gave up reaching the coordinator
        coordinator = _flag(argv, "--coordinator", "JAX_COORDINATOR_ADDRESS")
        timeout = _flag(argv, "--init-timeout", None) or INIT_TIMEOUT_S
        print(
            f"error: could not join the processes at {coordinator} within {timeout} s; check that process 0 runs "
            "and that the address and port are reachable from here",
            file=sys.stderr,
        )
        return 2
    lost = _lost_processes(held)
    who = f"process {', '.join(lost)}" if lost else "another process of the group"
    if len(signals) > 1 and code == -signal.SIGKILL:
        reason = f"stopped at once by a second {signal.Signals(signals[-1]).name}"
    elif lost or any(b"heartbeat" in line for line in held):
        reason = f"lost {who}: it stopped sending heartbeats to the JAX coordinator, and JAX ended this process"
    else:
        reason = f"the training process was ended by {signal.Signals(-code).name}"
    message = f"error: {reason}"
    run_dir = run.get("run_dir")
    if run_dir and run.get("process") == 0:
        message += f"; {run_dir}/summary.json says failed"
        if _mark_failed(Path(run_dir), reason, run["started"]):
            command = shlex.join(["gradfit", "train", "--resume", run_dir, *_distributed_flags(argv)])
            message += (
                f". Resume from the newest checkpoint with every process, the same number of them: "
                f"{command} (on each, with its --process-id)"
            )
        else:
            message += ". No checkpoint was written before it: start the run again"
    print(message, file=sys.stderr)
    return 1


def native_output_to_stderr() -> None:
    """In the child: what native libraries print (gloo writes to the C stdout) goes to stderr, where the parent
    holds it back, so that stdout carries only gradfit's own output (``--json``)."""
    python_stdout = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = open(python_stdout, "w", buffering=1, encoding=sys.stdout.encoding, errors=sys.stdout.errors)


def _die_with_parent() -> None:
    """In the child: a killed parent takes the child along (Linux), so the group sees a process die."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_OWN = (b"error:", b"interrupted:", b"note:")  # how gradfit's own messages begin


def _pass_through(stream) -> list[bytes]:
    """Copy the child's stderr to ours line by line, without native notes (gloo's, JAX's info and warnings);
    JAX's error reports (from an E or F line up to gradfit's own next message) are held back and returned."""
    held: list[bytes] = []
    in_report = False
    for line in iter(stream.readline, b""):
        if _JAX_LOG.match(line) and line[:1] in (b"E", b"F"):
            in_report = True  # a report runs over several lines, up to the stack trace
        elif line.startswith(_OWN):
            in_report = False
        if in_report:
            held.append(line)
        elif not (_JAX_LOG.match(line) or line.startswith(_NATIVE) or b"connected peer ranks" in line):
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
    return held


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
    for name in ("--coordinator", "--num-processes", "--init-timeout", "--heartbeat-timeout"):
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


def tell(info: dict) -> None:
    """In the child: tell the parent which run this process writes (called when training starts)."""
    where = os.environ.get(WORKER)
    if where:
        process = info["process"]
        Path(where).write_text(json.dumps({"run_dir": info["run_dir"] if process == 0 else None, "process": process}))


class Telling:
    """Progress callbacks that first tell the watching parent where the run is (see ``tell``)."""

    def __init__(self, callbacks: Any | None):
        self._callbacks = callbacks

    def on_start(self, info: dict) -> None:
        tell(info)
        if self._callbacks is not None:
            self._callbacks.on_start(info)

    def __getattr__(self, name: str):
        return getattr(self._callbacks, name) if self._callbacks is not None else None
