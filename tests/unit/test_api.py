"""The Python API with the inputs notebooks give it: DataFrames and Arrow tables matched by column name, and
wrong argument types or values refused with gradfit's own one-line errors."""

from __future__ import annotations

import enum
import io
import math
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import gradfit
from gradfit import api
from gradfit.data import dataset
from gradfit.data.columns import feature_matrix
from gradfit.errors import ConfigError, DataError, GradfitError, RunDirError

CONFIG = {
    "name": "api",
    "data": {"source": "breast_cancer"},
    "model": {"kind": "logistic", "l2": 0.001},
    "optimizer": {"name": "lbfgs"},
    "train": {"steps": 20, "log_every": 10},
    "runtime": {"precision": "float64"},
}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """A float64 logistic regression on the built-in breast cancer data, its run loaded back, and the data as a
    DataFrame (30 named feature columns) with its labels."""
    folder = tmp_path_factory.mktemp("api")
    summary = gradfit.fit(CONFIG, out_dir=folder / "runs")
    frame = pd.read_csv(dataset.builtin_path("breast_cancer"))
    labels = frame.pop("target")
    return {"run": gradfit.load_run(summary.run_dir), "x": frame, "y": labels, "folder": folder}


class FakeFrame:
    """The least a DataFrame-like table offers: ``.columns`` (names) and ``table[name]`` (a column)."""

    def __init__(self, data: dict):
        self.data = data

    @property
    def columns(self) -> list:
        return list(self.data)

    def __getitem__(self, name):
        return self.data[name]


def reversed_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame.columns[::-1]]


# ------------------------------------------------------------------------------------- tables matched by name


def test_a_dataframe_is_matched_by_column_name_not_position(made):
    run, frame, y = made["run"], made["x"], made["y"]
    in_order = run.predict_proba(frame.to_numpy())
    shuffled = reversed_frame(frame)
    assert np.array_equal(run.predict_proba(shuffled), in_order)
    assert np.array_equal(run.predict(shuffled), run.predict(frame.to_numpy()))
    assert run.evaluate(shuffled, y) == run.evaluate(frame.to_numpy(), y.to_numpy())
    assert np.array_equal(run.standardize(shuffled), run.standardize(frame.to_numpy()))
    # the check that matters: a positional read of the reversed columns would change many predictions
    assert (run.predict(shuffled.to_numpy()) != run.predict(frame.to_numpy())).sum() > 10


def test_arrow_tables_and_record_batches_are_matched_by_name(made):
    run, frame = made["run"], made["x"]
    expected = run.predict_proba(frame.to_numpy())
    table = pa.Table.from_pandas(reversed_frame(frame), preserve_index=False)
    assert np.array_equal(run.predict_proba(table), expected)
    assert np.array_equal(run.predict_proba(table.to_batches()[0]), expected)


def test_any_object_with_columns_is_matched_by_name(made):
    run, frame = made["run"], made["x"]
    fake = FakeFrame({name: frame[name].to_numpy() for name in reversed(frame.columns)})
    assert np.array_equal(run.predict_proba(fake), run.predict_proba(frame.to_numpy()))


def test_a_table_that_cannot_be_indexed_by_name_is_a_data_error(made):
    class Lazy:  # like a polars LazyFrame: names its columns, but they are not there yet
        columns = made["run"].feature_names

    with pytest.raises(DataError, match=r"^x: column 'mean_radius': cannot be read from a Lazy \(TypeError"):
        made["run"].predict(Lazy())


def test_a_polars_frame_is_matched_by_name(made):
    pl = pytest.importorskip("polars")
    run, frame = made["run"], made["x"]
    assert np.array_equal(run.predict_proba(pl.from_pandas(reversed_frame(frame))), run.predict_proba(frame.to_numpy()))


def test_the_label_column_is_ignored_as_gradfit_predict_ignores_it(made):
    run, frame, y = made["run"], made["x"], made["y"]
    with_labels = frame.assign(target=y)
    assert np.array_equal(run.predict_proba(with_labels), run.predict_proba(frame))


def test_missing_columns_are_named_with_the_expected_ones(made):
    run, frame = made["run"], made["x"]
    with pytest.raises(DataError, match=r"^x: .*missing 'worst_symmetry'.*expected 'mean_radius', 'mean_texture'"):
        run.predict(frame.drop(columns=["worst_symmetry"]))


