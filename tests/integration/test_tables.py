"""Real tables: CSV, Parquet and Feather files with an id column, a text category and missing cells, from
``gradfit train`` to eval, predict, inference, describe, convert, sweep and the Python API.

- The three formats of one table train to the same parameters, bit for bit.
- scikit-learn parity: gradfit's encoded training matrix equals a ColumnTransformer's (imputation, scaling,
  one-hot, missing indicators) to 1e-12, and its penalized logistic regression reaches the objective of
  scikit-learn's LogisticRegression to 1e-8 relative.
- Unseen categories, bad columns and missing cells are refused with one line naming the column (and the value,
  the file and line, or the data.* key to set), leaving no run directory and no output file behind.
- A converted folder keeps its label column's name and its categories; streamed and in-memory training from it
  give the same parameters; a run trained on it evaluates the original CSV.

Every file lives under tmp_path; the tables are a few hundred rows and the runs a few hundred steps at most.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

import gradfit
from gradfit.cli.app import app
from gradfit.config.load import resolve_config
from gradfit.data.dataset import load_dataset

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # keep Rich from wrapping messages mid-sentence
ROWS = 240
L2 = 1e-3
NUMERIC = ["a", "b", "c"]
CITIES = ["rome", "oslo", "lima", "kyiv"]
# (row, column) of the missing cells, and the spelling each takes in the CSV
MISSING = {(3, "a"): "", (17, "a"): "NA", (40, "b"): "nan", (41, "c"): "NULL", (90, "b"): "n/a", (120, "city"): ""}
MISSING.update({(200, "city"): "NA", (201, "a"): "None"})


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env=WIDE)


def one_line_error(result) -> str:
    """The message of a refusal: exit 2, one line 'error: ...' and nothing else, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# ------------------------------------------------------------------------------------------------ the table


