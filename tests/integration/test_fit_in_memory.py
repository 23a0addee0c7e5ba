"""``gradfit.fit(config, X=..., y=...)``: rows held in memory train as the same rows in a file do.

- the same rows as a CSV file and as a NumPy array, a pandas, a polars DataFrame or a pyarrow Table give
  bit-identical parameters (float64 L-BFGS);
- the run says ``data.source: memory``, and what would re-read its rows from the command line asks for a file;
- the checks and messages are a Parquet file's, naming ``X`` and the row; ``data.categorical`` and
  ``data.missing`` apply;
- ``y``, ``sample_weight``, ``X_val`` / ``y_val``: their checks, and the splits they make;
- a numeric target (``model.kind: linear``) from a DataFrame.

Feature values go through files as Python's shortest round-trip text (or Parquet), and the CSVs that the rows in
memory are compared with are parsed by pyarrow, so every path sees the same float64 values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, write_csv
from typer.testing import CliRunner

import gradfit
from gradfit.cli.app import app
from gradfit.config.schema import data_seed
from gradfit.data.dataset import split_indices
from gradfit.errors import ConfigError, DataError

pl = pytest.importorskip("polars")

runner = CliRunner()

# float64 L-BFGS: a few steps, exactly reproducible
CONFIG = {
    "name": "memory",
    "model": {"kind": "logistic", "l2": 0.001},
    "optimizer": {"name": "lbfgs"},
    "train": {"steps": 20, "log_every": 10},
    "runtime": {"precision": "float64"},
}
N_SMALL = 60


def with_data(**data) -> dict:
    return {**CONFIG, "data": data}


def params(run_dir) -> dict[str, np.ndarray]:
    with np.load(Path(run_dir) / "params.npz") as npz:
        return {name: npz[name] for name in npz.files}


def record(run_dir, name: str) -> dict:
    return json.loads((Path(run_dir) / name).read_text())


def run_config(run_dir) -> dict:
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())


def assert_same_params(a, b) -> None:
    first, second = params(a), params(b)
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name].dtype == second[name].dtype == np.float64, name
        assert np.array_equal(first[name], second[name]), f"{name}: max diff {np.abs(first[name] - second[name]).max()}"


def fit(out: Path, config=CONFIG, **kwargs):
    return gradfit.fit(config, out_dir=out, **kwargs)


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray]:
    """The built-in breast cancer rows: features (569, 30) float64 as pyarrow parses the CSV, labels as text."""
    table = pa_csv.read_csv(ROOT / "data" / "breast_cancer.csv")
    labels = np.array(table.column("target").to_pylist(), dtype=object)
    x = np.column_stack([table.column(n).to_numpy().astype(np.float64) for n in table.column_names if n != "target"])
    return x, labels


@pytest.fixture(scope="module")
def small() -> tuple[pd.DataFrame, np.ndarray]:
    """60 rows of two numeric columns a, b, and labels yes/no that depend on a."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=N_SMALL), "b": rng.normal(size=N_SMALL)})
    labels = np.where(frame["a"] + 0.5 * rng.normal(size=N_SMALL) > 0, "yes", "no").astype(object)
    return frame, labels


def x_names(d: int) -> list[str]:
    return [f"x{j}" for j in range(d)]


def write_rows(path: Path, x: np.ndarray, labels: np.ndarray) -> Path:
    """A CSV of columns x0.. and target; each number as its shortest round-trip text."""
    return write_csv(path, [*x_names(x.shape[1]), "target"], [[*map(repr, r), t] for r, t in zip(x.tolist(), labels)])


# ---------------------------------------------------------------------------------------- a file and X agree


@pytest.fixture(scope="module")
def from_file(cancer, tmp_path_factory) -> Path:
    """The breast cancer rows as a CSV with columns x0..x29 (the names an array's columns get), trained as a file."""
    x, labels = cancer
    folder = tmp_path_factory.mktemp("file")
    path = write_rows(folder / "rows.csv", x, labels)
    return Path(fit(folder / "runs", with_data(source="file", path=str(path))).run_dir)


def as_kind(kind: str, x: np.ndarray, labels: np.ndarray):
    """(X, y) of one kind; y None when X holds the target column."""
    frame = pd.DataFrame(x, columns=x_names(x.shape[1]))
    return {
        "numpy": lambda: (x, labels),
        "pandas": lambda: (frame, pd.Series(labels, name="diagnosis")),
        "pandas, target column in X": lambda: (frame.assign(target=labels), None),
        "polars": lambda: (pl.from_pandas(frame), pl.Series("y", labels.tolist())),
        "pyarrow": lambda: (pa.Table.from_pandas(frame, preserve_index=False), pa.array(labels.tolist())),
    }[kind]()


