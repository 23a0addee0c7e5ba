"""A sweep killed at any moment resumes to exactly the sweep never stopped; a hand-edited plan is refused, and a
plan is bounded and never draws two settings alike.

A kill is simulated in-process at a chosen file write: the folder is copied just before that write (what a
``kill -9`` there leaves on disk) and the copy is resumed. One test kills a real process with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, logged_metrics
from typer.testing import CliRunner

from gradfit import files
from gradfit.cli.app import app
from gradfit.config.load import resolve_config, to_yaml
from gradfit.errors import ConfigError, RunDirError
from gradfit.sweeps import plan as sweeps
from gradfit.sweeps import run

# 3 rates x 3 seeds of a small MLP in blocks of 3: early stopping stops members at different steps (the fastest
# rate's at 30 and 40, one of the middle rate's at 90), so members finish while their block trains on
BASE = [
    "name=k",
    "data.source=digits",
    "model.kind=mlp",
    "model.hidden=[8]",
    "train.steps=120",
    "train.batch_size=32",
    "train.log_every=5",
    "train.eval_every=10",
    "train.checkpoint_every=20",
    "train.early_stopping.monitor=val_loss",
    "train.early_stopping.patience=2",
    "optimizer.name=adam",
]
OPTIONS = dict(grid=["optimizer.learning_rate=[3e-3, 3e-2, 0.3]"], seeds=3, parallel="3")


def plan(overrides=BASE, **options):
    resolved = resolve_config(None, overrides, sweep=True)
    return resolved, sweeps.plan_sweep(resolved, **(options or OPTIONS))


class Killed(BaseException):
    """Raised where the process is killed; what the sweep does after it never reaches the copy that is resumed."""


@contextlib.contextmanager
def writes_watched(log: list, kill_at: int | None = None, folder: Path | None = None, copy: Path | None = None):
    """Count the sweep's file writes (an atomic replace or an append) into ``log``; at write ``kill_at``, copy
    ``folder`` to ``copy`` before the write and raise Killed."""
    real_replace, real_append = os.replace, files.open_append

    def write(path) -> None:
        log.append(str(path))
        if len(log) == kill_at:
            assert folder is not None and copy is not None
            shutil.copytree(folder, copy, symlinks=True)
            raise Killed

    def replace(source, target, *args, **kwargs):
        write(target)
        return real_replace(source, target, *args, **kwargs)

    def append(path, *args, **kwargs):
        write(path)
        return real_append(path, *args, **kwargs)

    os.replace, files.open_append = replace, append
    try:
        yield
    finally:
        os.replace, files.open_append = real_replace, real_append


def fingerprint(sweep_dir: Path) -> dict:
    """Everything a sweep leaves that must not depend on a kill: per member its status, stop, final metrics,
    parameter bytes, log records (less wall-clock times) and checkpoint steps; and the ranking."""
    state = json.loads((sweep_dir / "sweep.json").read_text())
    members = []
    for member in state["members"]:
        folder = sweep_dir / "members" / member["folder"]
        summary = json.loads((folder / "summary.json").read_text())
        with np.load(folder / "params.npz") as saved:
            params = {name: saved[name].tobytes() for name in saved}
        members.append(
            {
                "entry": {k: member.get(k) for k in ("status", "stop_reason", "steps", "final", "best_step")},
                "summary": [summary[k] for k in ("status", "stop_reason", "steps", "final", "params_step")],
                "params": params,
                "metrics": logged_metrics(folder),
                "checkpoints": sorted(p.name for p in (folder / "checkpoints").glob("step-*.npz")),
            }
        )
    return {"status": state["status"], "ranking": state["ranking"], "members": members}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sweep never stopped: its fingerprint and the files it wrote, in order."""
    log: list = []
    with writes_watched(log):
        state = run.start(*plan(), tmp_path_factory.mktemp("reference"))
    assert [m["steps"] for m in state["members"]] == [120, 120, 120, 120, 110, 90, 30, 40, 40]
    return fingerprint(Path(state["sweep_dir"])), [path.split("/members/")[-1] for path in log]