def mixed_frame(rows: int = ROWS, seed: int = 3) -> pd.DataFrame:
    """id (text), three numeric columns on different scales, a text category, a 0/1 label; NaN for missing."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3)) * [1.0, 5.0, 0.3] + [2.0, -1.0, 10.0]
    city = np.array(CITIES)[rng.integers(0, len(CITIES), rows)]
    logit = x[:, 0] - 0.2 * x[:, 1] + np.where(city == "rome", 1.0, 0.0) - 2.0
    label = (logit + rng.logistic(size=rows) > 0).astype(np.int64)
    frame = pd.DataFrame({"id": [f"id{i:04d}" for i in range(rows)], "a": x[:, 0], "b": x[:, 1], "c": x[:, 2]})
    frame["city"] = pd.Series(city, dtype=object)
    frame["label"] = label
    for (row, column), _ in MISSING.items():
        if row < rows:
            frame.loc[row, column] = np.nan
    return frame


def write_mixed_csv(path: Path, frame: pd.DataFrame, spellings: dict | None = None) -> Path:
    """The frame as a CSV: numbers as repr (exact), missing cells in the spellings of MISSING (empty otherwise)."""
    spellings = MISSING if spellings is None else spellings
    rows = []
    for i, record in enumerate(frame.itertuples(index=False)):
        row = []
        for column, value in zip(frame.columns, record):
            if pd.isna(value):
                row.append(spellings.get((i, column), ""))
            elif isinstance(value, float):
                row.append(repr(value))
            else:
                row.append(str(value))
        rows.append(row)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(list(frame.columns))
        writer.writerows(rows)
    return path


def arrow_table(frame: pd.DataFrame) -> pa.Table:
    """The frame as Arrow: float64 numbers and nulls, string ids and cities (null where missing), int64 labels."""
    return pa.table(
        {
            "id": pa.array(frame["id"].tolist(), pa.string()),
            **{name: pa.array(frame[name].to_numpy(), pa.float64(), from_pandas=True) for name in NUMERIC},
            "city": pa.array([None if pd.isna(v) else v for v in frame["city"]], pa.string()),
            "label": pa.array(frame["label"].to_numpy(), pa.int64()),
        }
    )


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> dict:
    """The mixed table as a CSV, a Parquet and a Feather file, and as a DataFrame."""
    folder = tmp_path_factory.mktemp("tables")
    frame = mixed_frame()
    arrow = arrow_table(frame)
    pq.write_table(arrow, folder / "mixed.parquet")
    feather.write_feather(arrow, folder / "mixed.feather")
    return {
        "folder": folder,
        "frame": frame,
        "csv": write_mixed_csv(folder / "mixed.csv", frame),
        "parquet": folder / "mixed.parquet",
        "feather": folder / "mixed.feather",
    }


# ---------------------------------------------------------------------------------------------- configs, runs


def config_file(folder: Path, path: Path, name: str = "tables", sweep: dict | None = None, **sections) -> Path:
    """A config training a float64 L-BFGS logistic regression (l2 = L2, 200 steps) on every row of ``path``,
    with categorical: auto, drop: [id], missing: mean; ``sections`` update the sections key by key."""
    config: dict = {
        "name": name,
        "data": {
            "source": "file",
            "path": str(path),
            "target": "label",
            "drop": ["id"],
            "categorical": "auto",
            "missing": "mean",
            "val_fraction": 0,
            "test_fraction": 0,
        },
        "model": {"kind": "logistic", "l2": L2},
        "optimizer": {"name": "lbfgs"},
        "train": {"steps": 200},
        "runtime": {"precision": "float64"},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    if sweep is not None:
        config["sweep"] = sweep
    out = folder / f"{name}.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def train(config: Path, out_dir: Path) -> Path:
    result = invoke("train", config, "--out-dir", out_dir, "-q", "--json")
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["run_dir"])


def params(run_dir: Path) -> dict:
    with np.load(run_dir / "params.npz") as f:
        return dict(f)


def same_params(a: Path, b: Path) -> bool:
    pa_, pb = params(a), params(b)
    return pa_.keys() == pb.keys() and all(np.array_equal(pa_[k], pb[k]) for k in pa_)


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


@pytest.fixture(scope="module")
def mixed_run(table) -> Path:
    """The CSV trained with categorical: auto, drop: [id], missing: mean (every row, float64 L-BFGS)."""
    folder = table["folder"]
    return train(config_file(folder, table["csv"], name="csv"), folder / "runs")


# ------------------------------------------------------------------------------------------------ 1. formats


def test_csv_parquet_and_feather_train_to_the_same_parameters_bit_for_bit(table, mixed_run, tmp_path):
    record = json.loads((mixed_run / "preprocessing.json").read_text())
    assert record["feature_names"] == ["a", "b", "c", "city=kyiv", "city=lima", "city=oslo", "city=rome"]
    assert record["target"] == "label" and record["rows"]["train"] == ROWS
    for fmt in ("parquet", "feather"):
        run_dir = train(config_file(tmp_path, table[fmt], name=fmt), tmp_path / "runs")
        assert same_params(run_dir, mixed_run), fmt
        other = json.loads((run_dir / "preprocessing.json").read_text())
        assert other["dataset"] == str(table[fmt])
        assert other["encoding"] == record["encoding"] and other["standardize"] == record["standardize"], fmt


# ------------------------------------------------------------------------------------------- 2. scikit-learn


def sklearn_matrix(frame: pd.DataFrame, strategy: str, indicator: bool) -> np.ndarray:
    """scikit-learn's encoding of the frame: imputed and standardized numbers, one-hot cities (missing: the most
    frequent), then (``indicator``) a 0/1 column per column with missing cells: gradfit's feature order."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import MissingIndicator, SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    parts = [
        ("num", Pipeline([("impute", SimpleImputer(strategy=strategy)), ("scale", StandardScaler())]), NUMERIC),
        (
            "cat",
            Pipeline(
                [("impute", SimpleImputer(strategy="most_frequent")), ("onehot", OneHotEncoder(sparse_output=False))]
            ),
            ["city"],
        ),
    ]
    if indicator:
        parts.append(("missing", MissingIndicator(), [*NUMERIC, "city"]))
    return ColumnTransformer(parts).fit_transform(frame)


def objective(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float) -> float:
    """gradfit's binary objective: mean log(1 + exp(-y (x w + b))) + (l2/2) ||w||^2, y in {-1, +1}."""
    return float(np.mean(np.logaddexp(0.0, -y * (x @ w + b))) + 0.5 * L2 * w @ w)