@pytest.mark.parametrize("kind", ["numpy", "pandas", "pandas, target column in X", "polars", "pyarrow"])
def test_rows_in_memory_give_bit_identical_params_to_the_same_rows_in_a_file(kind, cancer, from_file, tmp_path):
    x, labels = as_kind(kind, *cancer)
    summary = fit(tmp_path, X=x, y=labels)
    assert summary.status == "completed"
    assert_same_params(from_file, summary.run_dir)
    mine, theirs = record(summary.run_dir, "preprocessing.json"), record(from_file, "preprocessing.json")
    assert mine["feature_names"] == theirs["feature_names"] == x_names(30)
    for key in ("classes", "label_encoding", "standardize", "rows", "encoding", "target"):
        assert mine[key] == theirs[key], key
    assert mine["dataset"] == "X"
    assert record(summary.run_dir, "summary.json")["final"] == record(from_file, "summary.json")["final"]


# ---------------------------------------------------------------------------------------- the run and the CLI


@pytest.fixture(scope="module")
def memory_run(cancer, tmp_path_factory) -> dict:
    """A run trained on a DataFrame of the breast cancer rows (columns x0..x29), and that table as a CSV."""
    x, labels = cancer
    folder = tmp_path_factory.mktemp("memory")
    frame = pd.DataFrame(x, columns=x_names(30))
    summary = fit(folder / "runs", X=frame, y=labels)
    data = write_rows(folder / "new.csv", x, labels)
    return {"run": Path(summary.run_dir), "frame": frame, "labels": labels, "data": data}


MEMORY_MESSAGE = "data.source: memory: the rows were handed over in Python"


def test_the_run_config_says_source_memory_without_a_path(memory_run):
    data = run_config(memory_run["run"])["data"]
    assert data["source"] == "memory"
    assert "path" not in data and "synthetic" not in data
    assert data["val_fraction"] == 0.2 and data["test_fraction"] == 0.2  # the split keys still apply


def test_training_the_run_config_from_the_command_line_asks_for_a_file(memory_run, tmp_path):
    out = tmp_path / "runs"
    result = runner.invoke(app, ["train", str(memory_run["run"] / "config.yaml"), "--out-dir", str(out)])
    assert result.exit_code == 2, result.output
    assert MEMORY_MESSAGE in result.output and "(data.source: file, data.path)" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())  # refused before a run directory is made


def test_eval_without_data_asks_for_a_file_and_with_data_evaluates(memory_run):
    run = str(memory_run["run"])
    refused = runner.invoke(app, ["eval", run])
    assert refused.exit_code == 2, refused.output
    assert MEMORY_MESSAGE in refused.output and "--data" in refused.output
    assert "Traceback" not in refused.output

    result = runner.invoke(app, ["eval", run, "--data", str(memory_run["data"]), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)  # the table before it goes to stderr
    expected = gradfit.load_run(run).evaluate(memory_run["frame"], memory_run["labels"])
    assert metrics["rows"] == 569
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert metrics["log_loss"] == pytest.approx(expected["log_loss"], rel=1e-9)


def test_resuming_the_run_with_force_asks_for_a_file(memory_run):
    # the run completed: resuming it needs --force and more steps, and then its rows
    result = runner.invoke(app, ["train", "--resume", str(memory_run["run"]), "--force", "--set", "train.steps=30"])
    assert result.exit_code == 2, result.output
    assert MEMORY_MESSAGE in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------- checks and messages


def parquet_message(tmp_path, frame: pd.DataFrame, labels, config: dict) -> str:
    """The DataError of training ``frame`` (with the labels as its target column) as a Parquet file, its path
    written as X."""
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(frame.assign(target=labels), preserve_index=False), path)
    with pytest.raises(DataError) as caught:
        fit(tmp_path / "file-runs", {**config, "data": {**config.get("data", {}), "source": "file", "path": str(path)}})
    return str(caught.value).replace(str(path), "X")


def test_a_text_column_without_data_categorical_is_refused_as_in_a_file(small, tmp_path):
    frame, labels = small
    texts = frame.assign(colour=["red", "green", "blue"] * 20)
    with pytest.raises(
        DataError, match=r"^X: column 'colour' holds \w*string, not numbers; name it in data.categorical"
    ) as caught:
        fit(tmp_path / "runs", X=texts, y=labels)
    assert str(caught.value) == parquet_message(tmp_path, texts, labels, CONFIG)
    assert not (tmp_path / "runs").exists()