def test_unexpected_and_duplicated_columns_are_refused_by_name(made):
    run, frame = made["run"], made["x"]
    with pytest.raises(DataError, match=r"^x: .*unexpected 'patient_id'"):
        run.predict(frame.assign(patient_id=1.0))
    doubled = pd.concat([frame, frame[["mean_radius"]]], axis=1)
    with pytest.raises(DataError, match=r"^x: .*duplicated 'mean_radius'"):
        run.predict(doubled)


def test_a_frame_without_column_names_points_at_to_numpy(made):
    run, frame = made["run"], made["x"]
    unnamed = pd.DataFrame(frame.to_numpy())  # columns 0..29
    with pytest.raises(DataError, match=r"^x: .*column names.*to_numpy\(\)"):
        run.predict(unnamed)


@pytest.mark.parametrize(
    "column, message",
    [
        (["a", "b"] * 2, r"column 'mean_area' is not numeric \(holds 'a', a str\)"),
        (pd.Categorical([1.0, 2.0, 1.0, 2.0]), r"column 'mean_area' is categorical"),
        (pd.to_datetime(["2020-01-01"] * 4), r"column 'mean_area' is not numeric \(datetime64"),
        (pd.array([1.0, None, 2.0, 3.0], dtype="Float64"), r"^x row 1: column 'mean_area' is missing .*data.missing"),
        (pd.array([True, None, False, True], dtype="boolean"), r"^x row 1: column 'mean_area' is missing"),
    ],
)
def test_a_column_that_is_not_numbers_is_named(made, column, message):
    run = made["run"]
    frame = made["x"].head(4).copy()
    frame["mean_area"] = column
    with pytest.raises(DataError, match=r"^x: " + message if message.startswith("column") else message):
        run.predict(frame)


def test_an_arrow_column_of_text_or_with_nulls_is_named(made):
    run = made["run"]
    table = pa.Table.from_pandas(made["x"].head(3), preserve_index=False)
    index = table.column_names.index("mean_area")
    with pytest.raises(DataError, match=r"column 'mean_area' is not numeric \(holds 'x', a str\)"):
        run.predict(table.set_column(index, "mean_area", pa.array(["x", "y", "z"])))
    with pytest.raises(DataError, match=r"column 'mean_area' is categorical"):
        run.predict(table.set_column(index, "mean_area", pa.array(["x", "y", "x"]).dictionary_encode()))
    with pytest.raises(DataError, match=r"^x row 1: column 'mean_area' is missing"):
        run.predict(table.set_column(index, "mean_area", pa.array([1, None, 3])))


def test_plain_arrays_need_the_training_width_and_numbers(made):
    run, x = made["run"], made["x"].to_numpy()
    with pytest.raises(DataError, match=r"^x: expected an \(n, 30\) array"):
        run.predict(x[:, :29])
    with pytest.raises(DataError, match=r"^x: expected an \(n, 30\) array"):
        run.predict(x[0])
    with pytest.raises(DataError, match=r"^x: .*not numeric.*text"):
        run.predict(x.astype(str))
    booleans = np.zeros((2, 30), dtype=bool)  # numbers to NumPy: 0 and 1
    assert run.predict_proba(booleans).shape == (2, 2)


def test_the_conversion_takes_every_column_in_table_order_without_names():
    # what gradfit.fit(config, X=...) will need: no run, so every column but the ignored ones, in table order
    frame = pd.DataFrame({"b": [1, 2], "target": ["u", "v"], "a": [0.5, 1.5]})
    x, names = feature_matrix(frame, ignore=("target",))
    assert names == ["b", "a"] and x.dtype == np.float64 and x.tolist() == [[1.0, 0.5], [2.0, 1.5]]
    x, names = feature_matrix([[1, 2], [3, 4]])
    assert names is None and x.shape == (2, 2)


# ------------------------------------------------------------------------------------------------ sweep configs