@pytest.mark.parametrize(
    "strategy, indicator", [("mean", False), ("median", True)], ids=["mean", "median with indicators"]
)
def test_encoding_and_fit_match_scikit_learn(table, tmp_path, strategy, indicator):
    from sklearn.linear_model import LogisticRegression

    frame = table["frame"]
    config = config_file(
        tmp_path,
        table["csv"],
        data={"categorical": ["city"], "missing": strategy, "missing_indicator": indicator},
    )
    # (a) the encoded training matrix; train.shuffle blocks keeps the rows in file order
    dataset = load_dataset(resolve_config(config).config, shuffle="blocks")
    expected = sklearn_matrix(frame, strategy, indicator)
    names = ["a", "b", "c", "city=kyiv", "city=lima", "city=oslo", "city=rome"]
    if indicator:
        names += ["missing(a)", "missing(b)", "missing(c)", "missing(city)"]
    assert list(dataset.feature_names) == names and expected.shape == (ROWS, len(names))
    np.testing.assert_allclose(dataset.train.x, expected, rtol=0, atol=1e-12)
    y = np.where(frame["label"].to_numpy() == 1, 1.0, -1.0)
    np.testing.assert_array_equal(dataset.train.y, y)

    # (b) the penalized fit: the same objective at gradfit's and scikit-learn's optimum, to 1e-8 relative
    fitted = params(train(config, tmp_path / "runs"))
    reference = LogisticRegression(C=1.0 / (L2 * ROWS), tol=1e-12, max_iter=10_000).fit(expected, frame["label"])
    ours = objective(expected, y, fitted["w"], float(fitted["b"]))
    theirs = objective(expected, y, reference.coef_[0], float(reference.intercept_[0]))
    assert ours == pytest.approx(theirs, rel=1e-8)
    assert ours <= theirs * (1 + 1e-12)  # gradfit's optimum is no worse (here 7e-14 lower with the indicators)
    # the weights: scikit-learn's L-BFGS stops 2e-8 (mean) and 5e-6 (median with indicators) from gradfit's
    np.testing.assert_allclose(fitted["w"], reference.coef_[0], rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------- 3. unseen categories

NEW_ROWS = 12
BLANK_AFTER = 4  # a blank line follows the 4th data row (line 5): line 6 is blank
UNSEEN_ROW = 7  # data row 7 (0-based) holds the city 'paris': line 2 + 7 + 1 = 10


def new_csv(path: Path, city: str = "paris") -> tuple[Path, pd.DataFrame, list[int]]:
    """Unlabelled new rows with a blank line, a missing cell and (data row UNSEEN_ROW) the city ``city``."""
    frame = mixed_frame(NEW_ROWS, seed=9).drop(columns="label")
    frame.loc[UNSEEN_ROW, "city"] = city
    frame.loc[2, "b"] = np.nan
    write_mixed_csv(path, frame, spellings={})
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: BLANK_AFTER + 1] + ["\n"] + lines[BLANK_AFTER + 1 :]))
    numbers = [2 + i + (i >= BLANK_AFTER) for i in range(NEW_ROWS)]
    return path, frame, numbers