def write_number(writes: list[str], member: str, name: str, nth: int) -> int:
    """The 1-based number of the ``nth`` write of file ``name`` in the folder of member ``member`` (its index;
    "": the sweep's own files)."""
    return [i + 1 for i, path in enumerate(writes) if path.startswith(member) and path.endswith(name)][nth]


# Kill points: (member folder prefix, file written, which write of it: -1 the last). Member 005 stops early at
# step 90 while its block trains on; 006 stops first of the last block. A script that kills this sweep before each
# of its 184 file writes found every resume bit-identical (docs/guides/sweeps.md); these are the points that broke.
KILLS = {
    "between an early-stopped member's final checkpoint and params.npz": ("005", "params.npz", 0),
    "between its params.npz and summary.json": ("005", "summary.json", 0),
    "between the last block's first stop and the next member's checkpoint": ("007", "step-00000040.npz", 0),
    "after every member finished, before sweep.json said so": ("", "sweep.json", -1),
}


@pytest.mark.parametrize("kill", KILLS)
def test_a_sweep_killed_at_any_write_resumes_bit_for_bit(reference, kill, tmp_path):
    expected, writes = reference
    prefix, name, nth = KILLS[kill]
    at = write_number(writes, prefix, name, nth)
    out, copy = tmp_path / "out", tmp_path / "copy"
    out.mkdir()
    with writes_watched([], at, out, copy), contextlib.suppress(Killed):
        run.start(*plan(), out)
    shutil.rmtree(out)
    shutil.move(copy, out)
    (sweep_dir,) = out.iterdir()
    resumed = run.resume(sweep_dir)
    assert resumed["status"] == "completed"
    assert fingerprint(sweep_dir) == expected


KILLER = """
import os, signal, sys
from gradfit.cli.entry import main

target = sys.argv[1]
real_replace = os.replace

def replace(source, path, *args, **kwargs):
    if str(path).endswith(target):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(source, path, *args, **kwargs)

os.replace = replace
sys.argv = ["gradfit", *sys.argv[2:]]
main()
"""