def test_a_missing_cell_names_x_the_row_and_the_column_as_in_a_file(small, tmp_path):
    frame, labels = small
    holed = frame.copy()
    holed.loc[7, "b"] = np.nan  # the 8th row: rows count from 0, as a Parquet file's
    with pytest.raises(
        DataError, match=r"^X: row 7: column 'b' is missing \(an empty cell or NA\); set data.missing"
    ) as caught:
        fit(tmp_path / "runs", X=holed, y=labels)
    assert str(caught.value) == parquet_message(tmp_path, holed, labels, CONFIG)
    # a pandas nullable integer's NA, and polars' null, are missing cells too
    with pytest.raises(DataError, match=r"^X: row 2: column 'k' is missing"):
        fit(tmp_path / "runs", X=frame.assign(k=pd.array([1, 2, None] * 20, dtype="Int64")), y=labels)
    with pytest.raises(DataError, match=r"^X: row 7: column 'b' is missing"):
        fit(tmp_path / "runs", X=pl.from_pandas(holed), y=labels)


def test_categorical_auto_one_hot_encodes_category_and_text_columns(small, tmp_path):
    frame, labels = small
    mixed = frame.assign(shape=pd.Categorical(["square", "circle", "star"] * 20), colour=["red", "blue"] * 30)
    config = with_data(categorical="auto")
    summary = fit(tmp_path / "memory", config, X=mixed, y=labels)
    pre = record(summary.run_dir, "preprocessing.json")
    assert pre["feature_names"] == ["a", "b", "shape=circle", "shape=square", "shape=star", "colour=blue", "colour=red"]
    kinds = {c["name"]: (c["kind"], c.get("categories")) for c in pre["encoding"]["columns"]}
    assert kinds == {
        "a": ("numeric", None),
        "b": ("numeric", None),
        "shape": ("categorical", ["circle", "square", "star"]),
        "colour": ("categorical", ["blue", "red"]),
    }
    # the same rows as a CSV, where auto finds the text columns: the same model
    path = write_csv(
        tmp_path / "mixed.csv",
        ["a", "b", "shape", "colour", "target"],
        [
            [repr(a), repr(b), s, c, t]
            for a, b, s, c, t in zip(mixed["a"], mixed["b"], mixed["shape"], mixed["colour"], labels)
        ],
    )
    from_file = fit(tmp_path / "file", with_data(categorical="auto", source="file", path=str(path)))
    assert_same_params(from_file.run_dir, summary.run_dir)
    assert record(from_file.run_dir, "preprocessing.json")["feature_names"] == pre["feature_names"]


def test_missing_mean_imputes_with_the_training_rows_mean(small, tmp_path):
    frame, labels = small
    holed = frame.copy()
    holed.loc[[3, 7, 20, 41], "b"] = np.nan
    summary = fit(tmp_path, with_data(missing="mean"), X=holed, y=labels)
    assert summary.status == "completed"
    pre = record(summary.run_dir, "preprocessing.json")
    assert pre["feature_names"] == ["a", "b"]
    train, _, _ = split_indices(N_SMALL, 0.2, 0.2, data_seed(gradfit.load_run(summary.run_dir).config))
    fills = {c["name"]: c["fill"] for c in pre["encoding"]["columns"]}
    assert fills["b"] == pytest.approx(np.nanmean(holed["b"].to_numpy()[train]), rel=1e-12)
    assert np.isfinite(summary.final["test_loss"])


# ---------------------------------------------------------------------------------------- y


def test_y_given_separately_or_as_the_target_column_trains_the_same(small, tmp_path):
    frame, labels = small
    apart = fit(tmp_path / "apart", X=frame, y=labels)
    inside = fit(tmp_path / "inside", X=frame.assign(target=labels))
    named = fit(tmp_path / "named", with_data(source="memory", target="label"), X=frame.assign(label=labels))
    assert_same_params(apart.run_dir, inside.run_dir)
    assert_same_params(apart.run_dir, named.run_dir)
    assert record(named.run_dir, "preprocessing.json")["target"] == "label"
    assert record(apart.run_dir, "preprocessing.json")["classes"] == ["no", "yes"]


def test_data_target_names_the_label_column_of_x_with_a_builtin_source_config(small, tmp_path):
    frame, labels = small
    summary = fit(
        tmp_path,
        ROOT / "configs" / "logreg.yaml",
        X=frame.assign(label=labels),
        overrides={"data.target": "label", "train.steps": 5},
    )
    assert record(summary.run_dir, "preprocessing.json")["target"] == "label"