def test_an_unseen_category_is_refused_naming_it_or_encoded_as_zeros(table, mixed_run, tmp_path):
    data, frame, numbers = new_csv(tmp_path / "new.csv")
    assert numbers[UNSEEN_ROW] == 10
    out = tmp_path / "p.csv"
    message = one_line_error(invoke("predict", mixed_run, data, "--out", out))
    assert f"error: {data}:10: column 'city' has the category 'paris', which the training rows did not hold" in message
    assert "data.unknown_category" in message
    assert not out.exists()
    labelled = tmp_path / "labelled.csv"
    write_mixed_csv(labelled, frame.assign(label=np.arange(NEW_ROWS) % 2), spellings={})
    message = one_line_error(invoke("eval", mixed_run, "--data", labelled, "--json-out", tmp_path / "e.json"))
    assert f"{labelled}:9: column 'city' has the category 'paris'" in message and "data.unknown_category" in message
    assert not (tmp_path / "e.json").exists()

    # unknown_category: ignore: the city's one-hot columns are all zeros
    ignore_run = train(
        config_file(tmp_path, table["csv"], name="ignore", data={"unknown_category": "ignore"}), tmp_path / "runs"
    )
    result = invoke("predict", ignore_run, data, "--proba", "--out", out)
    assert result.exit_code == 0, result.output
    header, rows = read_rows(out)
    assert header == ["line", "prediction", "p_0", "p_1"]
    assert [int(r[0]) for r in rows] == numbers  # the file's line numbers, the blank line counted
    # the probabilities, computed here from preprocessing.json and params.npz
    record = json.loads((ignore_run / "preprocessing.json").read_text())
    fills = {c["name"]: c["fill"] for c in record["encoding"]["columns"]}
    x = np.zeros((NEW_ROWS, 7))
    x[:, :3] = frame[NUMERIC].fillna(fills).to_numpy()
    for i, city in enumerate(frame["city"]):
        if city in ("kyiv", "lima", "oslo", "rome"):
            x[i, 3 + ["kyiv", "lima", "oslo", "rome"].index(city)] = 1.0
    assert not x[UNSEEN_ROW, 3:].any()
    x = (x - np.asarray(record["standardize"]["mean"])) / np.asarray(record["standardize"]["std"])
    fitted = params(ignore_run)
    p1 = 1.0 / (1.0 + np.exp(-(x @ fitted["w"] + fitted["b"])))
    np.testing.assert_allclose([float(r[3]) for r in rows], p1, rtol=0, atol=1e-12)
    assert [r[1] for r in rows] == [str(int(p > 0.5)) for p in p1]


def test_a_column_categorical_in_training_and_numeric_in_the_file_is_an_unseen_category(table, mixed_run, tmp_path):
    frame = table["frame"].head(20).copy()
    frame["city"] = [str(i % 3) for i in range(20)]
    data = write_mixed_csv(tmp_path / "numeric-city.csv", frame, spellings={})
    message = one_line_error(invoke("eval", mixed_run, "--data", data))
    assert f"{data}:2: column 'city' has the category '0', which the training rows did not hold" in message
    assert "data.unknown_category" in message


# ---------------------------------------------------------------------------------------------- 4. refusals


def small_csv(path: Path, change=None) -> Path:
    frame = mixed_frame(40)
    if change:
        frame = change(frame)
    return write_mixed_csv(path, frame)