def test_a_sweep_killed_with_sigkill_between_a_final_checkpoint_and_its_outputs_resumes_bit_for_bit(
    reference, tmp_path
):
    expected, _ = reference
    config = tmp_path / "base.yaml"
    config.write_text(to_yaml(resolve_config(None, BASE).config))
    out = tmp_path / "runs"
    args = ["sweep", str(config), "--quiet", "--out-dir", str(out), "--grid", OPTIONS["grid"][0], "--seeds", "3"]
    args += ["--parallel", "3"]
    # the first early-stopped member's summary.json: its final checkpoint and params.npz are written
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "005_learning_rate=0.03_seed=2/summary.json", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (sweep_dir,) = out.iterdir()
    state = json.loads((sweep_dir / "sweep.json").read_text())
    assert state["status"] == "running"  # what a kill leaves: no process said otherwise
    result = CliRunner().invoke(app, ["sweep", "--resume", str(sweep_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert fingerprint(sweep_dir) == expected
    result = CliRunner().invoke(app, ["sweep", "--resume", str(sweep_dir)])
    assert result.exit_code == 2 and "nothing to resume" in result.output


@pytest.fixture
def small_sweep(tmp_path):
    """A small sweep of two settings, its sweep.yaml and sweep.json as written."""
    resolved, planned = plan(["name=e", "train.steps=4"], grid=["model.l2=[0, 0.01]"])
    state = run.start(resolved, planned, tmp_path)
    return Path(state["sweep_dir"])


@pytest.mark.parametrize(
    ("edit", "listed"),
    [
        ({"optimizer": {"b2": 0.99}, "train": {"steps": 8}}, "optimizer.b2: 0.999 -> 0.99; train.steps: 4 -> 8"),
        ({"model": {"l2": 0.5}}, "model.l2: 0.0 -> 0.5"),
        ({"sweep": {"metric": "val_accuracy"}}, "sweep.metric: 'val_loss' -> 'val_accuracy'"),
    ],
)
def test_a_hand_edited_sweep_yaml_is_refused_listing_the_changed_keys(small_sweep, edit, listed):
    import yaml

    plan_file = small_sweep / "sweep.yaml"
    tree = yaml.safe_load(plan_file.read_text())
    for section, values in edit.items():
        tree.setdefault(section, {}).update(values)
    plan_file.write_text(yaml.safe_dump(tree))
    before = {p: p.read_bytes() for p in small_sweep.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError) as caught:
        run.resume(small_sweep)
    message = str(caught.value)
    assert listed in message and "edited since the sweep started" in message, message
    assert "--force" not in message and "device" not in message
    assert {p: p.read_bytes() for p in small_sweep.rglob("*") if p.is_file()} == before


def test_a_sweep_too_large_to_hold_is_refused_at_once_by_sweep_and_validate(tmp_path):
    values = "[" + ", ".join(f"{(i + 1) * 1e-5:.5g}" for i in range(1000)) + "]"
    grid = [f"--grid=optimizer.learning_rate={values}", f"--grid=model.l2={values}", f"--grid=optimizer.b1={values}"]
    tick = time.perf_counter()
    args = ["sweep", str(CONFIGS / "logreg.yaml"), *grid, "--out-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "1,000,000,000 members (1,000 learning_rate x 1,000 l2 x 1,000 b1); at most 10,000" in result.output
    assert time.perf_counter() - tick < 60  # a hang guard: it answers in about a second, it used to run out of memory
    config = tmp_path / "big.yaml"
    config.write_text(
        "sweep:\n  grid:\n" + "".join(f"    {key}: {values}\n" for key in ("model.l2", "optimizer.b1", "optimizer.b2"))
    )
    result = CliRunner().invoke(app, ["config", "validate", str(config)], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "1,000,000,000 members" in result.output, result.output
    assert list(tmp_path.iterdir()) == [config]


def test_random_search_never_draws_two_settings_alike_and_shows_them_apart():
    _, drawn = plan(["name=r"], random=300, space=["optimizer.learning_rate={log_uniform: [1e-4, 1e-1]}"])
    rates = [m.values["optimizer.learning_rate"] for m in drawn.members]
    assert len(set(rates)) == 300 and len({m.label for m in drawn.members}) == 300 and not drawn.notes
    shown = [sweeps.show_value(r) for r in rates]  # read back exactly, in few digits
    assert all(1e-4 <= r <= 1e-1 and float(text) == r and len(text.lstrip("0.")) <= 8 for r, text in zip(rates, shown))
    # a space of two choices holds two settings: both drawn, and a note says so
    _, drawn = plan(["name=r", "model.kind=mlp"], random=4, space=["model.activation=[relu, tanh]"])
    assert sorted(m.values["model.activation"] for m in drawn.members) == ["relu", "tanh"]
    assert drawn.notes == ("random search: 4 trials asked, 2 different settings drawn: the space holds 2",)
    # grid values that differ in the fifth digit show apart
    _, grid = plan(["name=g"], grid=["optimizer.learning_rate=[0.0010001, 0.00100002]"])
    assert [m.label for m in grid.members] == ["learning_rate=0.0010001", "learning_rate=0.00100002"]


def test_non_ascii_digits_for_parallel_are_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            str(CONFIGS / "logreg.yaml"),
            "--grid",
            "model.l2=[0, 0.1]",
            "--parallel",
            "²",
            "--out-dir",
            str(tmp_path),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 2 and "sweep.parallel" in result.output, result.output
    assert not isinstance(result.exception, ValueError) and not list(tmp_path.iterdir())


def test_a_sweep_config_with_too_many_members_says_which_factors(tmp_path):
    with pytest.raises(ConfigError, match=r"20,000 members \(200 l2 x 100 seeds\)"):
        plan(["name=b"], grid=["model.l2=[" + ", ".join(str(i / 1000) for i in range(200)) + "]"], seeds=100)