def test_fit_refuses_a_config_dict_with_a_sweep_section(made, tmp_path):
    with pytest.raises(ConfigError, match=r"^<dict>: sweep: .*gradfit sweep CONFIG"):
        gradfit.fit({"name": "x", "sweep": {"seeds": 2}}, out_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_fit_and_resume_refuse_a_config_file_with_a_sweep_section(made, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: x\nsweep:\n  seeds: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"line 2: sweep: .*gradfit sweep"):
        gradfit.fit(path, out_dir=tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"line 2: sweep: .*gradfit sweep"):
        api.resume(made["run"].run_dir, path)


def test_resume_refuses_a_config_dict_with_a_sweep_section(made):
    with pytest.raises(ConfigError, match=r"^<dict>: sweep: .*gradfit sweep CONFIG"):
        api.resume(made["run"].run_dir, {**CONFIG, "sweep": {"seeds": 2}})


# ------------------------------------------------------------------------------------------------ overrides


@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (np.float32("inf"), "inf"), (-math.inf, "-inf")])
def test_a_non_finite_override_is_reported_as_it_is(value, shown):
    with pytest.raises(ConfigError, match=rf"optimizer.learning_rate: .*\(got {shown}\)"):
        api.resolve({"name": "x"}, {"optimizer.learning_rate": value})


def test_overrides_keep_their_values_exactly():
    class Optimizer(str, enum.Enum):
        adam = "adam"

    values = {"optimizer.learning_rate": 0.1 + 0.2, "model.l2": np.float64(1e-5), "seed": np.int64(7)}
    config = api.resolve({"model": {"kind": "logistic"}}, {**values, "optimizer.name": Optimizer.adam})
    assert config.optimizer.learning_rate == 0.1 + 0.2 and config.model.l2 == 1e-5 and config.seed == 7
    assert config.optimizer.name == "adam"
    for text in ("label, #1: 'yes'", "null", "true", "1e-3", "[a]"):  # text stays text, however YAML reads it
        config = api.resolve({"data": {"source": "file", "path": "x.csv"}}, {"data.target": text})
        assert config.data.target == text


# ------------------------------------------------------------------------------------------------ wrong types


def wrong_calls(made) -> list:
    run, x, folder = made["run"], made["x"].to_numpy(), made["folder"]
    fine = {"name": "x", "train": {"steps": 2}}
    return [
        (lambda: gradfit.fit(42), ConfigError, r"^config: .*YAML file.*got int"),
        (lambda: gradfit.fit(None), ConfigError, r"^config: .*got None"),
        (lambda: api.resolve(b"c.yaml"), ConfigError, r"^config: .*got bytes"),
        (lambda: gradfit.fit(fine, overrides=5), ConfigError, r"^overrides: .*got int"),
        (lambda: gradfit.fit(fine, overrides=[5]), ConfigError, r"^overrides: .*'key=value' strings.*got int"),
        (lambda: gradfit.fit(fine, overrides={1: 2}), ConfigError, r"^overrides: .*keys.*got 1"),
        (lambda: gradfit.fit(fine, overrides={"name": object()}), ConfigError, r"^overrides\['name'\]: .*object"),
        (lambda: gradfit.fit(fine, out_dir=None), RunDirError, r"^out_dir: .*got None"),
        (lambda: gradfit.fit(fine, out_dir=5), RunDirError, r"^out_dir: .*got int"),
        (lambda: gradfit.fit(fine, out_dir=folder, callbacks=print), ConfigError, r"^callbacks: .*on_log"),
        (lambda: gradfit.fit(fine, out_dir=folder, progress="yes"), ConfigError, r"^progress: .*True, False or None"),
        (lambda: api.resume(run.run_dir, progress=1), ConfigError, r"^progress: .*got int"),
        (lambda: gradfit.load_run(3.5), RunDirError, r"^run_dir: .*got float"),
        (lambda: gradfit.load_run(None), RunDirError, r"^run_dir: .*got None"),
        (lambda: api.resume(5), RunDirError, r"^run_dir: .*got int"),
        (lambda: api.resume(run.run_dir, config=5), ConfigError, r"^config: .*got int"),
        (lambda: api.resume(run.run_dir, force="yes"), ConfigError, r"^force: .*True or False.*got str"),
        (lambda: run.predict("abc"), DataError, r"^x: .*array.*table.*got str"),
        (lambda: run.predict(None), DataError, r"^x: .*got None"),
        (lambda: run.predict({"mean_radius": [1.0]}), DataError, r"^x: .*pandas.DataFrame.*got dict"),
        (lambda: run.predict_proba([[1.0, 2.0], [3.0]]), DataError, r"^x: not an array of numbers"),
        (lambda: run.evaluate(x, None), DataError, r"^y: .*569 labels.*got None"),
        (lambda: run.evaluate(x, "benign"), DataError, r"^y: .*569 labels.*got str"),
        (lambda: run.inference(level="x"), ConfigError, r"^level: .*between 0.5 and 0.9999.*got 'x'"),
        (lambda: run.inference(level=95), ConfigError, r"^level: .*between 0.5 and 0.9999.*got 95"),
        (lambda: run.inference(level=True), ConfigError, r"^level: "),
        (lambda: run.inference(scale="raw"), ConfigError, r"^scale: .*'original' or 'standardized'.*got 'raw'"),
        (lambda: run.inference(scale=5), ConfigError, r"^scale: "),
    ]


