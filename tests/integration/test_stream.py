"""Streamed data (data.in_memory: false): the same run as in memory, bit for bit, and resumable after SIGKILL.

A streamed run reads its minibatches from a converted folder (or generates synthetic rows) a group of steps at a
time; in memory, the same rows are gathered on the device. For the same train.shuffle mode the parameters must
be identical to the last bit on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import gradfit_argv, make_config
from test_resume import killed_then_resumed, metrics
from typer.testing import CliRunner

from gradfit.cli.app import app
from gradfit.config.load import to_yaml
from gradfit.data import dataset, feed, load, shuffle, synthetic, tabular
from gradfit.data import streamed as stream
from gradfit.data.convert import convert
from gradfit.errors import ConfigError, DataError
from gradfit.runs import rundir
from gradfit.runs.rundir import Summary
from gradfit.training.loop import fit

MLP = (
    "name=mlp",
    "model.kind=mlp",
    "model.hidden=[16]",
    "train.batch_size=50",
    "train.log_every=4",
    "optimizer={name: adam, learning_rate: 0.01}",
    "data.source=file",
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """The built-in digits table as a converted folder."""
    folder = tmp_path_factory.mktemp("converted") / "digits"
    convert(dataset.builtin_path("digits"), folder)
    return folder


def params(summary: Summary) -> dict:
    return rundir.load_arrays(Path(summary.run_dir) / "params.npz")


def assert_same_params(left: dict, right: dict) -> None:
    a, b = params(left), params(right)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key, strict=True)


@pytest.mark.parametrize("mode", ["full", "blocks"])
def test_streamed_params_equal_in_memory_bit_for_bit(digits, tmp_path, monkeypatch, mode):
    # groups of 2 log windows (8 steps): chunks end at group ends that are not epoch ends (21 steps per epoch)
    monkeypatch.setattr(feed, "GROUP_BYTES", 8 * 50 * 64 * 4)
    common = (*MLP, f"data.path={digits}", f"train.shuffle={mode}", "train.steps=48", "train.epochs=null")
    memory = fit(make_config(*common, "data.in_memory=true"), tmp_path / "memory")
    streamed = fit(make_config(*common, "data.in_memory=false"), tmp_path / "streamed")
    assert_same_params(memory, streamed)
    trained = [[r["batch_objective"] for r in metrics(s.run_dir) if "batch_objective" in r] for s in (memory, streamed)]
    assert trained[0] == trained[1] and len(trained[0]) >= 12
    # evaluation reads the splits in other blocks: equal to rounding, not to the bit
    assert streamed.final["val_loss"] == pytest.approx(memory.final["val_loss"], rel=1e-5)
    assert streamed.final["test_accuracy"] == memory.final["test_accuracy"]


def test_convert_then_train_equals_train_on_the_csv(digits, tmp_path):
    common = (*MLP, "train.steps=30", "train.epochs=null")
    on_csv = fit(make_config(*common, f"data.path={dataset.builtin_path('digits')}"), tmp_path / "csv")
    on_folder = fit(make_config(*common, f"data.path={digits}"), tmp_path / "folder")
    assert_same_params(on_csv, on_folder)
    assert (
        json.loads((Path(on_csv.run_dir) / "preprocessing.json").read_text())["standardize"]
        == json.loads((Path(on_folder.run_dir) / "preprocessing.json").read_text())["standardize"]
    )


def test_streamed_synthetic_rows_equal_the_in_memory_ones(monkeypatch):
    # the training equality itself is the converted-folder test above: here, the same rows, bits and casts
    monkeypatch.setattr(synthetic, "SYNTHETIC_BLOCK", 1000)
    config = make_config(
        "data.source=synthetic",
        "data.synthetic.n_samples=4500",
        "data.synthetic.n_classes=3",
        "model.kind=mlp",
        "train.batch_size=64",
        "train.shuffle=blocks",
        "seed=3",
    )
    spec = config.data.synthetic
    whole_x, whole_y = synthetic.make_synthetic(4500, spec.n_features, spec.n_classes, spec.separation, spec.noise, 3)
    part_x, part_y = synthetic.synthetic_rows(spec, 3, 1990, 3010)  # across two block boundaries
    np.testing.assert_array_equal(part_x, whole_x[1990:3010], strict=True)
    np.testing.assert_array_equal(part_y, whole_y[1990:3010])
    memory, streamed = dataset.load_dataset(config, "blocks"), stream.load_streamed(config)
    assert streamed.classes == memory.classes and streamed.digest() != memory.digest()
    np.testing.assert_array_equal(streamed.mean, memory.mean, strict=True)
    np.testing.assert_array_equal(streamed.std, memory.std, strict=True)
    for name in ("train", "val", "test"):
        split = getattr(memory, name)
        x, y = getattr(streamed, name).take(np.arange(len(split)), np.float32, np.float32)
        expected_x, expected_y = dataset.split_arrays(split, memory.n_classes, np.float32)
        np.testing.assert_array_equal(x, expected_x, strict=True)
        np.testing.assert_array_equal(y, expected_y, strict=True)


def test_block_shuffle_visits_every_row_once_per_epoch_from_one_window_at_a_time():
    n = 5 * 100 + 23  # five whole blocks of 100 rows, and a tail that stays in the last window
    order = jax.jit(shuffle.block_permuted, static_argnums=(1, 3, 4))
    first, small = (np.asarray(order(jax.random.PRNGKey(k), n, jnp.arange(n), 100, 3)) for k in (1, 0))
    assert np.array_equal(np.sort(first), np.arange(n)) and not np.array_equal(first, small)
    assert np.array_equal(np.sort(small), np.arange(n))
    for start in range(0, 5 * 100 - 300, 300):  # each window of 3 blocks holds 3 whole blocks of rows
        blocks = np.unique(small[start : start + 300] // 100)
        assert len(blocks) == 3 and all(np.sum(small[start : start + 300] // 100 == b) == 100 for b in blocks)


def test_sigkill_then_resume_of_a_streamed_run_is_bit_exact(digits, tmp_path):
    killed_then_resumed(
        (
            *MLP,
            f"data.path={digits}",
            "data.in_memory=false",
            "train.steps=200",
            "train.epochs=null",
            "train.log_every=1",
            "train.checkpoint_every=40",
            "train.keep_checkpoints=2",
        ),
        tmp_path,
        40,
    )


def test_what_cannot_stream_is_refused_with_the_way_out(digits, tmp_path):
    csv_file = dataset.builtin_path("digits")
    with pytest.raises(DataError, match=r"only a folder made by 'gradfit data convert'.*gradfit data convert"):
        load.decide(make_config(*MLP, f"data.path={csv_file}", "data.in_memory=false"))
    with pytest.raises(ConfigError, match="train.batch_size: streamed data train on minibatches"):
        load.decide(make_config(*MLP, f"data.path={digits}", "data.in_memory=false", "train.batch_size=null"))
    assert load.decide(make_config(*MLP, f"data.path={digits}")) is False  # auto: small enough for memory
    assert load.decide(make_config(*MLP, f"data.path={digits}"), device_bytes=1000) is True  # auto: too large


def test_eval_and_predict_read_a_streamed_runs_splits_and_folders(digits, tmp_path):
    # log_every=1, as the SIGKILL test above: the same program, loaded from the compile cache
    summary = fit(
        make_config(
            *MLP,
            f"data.path={digits}",
            "data.in_memory=false",
            "train.steps=20",
            "train.epochs=null",
            "train.log_every=1",
        ),
        tmp_path / "runs",
    )
    runner = CliRunner()
    result = runner.invoke(app, ["eval", summary.run_dir, "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] == summary.final["test_accuracy"]
    result = runner.invoke(app, ["predict", summary.run_dir, str(digits)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "row,prediction" and len(lines) == 1 + 1797 and lines[1].startswith("0,")


# ---------------------------------------------------------------------------------------------- the file under a run


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="as-chosen"),
        pytest.param({"PIECE_BYTES": 1 << 15}, id="spans-in-many-pieces"),
        pytest.param({"MAX_SPAN_SHARE": 1e9, "MIN_SPAN_BYTES": 0}, id="reads-only"),
        pytest.param({"MAX_SPAN_SHARE": 0}, id="map-only"),
    ],
)
def test_the_row_reader_returns_exactly_the_files_rows(digits, monkeypatch, settings):
    for name, value in settings.items():
        monkeypatch.setattr(stream, name, value)
    source = stream.ConvertedRows(tabular.open_table(digits))
    x, y = np.load(digits / "X.npy"), np.load(digits / "y.npy")
    rng = np.random.default_rng(0)
    # a run of the file, rows close together (spans read whole), scattered rows (the memory map), none, and
    # repeats (a group of minibatches that crosses an epoch), one of them as long as a run
    close, repeated = np.sort(rng.choice(1797, 1000, replace=False)), np.sort(rng.integers(0, 1797, 3000))
    for rows in (np.arange(10, 400), close, np.array([3, 900, 1790]), [], repeated, [5, 5, 7]):
        rows = np.asarray(rows, np.int64)
        got_x, got_y = source.read(rows)
        np.testing.assert_array_equal(got_x, x[rows], strict=True)
        np.testing.assert_array_equal(got_y, y[rows], strict=True)


def test_a_data_file_that_shrinks_under_the_reader_is_an_error_not_a_signal(digits, tmp_path):
    folder = Path(shutil.copytree(digits, tmp_path / "data"))
    source = stream.ConvertedRows(tabular.open_table(folder))
    source.read(np.arange(1797))  # every page of the memory map touched once
    os.truncate(folder / "X.npy", 4096)
    for rows in (np.arange(1700, 1797), np.array([3, 900, 1790])):  # read, and gathered from the map
        with pytest.raises(stream.DataChanged, match=r"X.npy: changed size during training") as raised:
            source.read(rows)
        assert raised.value.exit_code == 1
    source.x.size = 4096  # as if it shrank after the size check: the read comes back short
    with pytest.raises(stream.DataChanged, match="changed size during training"):
        source.x.read(np.arange(1700, 1797))


def test_a_data_file_truncated_during_a_streamed_run_fails_it_in_one_line(digits, tmp_path):
    folder = Path(shutil.copytree(digits, tmp_path / "data"))
    config = make_config(*MLP, f"data.path={folder}", "data.in_memory=false", "train.steps=100000", "train.epochs=null")
    config_file = tmp_path / "run.yaml"
    config_file.write_text(to_yaml(config), encoding="utf-8")
    runs = tmp_path / "runs"
    process = subprocess.Popen(
        gradfit_argv("train", str(config_file), "-q", "--out-dir", str(runs)), stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not any(path.stat().st_size for path in runs.glob("*/metrics.jsonl")):  # training has begun
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "no metrics were logged"
            time.sleep(0.01)
        os.truncate(folder / "X.npy", 4096)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    message = stderr.strip()
    assert process.returncode == 1, stderr  # not 135: SIGBUS
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert f"{folder / 'X.npy'}: changed size during training" in message
    (run_dir,) = runs.iterdir()
    summary = Summary.read(run_dir / "summary.json")
    assert summary.status == "failed" and "changed size during training" in summary.stop_reason
    assert summary.steps < 100000


def test_a_data_file_truncated_under_early_stopping_still_leaves_a_failed_summary(digits, tmp_path, monkeypatch):
    """The best parameters are saved, and the final evaluation that cannot read the data is left out."""
    monkeypatch.setattr(feed, "GROUP_BYTES", 8 * 50 * 64 * 4)  # groups of 8 steps: read again soon after

    class TruncateAt:
        def on_log(self, record: dict) -> None:
            if record["step"] == 8:
                os.truncate(folder / "X.npy", 4096)

    folder = Path(shutil.copytree(digits, tmp_path / "data"))
    config = make_config(
        *MLP,
        f"data.path={folder}",
        "data.in_memory=false",
        "train.steps=400",
        "train.epochs=null",
        "train.eval_every=4",
        "train.early_stopping={monitor: val_loss, patience: 1000}",
    )
    with pytest.raises(stream.DataChanged, match="changed size during training"):
        fit(config, tmp_path / "runs", TruncateAt())
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = Summary.read(run_dir / "summary.json")
    assert summary.status == "failed" and "changed size during training" in summary.stop_reason
    assert summary.params_step == 8 and (run_dir / "params.npz").exists()