def test_y_of_the_wrong_length_is_a_data_error_naming_y(small, tmp_path):
    frame, labels = small
    with pytest.raises(DataError, match=r"^y: expected 60 values, one per row of X, got 10$"):
        fit(tmp_path, X=frame, y=labels[:10])
    with pytest.raises(DataError, match=r"^y: expected 60 values, one per row of X, got 61$"):
        fit(tmp_path, X=frame, y=np.append(labels, "yes"))
    assert not tmp_path.joinpath("runs").exists()


def test_y_given_while_x_holds_the_target_column_is_a_data_error(small, tmp_path):
    frame, labels = small
    with pytest.raises(DataError, match=r"^X: has a column 'target' and y is given too; pass the labels once"):
        fit(tmp_path, X=frame.assign(target=labels), y=labels)


def test_no_y_and_no_target_column_names_the_missing_label_column(small, tmp_path):
    frame, _ = small
    with pytest.raises(DataError, match=r"^X: no label column 'target' .*'a', 'b'"):
        fit(tmp_path, X=frame)
    with pytest.raises(DataError, match=r"^X: no label column 'label'"):
        fit(tmp_path, with_data(source="memory", target="label"), X=frame)


def test_a_missing_label_names_its_row(small, tmp_path):
    frame, labels = small
    with pytest.raises(DataError, match=r"^X: row 4: missing label in column 'target'$"):
        fit(tmp_path, X=frame, y=np.where(np.arange(N_SMALL) == 4, None, labels))


# ---------------------------------------------------------------------------------------- sample_weight


def test_weights_of_one_train_as_no_weights(small, tmp_path):
    frame, labels = small
    plain = fit(tmp_path / "plain", X=frame, y=labels)
    weighed = fit(tmp_path / "weighed", X=frame, y=labels, sample_weight=np.ones(N_SMALL))
    first, second = params(plain.run_dir), params(weighed.run_dir)
    for name in first:
        np.testing.assert_allclose(second[name], first[name], rtol=1e-12, atol=1e-12, err_msg=name)
    assert run_config(weighed.run_dir)["data"]["weight"] == "sample_weight"
    assert record(weighed.run_dir, "preprocessing.json")["weight"] == "sample_weight"
    assert record(weighed.run_dir, "preprocessing.json")["feature_names"] == ["a", "b"]  # not a feature


def test_sample_weight_and_a_weight_column_of_x_named_by_data_weight_agree(small, tmp_path):
    frame, labels = small
    weights = np.random.default_rng(1).uniform(0.2, 3.0, N_SMALL)
    given = fit(tmp_path / "given", X=frame, y=labels, sample_weight=weights)
    column = fit(tmp_path / "column", with_data(weight="w"), X=frame.assign(w=weights), y=labels)
    assert_same_params(given.run_dir, column.run_dir)
    assert record(column.run_dir, "preprocessing.json")["weight"] == "w"
    plain = params(fit(tmp_path / "plain", X=frame, y=labels).run_dir)
    assert not np.allclose(plain["w"], params(given.run_dir)["w"], rtol=1e-3)  # the weights changed the fit


def test_a_class_whose_rows_all_weigh_zero_is_a_data_error(small, tmp_path):
    frame, labels = small
    with pytest.raises(DataError, match=r"^X: every training row of class 'yes' weighs 0"):
        fit(tmp_path, X=frame, y=labels, sample_weight=np.where(labels == "yes", 0.0, 1.0))


def test_a_negative_or_missing_weight_names_its_row(small, tmp_path):
    frame, labels = small
    weights = np.ones(N_SMALL)
    weights[3] = -1.0
    with pytest.raises(
        DataError,
        match=r"^X: row 3: the weight \(column 'sample_weight', data.weight\) is -1.0; weights are numbers >= 0",
    ):
        fit(tmp_path, X=frame, y=labels, sample_weight=weights)
    weights[3], weights[5] = 1.0, np.nan
    with pytest.raises(DataError, match=r"^X: row 5: the weight .* is missing"):
        fit(tmp_path, X=frame, y=labels, sample_weight=weights)
    with pytest.raises(DataError, match=r"^sample_weight: expected 60 values, one per row of X, got 59$"):
        fit(tmp_path, X=frame, y=labels, sample_weight=weights[1:])


# ---------------------------------------------------------------------------------------- X_val, y_val


