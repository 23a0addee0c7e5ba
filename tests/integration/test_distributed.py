"""Several processes (jax.distributed) on this machine: bad settings, different configs, signals, a lost process.

Each process sees two forced CPU devices; see tests/integration/test_scale.py for the mesh itself and for why
forced devices prove results, never speed.
"""

from __future__ import annotations

import contextlib
import json
import os
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
from gradfit.errors import DistributedError
from gradfit.runs import checkpoints
from gradfit.runtime import mesh
from gradfit.training import supervise

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
                "--out-dir",
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


def test_a_process_given_another_number_of_processes_is_refused_by_every_process(tmp_path):
    out = tmp_path / "group"
    args = ["train", str(CONFIGS / "logreg.yaml"), "-q", "--out-dir", str(out), "--set", "train.steps=5"]
    args += ["--set", "train.epochs=null", "--distributed", "--coordinator", f"127.0.0.1:{free_port()}"]
    group = [
        subprocess.Popen(
            gradfit_argv(*args, "--num-processes", told, "--process-id", str(i), "--init-timeout", "60"),
            env=forced_devices(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, told in enumerate(("2", "3"))
    ]  # JAX forms the group process 0 asks for: process 1 would train in it as one of 2 without a word
    for code, _, stderr in finish(group, timeout=300):
        assert code == 2, stderr
        assert stderr.strip().splitlines() == [
            "error: the processes were given different --num-processes: process 0 formed a group of 2, process 1 "
            "was given 3; give every process the same --num-processes (or JAX_NUM_PROCESSES)"
        ], stderr
    assert not out.exists(), "nothing was written"


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (hex, as /proc/net/tcp and tcp6 write them)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, and as IPv4 mapped into IPv6


@pytest.mark.skipif(not Path("/proc/net/tcp6").exists(), reason="reads the listening sockets from /proc/net")
def test_when_process_0_dies_the_survivor_says_how_to_resume_in_one_line(tmp_path):
    config = tmp_path / "mlp.yaml"
    config.write_text((CONFIGS / "mlp.yaml").read_text())
    out = tmp_path / "group"
    run = [*GROUP_RUN[:2], "train.steps=3000", *GROUP_RUN[3:]]  # far from done when process 0 is killed
    group = start_group(["train", str(config), "-q", "--out-dir", str(out), *sum((["--set", s] for s in run), [])])
    wait_for_checkpoint(out, group)
    coordinator = group[0].args[group[0].args.index("--coordinator") + 1]
    # the coordinator, which authenticates no one, listens on the address --coordinator names, not on every one
    listening = listening_addresses(int(coordinator.rpartition(":")[2]))
    assert listening and listening <= LOOPBACK, listening
    group[0].kill()  # its training child, which runs the coordinator, goes with it
    (code0, _, _), (code1, _, stderr1) = finish(group, timeout=300)
    assert code0 == -signal.SIGKILL and code1 == 1, stderr1
    (run_dir,) = out.iterdir()
    # gloo's next all-reduce fails first, or JAX ends the process when the coordinator stops answering: either
    # way one line (no gRPC notes), and it says itself how to resume, since process 0 cannot
    lines = stderr1.strip().splitlines()
    assert len(lines) == 1, stderr1
    assert lines[0].startswith(("error: lost contact with another process", "error: lost process 0")), lines[0]
    assert f"gradfit train --resume {run_dir} --distributed --coordinator {coordinator} --num-processes 2" in lines[0]


def group_of_one(tmp_path) -> tuple[subprocess.Popen, Path]:
    """``gradfit train --distributed`` as a group of one process, and the /proc file listing its children."""
    argv = ["train", str(CONFIGS / "mlp.yaml"), "-q", "--out-dir", str(tmp_path / "runs"), "--distributed"]
    argv += ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "1", "--process-id", "0"]
    process = subprocess.Popen(gradfit_argv(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, Path(f"/proc/{process.pid}/task/{process.pid}/children")


def diverted(pid: int) -> bool:
    """Whether the training process ``pid`` has sent its descriptor 2 to the file of native output (after it
    installed its signal handlers, before it imports JAX)."""
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/{pid}/fd/2").endswith(supervise.NATIVE_LOG)
    return False


@pytest.mark.skipif(
    not Path(f"/proc/self/task/{os.getpid()}/children").exists(), reason="finds the training process in /proc"
)
def test_a_signal_before_training_ends_a_distributed_process_with_its_one_line(tmp_path):
    process, children = group_of_one(tmp_path)
    deadline = time.monotonic() + 120
    while not (children.read_text().split() and diverted(int(children.read_text().split()[0]))):
        assert process.poll() is None and time.monotonic() < deadline, "the training process did not get ready"
        time.sleep(0.005)
    # forwarded to the training process, which says it was interrupted on its Python stderr, not on descriptor 2
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: SIGTERM"), stderr


@pytest.mark.skipif(
    not Path(f"/proc/self/task/{os.getpid()}/children").exists(), reason="finds the training process in /proc"
)
def test_a_signal_while_the_training_process_starts_is_an_interruption(tmp_path):
    process, children = group_of_one(tmp_path)
    deadline = time.monotonic() + 120
    while not any(b"gradfit" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children.read_text().split()):
        assert process.poll() is None and time.monotonic() < deadline, "no training process started"
        time.sleep(0.001)
    # the training process is an interpreter starting up, which dies of the signal; the parent forwards it once it
    # returned from starting the child (a signal before that ends the parent itself, which says the same)
    time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["interrupted: SIGTERM"], stderr
    assert not (tmp_path / "runs").exists()


def test_a_signal_or_a_lost_process_stops_the_whole_group_which_then_resumes(tmp_path):
    config = tmp_path / "mlp.yaml"
    config.write_text((CONFIGS / "mlp.yaml").read_text())
    out = tmp_path / "group"
    args = ["train", str(config), "-q", "--out-dir", str(out), *sum((["--set", s] for s in GROUP_RUN), [])]

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
        (["--coordinator-bind", "0.0.0.0"], "--coordinator-bind applies with --distributed"),
        (
            ["--distributed", "--coordinator", "127.0.0.1:9", "--num-processes", "2", "--process-id", "0"]
            + ["--coordinator-bind", "::"],
            "--coordinator-bind '::': expected an address",
        ),
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


@pytest.mark.parametrize(
    "bind, listens",
    [
        (None, "10.0.0.1:1234"),  # the coordinator's own address, not JAX's default of every interface
        ("0.0.0.0", "0.0.0.0:1234"),
        ("[::]", "[::]:1234"),
        ("10.0.0.2", "10.0.0.2:1234"),
        ("10.0.0.2:4321", "10.0.0.2:4321"),
    ],
)
def test_the_coordinator_listens_on_its_own_address_unless_told(bind, listens):
    assert mesh.coordinator_bind("10.0.0.1:1234", bind) == listens


def test_start_processes_passes_the_bind_address_to_jax(monkeypatch):
    asked: dict = {}

    def initialize(*args, **kwargs):
        asked.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(mesh.jax.distributed, "initialize", initialize)
    monkeypatch.setattr(mesh.jax.config, "update", lambda *args: None)  # gloo: not for this test's process
    monkeypatch.delenv(mesh.BIND_VARIABLE, raising=False)
    with pytest.raises(DistributedError, match="could not join the 2 processes at host-a:1234"):
        mesh.start_processes("host-a:1234", 2, 1, 1, 10)  # process 1: process 0 would first try to listen
    assert asked["coordinator_bind_address"] == "host-a:1234"
    monkeypatch.setenv(mesh.BIND_VARIABLE, "[::]")
    with pytest.raises(DistributedError):
        mesh.start_processes("host-a:1234", 2, 1, 1, 10)
    assert asked["coordinator_bind_address"] == "[::]:1234"


# JAX's report when the coordinator (process 0) is gone, as the child of process 1 wrote it (shortened)
LEADER_GONE = [
    b"W1207 11:47:14.868225   26458 preemption_sync_manager.cc:147] Failed to retrieve preemption notice from "
    b"coordination service: UNAVAILABLE: Socket closed\n",
    b"Additional GRPC error information from remote target coordination_service while calling "
    b"/xla.coordination.CoordinationService/GetKeyValue:\n",
    b"F1207 11:47:14.868617   26458 client.h:80] Terminating process because the JAX distributed service detected "
    b"fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task "
    b"was preempted/died/restarted unexpectedly or this task is experiencing network issues.\n",
]


def test_a_process_that_jax_ends_when_process_0_is_gone_names_it_and_says_how_to_resume(tmp_path):
    argv = ["train", "c.yaml", "--distributed", "--coordinator", "10.0.0.1:1234", "--num-processes", "2"]
    run_dir = tmp_path / "mlp-20261207-120000"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-00000030.npz").write_bytes(b"")
    line = supervise._ended(argv, LEADER_GONE, [], -signal.SIGABRT, {"run_dir": str(run_dir), "process": 1})
    assert line.startswith("lost process 0: the JAX coordinator it runs stopped answering"), line
    assert f"gradfit train --resume {run_dir} --distributed --coordinator 10.0.0.1:1234 --num-processes 2" in line


def test_a_coordinator_that_cannot_listen_is_one_line_and_exit_2(tmp_path):
    port = free_port()
    process = subprocess.run(
        gradfit_argv(
            "train",
            str(CONFIGS / "logreg.yaml"),
            "-q",
            "--out-dir",
            str(tmp_path / "runs"),
            "--distributed",
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            "1",
            "--process-id",
            "0",
            "--coordinator-bind",
            "192.0.2.1",  # TEST-NET-1: never an address of this host
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 2, process.stderr
    assert process.stderr.strip().splitlines() == [
        f"error: process 0 cannot listen on 192.0.2.1:{port} for the other processes (Cannot assign requested "
        "address); choose a free port in --coordinator, or an address of this host with --coordinator-bind"
    ], process.stderr
