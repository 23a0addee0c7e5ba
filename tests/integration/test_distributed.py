"""Several processes (jax.distributed) on this machine: bad settings, different configs, signals, a lost process.

Each process sees two forced CPU devices; see tests/integration/test_scale.py for the mesh itself and for why
forced devices prove results, never speed.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import CONFIGS, finish, forced_devices, free_port, gradfit_argv, logged_metrics, start_group
from typer.testing import CliRunner

from gradfit.cli.app import app
from gradfit.runs import checkpoints

# long enough to be stopped after its first checkpoint (a group of 2 processes reducing over gloo takes
# ~60 steps/s here), short enough to resume quickly; one small hidden layer compiles sooner
GROUP_RUN = (
    "model.hidden=[16]",
    "train.epochs=null",
    "train.steps=120",
    "train.checkpoint_every=30",
    "train.log_every=10",
    "optimizer.schedule.warmup_steps=5",
)


def wait_for_checkpoint(out: Path, group: list[subprocess.Popen], after: int = -1) -> int:
    """The step of the first checkpoint past step ``after`` under ``out``, once it is written."""
    deadline = time.monotonic() + 120
    while True:
        steps = [checkpoints.step_of(p) for p in out.glob("*/checkpoints/step-*.npz")]
        if any(step > after for step in steps):
            return max(steps)
        assert all(p.poll() is None for p in group), [p.communicate() for p in group]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


def test_processes_given_different_configs_refuse_to_start(tmp_path):
    config = tmp_path / "mlp.yaml"
    config.write_text((CONFIGS / "mlp.yaml").read_text())
    out = tmp_path / "group"
    flags = ["--distributed", "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
    group = [
        subprocess.Popen(
            gradfit_argv(
                "train",
                str(config),
                "-q",
                "-o",
                str(out),
                "--set",
                f"train.steps={steps}",
                "--set",
                "train.epochs=null",
                *flags,
                "--process-id",
                str(i),
            ),
            env=forced_devices(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, steps in enumerate((50, 80))
    ]  # process 1 asked for more steps
    results = finish(group, timeout=600)
    for code, _, stderr in results:
        assert code == 2, stderr
        assert "process 1 of 2 was given another config or other data than process 0" in stderr, stderr
    assert not out.exists(), "nothing was written"


def test_a_signal_or_a_lost_process_stops_the_whole_group_which_then_resumes(tmp_path):
    config = tmp_path / "mlp.yaml"
    config.write_text((CONFIGS / "mlp.yaml").read_text())
    out = tmp_path / "group"
    args = ["train", str(config), "-q", "-o", str(out), *sum((["--set", s] for s in GROUP_RUN), [])]

    # SIGTERM to one process: every process stops at the same step, with a checkpoint, exit 130
    group = start_group(args, heartbeat=4)
    wait_for_checkpoint(out, group)
    group[1].send_signal(signal.SIGTERM)
    (code0, _, stderr0), (code1, _, stderr1) = finish(group, timeout=600)
    assert code0 == 130 and code1 == 130, stderr0 + stderr1
    assert "a signal to another process" in stderr0 and "SIGTERM" in stderr1
    (run_dir,) = out.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "a signal to another process" in summary["stop_reason"]
    stopped_at = summary["steps"]
    assert checkpoints.step_of(checkpoints.latest(run_dir)) == stopped_at

    # one process killed mid-run: the other stops within the heartbeat timeout and marks the run failed
    group = start_group(["train", "--resume", str(run_dir), "-q"], heartbeat=4)
    wait_for_checkpoint(out, group, after=stopped_at)
    killed = time.monotonic()
    group[1].kill()  # its training child goes with it
    (code0, _, stderr0), (code1, _, _) = finish(group, timeout=600)
    assert time.monotonic() - killed < 90
    assert code0 == 1 and code1 == -signal.SIGKILL
    # either gloo's next all-reduce fails first (connection reset) or JAX's heartbeat check ends the process
    lines = stderr0.strip().splitlines()
    assert len(lines) == 1, stderr0
    assert lines[0].startswith(("error: lost process 1:", "error: lost contact with another process")), lines[0]
    assert f"--resume {run_dir}" in lines[0] and "--distributed" in lines[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["stop_reason"].startswith("lost ")

    # and it resumes from its newest checkpoint, the metrics continuing without a gap or a repeat
    (code0, _, stderr0), (code1, _, stderr1) = finish(start_group(["train", "--resume", str(run_dir), "-q"]))
    assert code0 == 0 and code1 == 0, stderr0 + stderr1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 120
    assert [r["from_step"] for r in summary["resumes"]][0] == stopped_at
    assert all(r["reproduced_checkpoint_metrics"] for r in summary["resumes"])
    steps = [r["step"] for r in logged_metrics(run_dir)]
    assert steps == list(range(10, 121, 10)), "no duplicated or missing records"


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, message",
    [
        (["--distributed", "--coordinator", "127.0.0.1:9", "--num-processes", "2"], "--distributed needs --process-id"),
        (
            ["--distributed", "--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
            "expected HOST:PORT",
        ),
        (
            ["--distributed", "--coordinator", "127.0.0.1:9", "--num-processes", "2", "--process-id", "2"],
            "--process-id 2 is outside 0..1",
        ),
        (["--process-id", "1"], "--process-id applies with --distributed"),
    ],
)
def test_distributed_settings_are_checked_before_joining(args, message, monkeypatch):
    for name in (
        "JAX_COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID",
        "SLURM_JOB_ID",
        "OMPI_COMM_WORLD_SIZE",
    ):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["train", str(CONFIGS / "logreg.yaml"), *args])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.fixture(scope="module", autouse=True)
def unreachable():
    """``gradfit train --distributed`` towards a coordinator that is not there, started with the module: it spends
    its seconds waiting for JAX to give up, alongside the other tests. Gives outcome() -> (exit code, stderr,
    seconds it took)."""
    held = socket.socket()  # bound, never listening: connections are refused, and no free_port() can pick it
    held.bind(("127.0.0.1", 0))
    started = time.monotonic()
    process = subprocess.Popen(
        gradfit_argv(
            "train",
            str(CONFIGS / "logreg.yaml"),
            "-q",
            "--distributed",
            "--coordinator",
            f"127.0.0.1:{held.getsockname()[1]}",
            "--num-processes",
            "2",
            "--process-id",
            "1",
            "--init-timeout",
            "1",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ended: dict = {}

    def wait() -> None:
        ended["stderr"] = process.communicate()[1]
        ended["seconds"] = time.monotonic() - started

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()

    def outcome() -> tuple[int, str, float]:
        waiter.join(timeout=120)
        assert not waiter.is_alive(), "gradfit did not give up on the coordinator within 120 s"
        return process.returncode, ended["stderr"], ended["seconds"]

    yield outcome
    if process.poll() is None:
        process.kill()
    waiter.join(timeout=30)
    held.close()


def test_an_unreachable_coordinator_is_one_line_and_exit_2(unreachable):
    returncode, stderr, seconds = unreachable()
    assert returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "could not join the processes at 127.0.0.1:" in lines[0] and "within 1 s" in lines[0], lines
    assert seconds < 60