def test_x_val_is_exactly_the_validation_split(small, tmp_path):
    frame, labels = small
    rng = np.random.default_rng(2)
    x_val = pd.DataFrame({"a": rng.normal(size=15), "b": rng.normal(size=15)})
    y_val = np.where(x_val["a"] > 0, "yes", "no").astype(object)
    summary = fit(tmp_path, X=frame, y=labels, X_val=x_val, y_val=y_val)
    n_test = round(N_SMALL * 0.2)
    assert record(summary.run_dir, "summary.json")["rows"] == {"train": N_SMALL - n_test, "val": 15, "test": n_test}
    assert record(summary.run_dir, "preprocessing.json")["rows"] == {
        "train": N_SMALL - n_test,
        "val": 15,
        "test": n_test,
    }
    data = run_config(summary.run_dir)["data"]
    assert data["val_fraction"] == 0 and data["test_fraction"] == 0.2
    run = gradfit.load_run(summary.run_dir)
    # the validation metrics are the final model's on X_val; the test split comes from X's rows alone
    assert summary.final["val_loss"] == pytest.approx(run.evaluate(x_val, y_val)["log_loss"], rel=1e-9)
    _, _, test = split_indices(N_SMALL, 0.0, 0.2, data_seed(run.config))
    assert summary.final["test_loss"] == pytest.approx(
        run.evaluate(frame.iloc[test], labels[test])["log_loss"], rel=1e-9
    )


def test_x_val_with_a_missing_column_is_a_data_error_naming_x_val(small, tmp_path):
    frame, labels = small
    with pytest.raises(DataError, match=r"^X_val: its columns must be X's \(missing 'b'"):
        fit(tmp_path, X=frame, y=labels, X_val=frame[["a"]].iloc[:10], y_val=labels[:10])
    with pytest.raises(DataError, match=r"^X_val: its columns must be X's \(.*unexpected 'c'"):
        fit(tmp_path, X=frame, y=labels, X_val=frame.iloc[:10].assign(c=1.0), y_val=labels[:10])
    with pytest.raises(DataError, match=r"^y_val: expected 10 values, one per row of X_val, got 9$"):
        fit(tmp_path, X=frame, y=labels, X_val=frame.iloc[:10], y_val=labels[:9])


def test_x_val_column_message_lists_only_what_is_wrong(small, tmp_path):
    frame, labels = small
    with pytest.raises(DataError) as caught:
        fit(tmp_path, X=frame, y=labels, X_val=frame[["a"]].iloc[:10], y_val=labels[:10])
    assert not re.search(r"(missing|unexpected) ?[),]", str(caught.value)), str(caught.value)


def test_x_val_and_y_val_go_together(small, tmp_path):
    frame, labels = small
    with pytest.raises(DataError, match=r"^X_val, y_val: give both"):
        fit(tmp_path, X=frame, y=labels, X_val=frame.iloc[:10])
    with pytest.raises(DataError, match=r"^X_val, y_val: give both"):
        fit(tmp_path, X=frame, y=labels, y_val=labels[:10])


# ---------------------------------------------------------------------------------------- arguments without X


@pytest.mark.parametrize("argument", ["y", "sample_weight", "X_val", "y_val"])
def test_row_arguments_without_x_are_a_config_error(argument, small, tmp_path):
    frame, labels = small
    value = {"y": labels, "sample_weight": np.ones(N_SMALL), "X_val": frame, "y_val": labels}[argument]
    with pytest.raises(ConfigError, match=r"^y, sample_weight, X_val and y_val go with X, .*X is None$"):
        fit(tmp_path / "runs", **{argument: value})
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------- a numeric target


def test_a_regression_from_a_dataframe_matches_the_builtin_file(tmp_path):
    table = pa_csv.read_csv(ROOT / "data" / "diabetes.csv").to_pandas()
    config = {**CONFIG, "model": {"kind": "linear"}, "data": {"source": "diabetes"}}
    frame = fit(tmp_path / "frame", config, X=table.drop(columns="target"), y=table["target"])
    builtin = fit(tmp_path / "builtin", config)
    assert frame.status == "completed"
    assert np.isfinite(frame.final["test_rmse"]) and 0 < frame.final["test_rmse"] < 100  # target std is 77
    assert frame.final == builtin.final
    assert_same_params(frame.run_dir, builtin.run_dir)
    pre = record(frame.run_dir, "preprocessing.json")
    assert pre["classes"] == [] and pre["target_scale"] == record(builtin.run_dir, "preprocessing.json")["target_scale"]
