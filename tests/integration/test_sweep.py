"""gradfit sweep: members vmapped in one program equal their own `gradfit train` runs, a diverging member stays
alone, groups compile once however many blocks they train, a stopped sweep resumes bit for bit, and a hostile
sweep section is refused with its file and line."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import CONFIGS, logged_metrics
from typer.testing import CliRunner

from gradfit.cli.app import app
from gradfit.config.load import resolve_config
from gradfit.errors import ConfigError, Interrupted
from gradfit.sweeps import plan as sweeps
from gradfit.sweeps import run
from gradfit.training import loop

# digits, a small MLP, 4 epochs of 16 steps; early stopping watches every evaluation (every 8 steps)
SMALL = [
    "name=small",
    "data.source=digits",
    "model.kind=mlp",
    "model.hidden=[16]",
    "train.epochs=4",
    "train.batch_size=64",
    "train.log_every=4",
    "train.eval_every=8",
    "train.checkpoint_every=16",
    "train.early_stopping.monitor=val_loss",
    "train.early_stopping.patience=1",
    "optimizer.name=adam",
    "optimizer.learning_rate=0.003",
]
GRID = ["optimizer.learning_rate=[3e-3, 3e-2]", "model.l2=[0, 1e-3]"]


def plan(overrides, path=None, **options):
    resolved = resolve_config(path, overrides, sweep=True)
    return resolved, sweeps.plan_sweep(resolved, **options)


def params(run_dir) -> dict:
    with np.load(Path(run_dir) / "params.npz") as f:
        return dict(f)


def close(a: dict, b: dict, rel: float) -> bool:
    return a.keys() == b.keys() and all(np.max(np.abs(a[k] - b[k])) <= rel * np.max(np.abs(b[k])) for k in a)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """4 settings x 2 seeds of the small MLP, in one block: the reference every test compares with."""
    out = tmp_path_factory.mktemp("sweep")
    return run.start(*plan(SMALL, grid=GRID, seeds=2), out)


def test_each_member_equals_its_own_gradfit_train(swept, tmp_path):
    members = swept["members"]
    assert [m["status"] for m in members] == ["completed"] * 8 and len(swept["groups"]) == 1
    assert swept["groups"][0]["parallel"] == 8 and swept["groups"][0]["traced"] == [
        "model.l2",
        "optimizer.learning_rate",
    ]
    # every member early-stops on its own (here at steps 32, 56 and 64)
    assert len({m["steps"] for m in members}) > 1
    # the 0.03 rate with l2 = 1e-3 and seed 1: every traced value differs from the base's, and it stops early
    member = members[7]
    config = resolve_config(Path(member["run_dir"]) / "config.yaml").config
    assert config.data.seed == 0 and config.seed == member["values"]["seed"] == 1
    alone = loop.fit(config, tmp_path)
    # float32: XLA fuses a vmapped program differently, so equal to 1e-6 relative (4.7e-7 here), not bit for bit
    assert close(params(member["run_dir"]), params(alone.run_dir), 1e-6)
    assert alone.steps == member["steps"] and alone.params_step == member["best_step"]
    assert alone.final["val_loss"] == pytest.approx(member["final"]["val_loss"], rel=1e-5)


def test_a_diverging_member_is_marked_and_leaves_the_others_intact(tmp_path):
    overrides = ["optimizer.name=sgd", "train.steps=20", "train.batch_size=64"]
    state = run.start(*plan(overrides, grid=["optimizer.learning_rate=[0.1, 1e38]"]), tmp_path / "sweep")
    calm, wild = state["members"]
    assert wild["status"] == "failed" and wild["stop_reason"].startswith("diverged")
    assert not (Path(wild["run_dir"]) / "params.npz").exists()
    assert calm["status"] == "completed" and state["status"] == "completed"
    assert state["ranking"][0]["members"] == [0] and state["ranking"][0]["best"]
    assert state["ranking"][1]["failed"] == 1 and not state["ranking"][1]["best"]
    config = resolve_config(Path(calm["run_dir"]) / "config.yaml").config
    assert close(params(calm["run_dir"]), params(loop.fit(config, tmp_path).run_dir), 1e-6)


class CountCompiles(run.SweepCallbacks):
    """The number of XLA compilations (or loads from the persistent cache) seen by each progress event."""

    def __init__(self):
        self.count, self.seen = 0, []
        jax.monitoring.register_event_listener(self.listen)

    def listen(self, event, **kwargs):
        if event in ("/jax/compilation_cache/compile_requests_use_cache", "/jax/core/compile/backend_compile"):
            self.count += 1

    def on_block(self, info):
        self.seen.append(("block", info["group"], self.count))

    def on_chunk(self, step, total_steps, active):
        self.seen.append(("chunk", None, self.count))


def test_groups_compile_once_however_many_blocks_they_train(tmp_path):
    resolved, planned = plan(
        ["train.steps=8", "train.batch_size=64"],
        grid=["optimizer.name=[adam, sgd]", "optimizer.learning_rate=[1e-3, 1e-2]"],
        parallel=1,
    )
    counter = CountCompiles()
    try:
        state = run.start(resolved, planned, tmp_path, counter)
    finally:
        jax.monitoring.unregister_event_listener(counter.listen)
    assert [g["members"] for g in state["groups"]] == [[0, 1], [2, 3]]  # optimizers split, rates do not
    blocks = [i for i, (kind, _, _) in enumerate(counter.seen) if kind == "block"]
    assert len(blocks) == 4
    # the second block of a group compiles nothing: from a group's first block to its end the count stays put
    for first, end in ((blocks[0], blocks[2]), (blocks[2], len(counter.seen))):
        assert len({count for _, _, count in counter.seen[first:end]}) == 1
    assert counter.seen[blocks[2]][2] > counter.seen[blocks[1]][2]  # the second group compiled its own


class StopAtFirstChunk(run.SweepCallbacks):
    def on_chunk(self, step, total_steps, active):
        os.kill(os.getpid(), signal.SIGINT)


def test_a_stopped_sweep_resumes_bit_for_bit_and_its_members_are_normal_runs(swept, tmp_path):
    with pytest.raises(Interrupted, match="gradfit sweep --resume"):
        run.start(*plan(SMALL, grid=GRID, seeds=2), tmp_path, StopAtFirstChunk())
    (sweep_dir,) = tmp_path.iterdir()
    state = json.loads((sweep_dir / "sweep.json").read_text())
    assert state["status"] == "interrupted" and {m["status"] for m in state["members"]} == {"interrupted"}
    stopped = Path(state["members"][0]["run_dir"])
    # a member is a normal run: gradfit train --resume continues it alone (to the sweep's result, 1e-6)
    alone = tmp_path / "alone"
    shutil.copytree(stopped, alone)
    result = CliRunner().invoke(app, ["train", "--resume", str(alone), "--quiet"])
    assert result.exit_code == 0, result.output
    assert close(params(alone), params(swept["members"][0]["run_dir"]), 1e-6)

    resumed = run.resume(sweep_dir)
    assert resumed["status"] == "completed" and resumed["ranking"] == swept["ranking"]
    for mine, reference in zip(resumed["members"], swept["members"]):
        a, b = params(mine["run_dir"]), params(reference["run_dir"])
        assert all(np.array_equal(a[k], b[k]) for k in b), mine["folder"]
        assert logged_metrics(mine["run_dir"]) == logged_metrics(reference["run_dir"])
    result = CliRunner().invoke(app, ["eval", str(stopped)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["sweep", "--resume", str(sweep_dir)])
    assert result.exit_code == 2 and "nothing to resume" in result.output


def test_the_cli_ranks_and_prints_sweep_json_and_float64_members_that_stop_at_their_own_steps_equal_their_runs(
    tmp_path,
):
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "data: {source: breast_cancer}\noptimizer: {name: lbfgs}\ntrain: {steps: 60, tol: 1e-6}\n"
        "runtime: {precision: float64}\nsweep:\n  grid:\n    model.l2: [0.001, 0.1]\n"
        "  metric: val_accuracy\n"
    )
    result = CliRunner().invoke(
        app, ["sweep", str(config), "--json", "--out-dir", str(tmp_path / "runs"), "--quiet"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    state = json.loads(result.stdout)
    assert state["metric"] == "val_accuracy" and [m["values"] for m in state["members"]] == [
        {"model.l2": 0.001},
        {"model.l2": 0.1},
    ]
    best = state["ranking"][0]
    assert best["best"] and best["mean"] == max(m["final"]["val_accuracy"] for m in state["members"])
    assert "Sweep: settings ranked by val_accuracy" in result.stderr
    # with tol each member stops at its own step (the one with the larger penalty converges sooner)
    assert state["members"][1]["steps"] < state["members"][0]["steps"] < 60
    member = state["members"][0]
    alone = loop.fit(resolve_config(Path(member["run_dir"]) / "config.yaml").config, tmp_path)
    assert alone.steps == member["steps"]
    assert close(params(member["run_dir"]), params(alone.run_dir), 1e-12)


def test_rank_orders_by_the_metric_with_mean_and_std_over_seeds():
    def member(setting, status, value, index):
        return {
            "index": index,
            "setting": setting,
            "values": {"x": setting, "seed": index},
            "status": status,
            "final": {"val_loss": value, "val_accuracy": None if value is None else 1 - value},
        }

    members = [
        member(0, "completed", 0.5, 0),
        member(0, "completed", 0.7, 1),
        member(1, "completed", 0.2, 2),
        member(1, "failed", None, 3),
        member(2, "completed", 0.3, 4),
        member(2, "interrupted", 0.1, 5),
    ]
    by_loss = sweeps.rank(members, "val_loss")
    assert [r["setting"] for r in by_loss] == [2, 0, 1]  # a setting with a failed member ranks last
    assert by_loss[0]["best"] and by_loss[0]["pending"] == 1 and by_loss[0]["std"] is None
    assert by_loss[1]["mean"] == pytest.approx(0.6) and by_loss[1]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert [r["setting"] for r in sweeps.rank(members, "val_accuracy")] == [2, 0, 1]


def test_random_search_draws_reproducibly_within_the_ranges():
    options = dict(
        random=6,
        space=[
            "optimizer.learning_rate={log_uniform: [1e-4, 1e-1]}",
            "model.hidden=[[8], [16, 16]]",
            "optimizer.b1={uniform: [0.8, 0.95]}",
        ],
    )
    first = plan(SMALL, **options)[1]
    again = plan(SMALL, **options)[1]
    assert [m.values for m in first.members] == [m.values for m in again.members] and len(first.members) == 6
    for m in first.members:
        assert 1e-4 <= m.values["optimizer.learning_rate"] <= 1e-1 and 0.8 <= m.values["optimizer.b1"] <= 0.95
        assert m.values["model.hidden"] in ([8], [16, 16])
    assert first.swept == {"optimizer.learning_rate": "value", "model.hidden": "program", "optimizer.b1": "value"}


HOSTILE = {
    "unknown key": (
        "grid:\n    optimizer.learnin_rate: [0.1]\n",
        "line 4: sweep.grid.optimizer.learnin_rate: unknown key; did you mean 'optimizer.learning_rate'?",
    ),
    "shared key": (
        "grid:\n    data.val_fraction: [0.1, 0.2]\n",
        "line 4: sweep.grid.data.val_fraction: cannot be swept: every member trains on the same data",
    ),
    "not a list": ("grid:\n    model.l2: 0.1\n", "line 4: sweep.grid.model.l2: Input should be a valid list"),
    "no values": ("grid:\n    model.l2: []\n", "line 4: sweep.grid.model.l2: no values"),
    "typo in the section": ("seed: 3\n", "line 3: sweep.seed: unknown key; allowed: grid, random, seeds"),
    "repeated seeds": ("seeds: [1, 1]\n", "line 3: sweep.seeds: seeds repeat in [1, 1]"),
    "bad metric": (
        "metric: accuracy\n",
        "line 3: sweep.metric: Input should be 'val_loss', 'val_accuracy', 'val_rmse'",
    ),
    "bad distribution": (
        "random:\n    trials: 2\n    space:\n      model.l2: {normal: [0, 1]}\n",
        "line 6: sweep.random.space.model.l2: expected {log_uniform: [lo, hi]}",
    ),
    "log of zero": (
        "random:\n    trials: 2\n    space:\n      model.l2: {log_uniform: [0, 1]}\n",
        "log_uniform: the bounds must be > 0",
    ),
    "swept twice": (
        "grid:\n    model.l2: [0.1]\n  random:\n    trials: 2\n    space:\n      model.l2: [0.2]\n",
        "sweep.random.space.model.l2: swept twice",
    ),
    "a member's value": (
        "grid:\n    optimizer.learning_rate: [0.1, -1]\n",
        "sweep member 1 (optimizer.learning_rate=-1): 1 problem:\n  line 4 (sweep): "
        "optimizer.learning_rate: Input should be greater than 0",
    ),
    "a key that does not apply": (
        "grid:\n    optimizer.momentum: [0.5, 0.9]\n",
        "line 4 (sweep): optimizer.momentum: not used when name is 'adam'",
    ),
    "the same member twice": ("grid:\n    model.l2: [0.1, 0.1]\n", "members 0 and 1 have the same config"),
    "nothing to sweep": ("metric: val_loss\n", "nothing to sweep"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_sweep_section_is_refused_with_its_line(case, tmp_path):
    body, expected = HOSTILE[case]
    path = tmp_path / "config.yaml"
    path.write_text("optimizer: {name: adam}\nsweep:\n  " + body)
    with pytest.raises(ConfigError) as caught:
        plan([], path)
    assert str(caught.value).startswith(str(path)) and expected in str(caught.value), str(caught.value)


def test_the_cli_refuses_bad_sweeps_with_exit_2_and_writes_nothing(tmp_path):
    runner = CliRunner()
    config = tmp_path / "config.yaml"
    config.write_text("sweep:\n  grid:\n    model.l2: [0, 0.1]\n")
    result = runner.invoke(app, ["train", str(config), "--out-dir", str(tmp_path / "runs")], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "line 1: sweep: this config describes a sweep; run gradfit sweep" in result.output
    for args, message in (
        (["--grid", "model.l2=0.1"], "--grid model.l2=0.1: expected KEY=[v1, v2, ...]"),
        (["--grid", "runtime.device=[cpu]"], "--grid: sweep.grid.runtime.device: cannot be swept"),
        (["--seeds", "2", "--parallel", "0"], "--parallel: sweep.parallel: expected auto or a number"),
    ):
        result = runner.invoke(
            app, ["sweep", str(config), "--out-dir", str(tmp_path / "runs"), *args], env={"COLUMNS": "200"}
        )
        assert result.exit_code == 2 and message in result.output, result.output
    # found when the data are loaded, after the sweep folder was made: the folder goes again
    result = runner.invoke(
        app,
        ["sweep", str(config), "--out-dir", str(tmp_path / "runs"), "--set", "train.batch_size=5000"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 2 and "train.batch_size=5000 exceeds the 341 training rows" in result.output
    result = runner.invoke(app, ["sweep", "--resume", str(tmp_path), "--seeds", "2"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "do(es) not apply with --resume" in result.output
    assert not list((tmp_path / "runs").glob("*"))


def test_the_shipped_sweep_is_configs_mlp_yaml_at_24_members_in_one_group():
    resolved = resolve_config(CONFIGS / "sweeps" / "mlp-lr.yaml", sweep=True)
    assert resolved.config == resolve_config(CONFIGS / "mlp.yaml").config
    planned = sweeps.plan_sweep(resolved)
    assert len(planned.members) == 24 and planned.settings == 6
    assert len({sweeps.program_key(m.config) for m in planned.members}) == 1