REFUSALS = {
    "a column without values": (
        lambda f: f.assign(d=np.nan),
        {},
        ["{path}: column 'd' has no values in the training split (all 40 missing)", "data.drop"],
    ),
    "too many categories": (
        None,
        {"max_categories": 3},
        ["{path}: column 'city' has 4 categories in the training split, more than data.max_categories = 3"],
    ),
    "a text column, not categorical": (
        None,
        {"categorical": []},
        ["{path}:2: column 'city' has non-numeric value", "data.categorical"],
    ),
    "data.drop names no column": (None, {"drop": ["id", "zip"]}, ["'zip'", "data.drop"]),
    "a missing label column": (
        None,
        {"target": "Label"},
        ["{path}: no label column 'Label' (set data.target); did you mean 'label'? (its columns: 'label', "],
    ),
    "a missing cell and data.missing error": (
        None,
        {"missing": "error"},
        ["{path}:5: column 'a' is missing (an empty cell or NA); set data.missing"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_tables_are_refused_in_one_line_before_the_run_directory(case, tmp_path):
    change, data, expected = REFUSALS[case]
    path = small_csv(tmp_path / "small.csv", change)
    config = config_file(tmp_path, path, data=data)
    message = one_line_error(invoke("train", config, "--out-dir", tmp_path / "runs", "-q"))
    for part in expected:
        assert part.format(path=path) in message, message
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------- 5. inference


def test_inference_names_one_hot_coefficients_without_the_reference_category(table, tmp_path):
    config = config_file(tmp_path, table["csv"], data={"reference_category": "first"})
    run_dir = train(config, tmp_path / "runs")
    record = json.loads((run_dir / "preprocessing.json").read_text())
    assert record["feature_names"] == ["a", "b", "c", "city=lima", "city=oslo", "city=rome"]
    # the 0/1 columns are not standardized
    assert record["standardize"]["mean"][3:] == [0.0] * 3 and record["standardize"]["std"][3:] == [1.0] * 3
    result = invoke("inference", run_dir, "--json")
    assert result.exit_code == 0, result.output
    coefficients = json.loads(result.stdout)["coefficients"]
    assert [c["name"] for c in coefficients] == ["(intercept)", "a", "b", "c", "city=lima", "city=oslo", "city=rome"]
    assert all(np.isfinite(c["std_error"]) for c in coefficients)


# ------------------------------------------------------------------------------------------------ 6. convert


def test_a_converted_folder_keeps_its_target_and_categories_and_streams_the_same_parameters(table, tmp_path):
    folder = tmp_path / "converted"
    result = invoke(
        "data",
        "convert",
        table["csv"],
        folder,
        "--target",
        "label",
        "--categorical",
        "city",
        "--categorical",
        "id",
        "-q",
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((folder / "meta.json").read_text())
    frame = table["frame"]
    assert meta["target"] == "label" and meta["feature_names"] == ["id", "a", "b", "c", "city"]
    assert meta["categorical"]["city"] == list(dict.fromkeys(frame["city"].dropna()))  # in the order met
    assert meta["categorical"]["id"] == frame["id"].tolist()
    x = np.load(folder / "X.npy")
    assert np.isnan(x).sum() == frame[["id", *NUMERIC, "city"]].isna().to_numpy().sum()

    streamed_setup = {
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "train": {"steps": 40, "batch_size": 32, "shuffle": "blocks"},
    }
    runs = {}
    for in_memory in (True, False):
        config = config_file(
            tmp_path, folder, name=f"memory-{in_memory}".lower(), data={"in_memory": in_memory}, **streamed_setup
        )
        runs[in_memory] = train(config, tmp_path / "runs")
    assert same_params(runs[True], runs[False])
    # the CSV itself, in memory, gives these parameters too
    from_csv = train(config_file(tmp_path, table["csv"], name="from-csv", **streamed_setup), tmp_path / "runs")
    assert same_params(from_csv, runs[True])

    # the run knows its label column: the original CSV evaluates without --target
    result = invoke("eval", runs[False], "--data", table["csv"], "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["rows"] == ROWS
    reference = invoke("eval", from_csv, "--data", table["csv"], "--json")
    assert reference.exit_code == 0, reference.output
    assert metrics["log_loss"] == json.loads(reference.stdout)["log_loss"]


# ----------------------------------------------------------------------------------------------- 7. describe


def test_describe_summarizes_categories_and_counts_missing_cells(table, tmp_path):
    frame = table["frame"]
    with_inf = frame.copy()
    with_inf.loc[7, "b"] = np.inf  # an infinite cell is non-finite, not missing
    path = write_mixed_csv(tmp_path / "described.csv", with_inf)
    result = invoke("data", "describe", path, "--target", "label", "--json")
    assert result.exit_code == 0, result.output
    described = json.loads(result.stdout)
    assert described["rows"] == ROWS and described["target"] == "label"
    features = {f["name"]: f for f in described["features"]}
    assert list(features) == ["id", "a", "b", "c", "city"]
    counts = frame["city"].value_counts()
    city = features["city"]
    assert city["kind"] == "categorical" and city["categories"] == len(CITIES)
    assert {(t["value"], t["rows"]) for t in city["top"]} == set(counts.items())
    assert [t["rows"] for t in city["top"]] == sorted(counts.to_numpy(), reverse=True)
    assert features["id"]["kind"] == "categorical" and features["id"]["categories"] == ROWS
    for name in ("id", *NUMERIC, "city"):
        assert features[name]["missing"] == frame[name].isna().sum(), name
    assert features["b"]["non_finite"] == 1 and features["a"]["non_finite"] == 0
    assert described["missing_cells"] == len(MISSING) and described["non_finite_cells"] == 1
    present = frame["a"].dropna().to_numpy()
    assert features["a"]["mean"] == pytest.approx(present.mean(), rel=1e-12)
    assert described["classes"] == [{"label": c, "rows": int((frame["label"] == c).sum())} for c in (0, 1)]


# -------------------------------------------------------------------------------------------------- 8. sweep


def test_a_sweep_over_l2_on_the_mixed_table_ranks_its_members(table, tmp_path):
    config = config_file(
        tmp_path,
        table["csv"],
        data={"missing": "median", "val_fraction": 0.25},
        train={"steps": 20},
        sweep={"grid": {"model.l2": [0.001, 0.1]}, "metric": "val_loss"},
    )
    result = invoke("sweep", config, "--json", "--out-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    state = json.loads(result.stdout)
    members = state["members"]
    assert [m["status"] for m in members] == ["completed"] * 2
    assert [m["values"] for m in members] == [{"model.l2": 0.001}, {"model.l2": 0.1}]
    losses = [m["final"]["val_loss"] for m in members]
    ranking = state["ranking"]
    assert len(ranking) == 2 and ranking[0]["best"] and not ranking[1]["best"]
    assert ranking[0]["mean"] == min(losses) and ranking[1]["mean"] == max(losses)
    for member in members:
        record = json.loads((Path(member["run_dir"]) / "preprocessing.json").read_text())
        assert record["encoding"]["missing"] == "median"
        assert record["feature_names"][3:] == ["city=kyiv", "city=lima", "city=oslo", "city=rome"]


# ---------------------------------------------------------------------------------------------------- 9. API


def test_the_api_predicts_a_dataframe_as_predict_does_the_csv(table, mixed_run, tmp_path):
    out = tmp_path / "p.csv"
    result = invoke("predict", mixed_run, table["csv"], "--proba", "--out", out)
    assert result.exit_code == 0, result.output
    header, rows = read_rows(out)
    assert header == ["line", "prediction", "p_0", "p_1"] and len(rows) == ROWS
    written = np.array([[float(r[2]), float(r[3])] for r in rows])
    run = gradfit.load_run(mixed_run)
    frame = table["frame"]
    np.testing.assert_allclose(run.predict_proba(frame), written, rtol=0, atol=1e-12)
    # the columns in another order, without the label and id: matched by name
    shuffled = frame[["city", "c", "b", "a"]]
    np.testing.assert_allclose(run.predict_proba(shuffled), written, rtol=0, atol=1e-12)
    assert run.predict(frame).tolist() == [int(r[1]) for r in rows]


def test_the_api_fills_a_categorical_column_missing_in_every_row(tmp_path):
    # a frame whose categorical column holds no category at all: every cell takes the training fill
    rows = [f"{i},{i % 7},{'ab'[i % 2] if i % 5 else ''},{i % 2}" for i in range(60)]
    path = tmp_path / "t.csv"
    path.write_text("id,a,city,label\n" + "\n".join(rows) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data:\n  source: file\n  path: {path}\n  target: label\n  drop: [id]\n  categorical: [city]\n"
        "  missing: most_frequent\ntrain:\n  steps: 5\n"
    )
    result = CliRunner().invoke(app, ["train", str(config), "--out-dir", str(tmp_path / "runs"), "-q"])
    assert result.exit_code == 0, result.output
    run = gradfit.load_run(next((tmp_path / "runs").iterdir()))
    frame = pd.DataFrame({"a": [1.0, 2.0], "city": [None, None]})
    filled = pd.DataFrame({"a": [1.0, 2.0], "city": [run.encoding.columns[1].fill] * 2})
    np.testing.assert_array_equal(run.predict_proba(frame), run.predict_proba(filled))


def test_parquet_with_text_labels_is_described_and_trains(tmp_path):
    frame = pd.DataFrame({"a": np.arange(40.0), "label": ["yes", "no"] * 20})
    frame.to_parquet(tmp_path / "t.parquet")
    described = CliRunner().invoke(
        app, ["data", "describe", str(tmp_path / "t.parquet"), "--target", "label", "--json"]
    )
    assert described.exit_code == 0, described.output
    assert json.loads(described.stdout)["classes"] == [{"label": "no", "rows": 20}, {"label": "yes", "rows": 20}]
    data = load_dataset(
        resolve_config(None, ["data.source=file", f"data.path={tmp_path / 't.parquet'}", "data.target=label"]).config
    )
    assert data.classes == ("no", "yes")