def test_wrong_argument_types_and_values_are_gradfit_errors_naming_the_argument(made):
    for call, error, message in wrong_calls(made):
        with pytest.raises(GradfitError) as caught:
            call()
        assert type(caught.value) is error, (message, caught.value)
        assert "\n" not in str(caught.value), str(caught.value)
        assert caught.match(message)


def test_good_arguments_still_work(made):
    run = made["run"]
    table = run.inference(scale="standardized", level=0.9)
    assert table.level == 0.9 and table.scale == "standardized"
    assert isinstance(Path(run.run_dir), Path)


# ------------------------------------------------------------------------------------------------- progress

QUICK = {**CONFIG, "name": "shown", "optimizer": {"name": "sgd", "learning_rate": 0.1}, "train": {"steps": 4}}


class Steps:
    """A caller's own callbacks: the steps it was told of."""

    def __init__(self):
        self.steps: list[int] = []

    def on_log(self, record: dict) -> None:
        self.steps.append(record["step"])


def test_progress_shows_training_on_stderr_and_false_is_silent(tmp_path, capsys, monkeypatch):
    from gradfit.training import progress

    told = Steps()
    gradfit.fit(QUICK, out_dir=tmp_path, progress=True, callbacks=told)
    shown = capsys.readouterr()
    assert shown.out == ""
    assert "logistic on breast_cancer: 31 parameters, 4 steps" in shown.err and "run directory: " in shown.err
    assert "step 4/4" in shown.err  # not a terminal: log lines, the last step among them
    assert told.steps[-1] == 4  # the caller's callbacks are told as well
    gradfit.fit(QUICK, out_dir=tmp_path, progress=False)
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(progress, "default_on", lambda: True)  # as in a terminal or a notebook
    gradfit.fit(QUICK, out_dir=tmp_path)
    assert "step 4/4" in capsys.readouterr().err


class Stream(io.StringIO):
    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


def test_progress_is_on_by_default_in_a_terminal_or_a_notebook_only(monkeypatch):
    from gradfit.training import progress

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(sys, "stderr", Stream(terminal=False))
    assert not progress.default_on()  # a script whose stderr is redirected, a test run
    monkeypatch.setattr(sys, "stderr", Stream(terminal=True))
    assert progress.default_on()
    monkeypatch.setattr(sys, "stderr", Stream(terminal=False))  # as in a notebook: a kernel's own stream
    shell = types.SimpleNamespace()  # IPython in a terminal: no kernel
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert not progress.default_on()
    shell.kernel = object()  # a notebook's IPython kernel
    assert progress.default_on()


@pytest.mark.parametrize("widgets", [True, False])
def test_a_notebook_gets_a_live_bar_only_where_ipywidgets_can_redraw_it(monkeypatch, widgets):
    from rich.console import Console

    from gradfit.training import progress

    asked = []
    monkeypatch.setattr(progress.importlib.util, "find_spec", lambda name: asked.append(name) or (widgets or None))
    notebook = Console(file=io.StringIO(), force_jupyter=True)
    assert progress.TrainProgress(notebook).live is widgets and asked == ["ipywidgets"]
    assert not progress.TrainProgress(Console(file=io.StringIO(), force_terminal=False)).live
