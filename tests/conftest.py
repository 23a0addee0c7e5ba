"""Shared helpers: tiny configs and the repository paths."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gradfit.config.load import make_config  # noqa: F401  (the tests import it from here)

# the suite runs in two pytest-xdist workers: on a GPU, neither may take 75% of its memory up front (JAX's default)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """Every test, in-process or a CLI subprocess, shares one fresh persistent compile cache, never the user's:
    the suite compiles the same small programs many times, and loading them saves about a third of its time."""
    from gradfit.runtime import compile_cache as cache

    base = tmp_path_factory.getbasetemp()  # under xdist, each worker's folder is in the session's
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax-cache"
    previous = os.environ.get("GRADFIT_COMPILE_CACHE")
    os.environ["GRADFIT_COMPILE_CACHE"] = str(folder)
    cache.enable(folder)
    yield folder
    if previous is None:
        del os.environ["GRADFIT_COMPILE_CACHE"]
    else:
        os.environ["GRADFIT_COMPILE_CACHE"] = previous


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return tmp_path / "runs"


def has_gpu() -> bool:
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


requires_gpu = pytest.mark.skipif(not has_gpu(), reason="needs a GPU")
requires_no_gpu = pytest.mark.skipif(has_gpu(), reason="this machine has a GPU")


@pytest.fixture
def one_window_chunks(monkeypatch):
    """Chunks of one log window each, so that a run stops exactly at the log point a signal arrives at.

    By default a chunk grows to ~0.1 s of steps and Ctrl-C stops the run at the end of the chunk in flight.
    """
    from gradfit.training import session

    monkeypatch.setattr(session, "CHUNK_SECONDS", 0.0)


class InterruptAt:
    """Training callbacks that send this process a real SIGINT at one log point: the same path as Ctrl-C.

    Use with ``one_window_chunks`` for the run to stop at exactly that step."""

    def __init__(self, step: int):
        self.step = step

    def on_start(self, info: dict) -> None: ...

    def on_log(self, record: dict) -> None:
        if record["step"] == self.step:
            os.kill(os.getpid(), signal.SIGINT)

    def on_end(self, summary) -> None: ...


# ---------------------------------------------------------------------------- several devices and processes


def forced_devices(n: int) -> dict:
    """The environment of a subprocess whose CPU JAX splits into ``n`` devices (set before JAX starts)."""
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def write_csv(path: Path, header: list[str], rows) -> Path:
    """A CSV file with a header line and rows (any values; the csv module quotes what needs it)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def gradfit_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "gradfit", *args]


def logged_metrics(run_dir) -> list[dict]:
    """metrics.jsonl without wall-clock times, which differ between any two runs."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_group(args: list[str], n: int = 2, heartbeat: int = 60) -> list[subprocess.Popen]:
    """``gradfit train ARGS --distributed`` in ``n`` processes of 2 devices each on this machine."""
    flags = [
        "--distributed",
        "--coordinator",
        f"127.0.0.1:{free_port()}",
        "--num-processes",
        str(n),
        "--init-timeout",
        "60",
        "--heartbeat-timeout",
        str(heartbeat),
    ]
    return [
        subprocess.Popen(
            gradfit_argv(*args, *flags, "--process-id", str(i)),
            env=forced_devices(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]


def finish(processes: list[subprocess.Popen], timeout: float = 180) -> list[tuple[int, str, str]]:
    return [(p.wait(timeout=timeout), *p.communicate()) for p in processes]
