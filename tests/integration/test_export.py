"""gradfit export: a run's whole prediction function as StableHLO that jax alone runs, equal to gradfit's own
predict_proba (predict for a numeric target): 1e-12 in float64; 1e-5 in float32, where the artifact standardizes in
float32 and gradfit in float64 before rounding (measured up to 1.5e-6 on digits)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import CONFIGS, ROOT
from typer.testing import CliRunner

from gradfit.api import load_run
from gradfit.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def train(config: Path, out: Path, *sets: str) -> Path:
    result = invoke("train", config, "--out-dir", out, "--quiet", "--json", *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["run_dir"])


def exported(run_dir: Path, out: Path):
    """Export through the CLI; (the deserialized function, the sidecar)."""
    result = invoke("export", run_dir, "--out", out)
    assert result.exit_code == 0, result.output
    sidecar = json.loads(Path(f"{out}.json").read_text())
    return jax.export.deserialize(bytearray(out.read_bytes())), sidecar


def call(function, sidecar: dict, x: np.ndarray) -> np.ndarray:
    with jax.enable_x64(sidecar["x64"]):
        return np.asarray(function.call(np.asarray(x, sidecar["inputs"]["dtype"])))


def features(name: str) -> np.ndarray:
    return np.genfromtxt(ROOT / "data" / f"{name}.csv", delimiter=",", skip_header=1)[:, :-1]


SHORT_MLP = ("train.epochs=2", "optimizer.schedule.warmup_steps=5")
KINDS = {  # config, overrides, data, tolerance
    "logistic-binary": ("logreg.yaml", ("train.steps=30",), "breast_cancer", 1e-5),
    "logistic-multinomial": ("multinomial.yaml", ("train.steps=30",), "digits", 1e-5),
    "mlp-gelu": ("mlp.yaml", (*SHORT_MLP, "model.hidden=[16, 8]", "model.activation=gelu"), "digits", 1e-5),
    "mlp-binary-float64": (
        "mlp.yaml",
        (*SHORT_MLP, "model.hidden=[8]", "data.source=breast_cancer", "runtime.precision=float64"),
        "breast_cancer",
        1e-12,
    ),
    "linear-float64": ("linear.yaml", ("train.steps=30",), "diabetes", 1e-12),
    "mlp-huber": ("mlp-regression.yaml", ("train.epochs=3",), "diabetes", 1e-4),  # float32 outputs times std 77
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_model_kind_exports_and_predicts_as_gradfit_does(kind, tmp_path):
    config, sets, data, tolerance = KINDS[kind]
    run_dir = train(CONFIGS / config, tmp_path / "runs", *sets)
    function, sidecar = exported(run_dir, tmp_path / "model.stablehlo")
    run = load_run(run_dir)
    x = features(data)
    got = call(function, sidecar, x)
    if run.regression:
        assert sidecar["output"]["kind"] == "prediction" and got.shape == (len(x),)
        np.testing.assert_allclose(got, run.predict(x), rtol=tolerance, atol=0)
    else:
        assert sidecar["output"]["classes"] == run.classes and got.shape == (len(x), len(run.classes))
        np.testing.assert_allclose(got, run.predict_proba(x), rtol=0, atol=tolerance)
    assert [c["name"] for c in sidecar["inputs"]["columns"]] == run.feature_names
    assert call(function, sidecar, x[:7]).shape[0] == 7  # any batch size: the batch dimension is symbolic


CITIES = ["lima", "oslo", "rome"]


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> dict:
    """A run on a table with a categorical column, missing cells (mean and most-frequent fills, indicators) and
    unseen categories encoded as zeros."""
    folder = tmp_path_factory.mktemp("export-table")
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(3, 2, size=n), "city": rng.choice(CITIES, n)})
    frame["label"] = np.where(frame["a"] + (frame["city"] == "rome") + rng.normal(size=n) > 0.5, "yes", "no")
    frame.loc[rng.choice(n, 20, replace=False), "b"] = np.nan
    frame.loc[rng.choice(n, 15, replace=False), "city"] = None
    frame.to_csv(folder / "t.csv", index=False)
    config = {
        "name": "table",
        "data": {
            "source": "file",
            "path": str(folder / "t.csv"),
            "target": "label",
            "categorical": ["city"],
            "missing": "mean",
            "missing_indicator": True,
            "unknown_category": "ignore",
            "reference_category": "first",
        },
        "optimizer": {"name": "lbfgs"},
        "train": {"steps": 50},
        "runtime": {"precision": "float64"},
    }
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    return {"run_dir": train(folder / "c.yaml", folder / "runs"), "frame": frame, "folder": folder}


def test_categories_and_missing_cells_are_encoded_inside_the_exported_function(table_run):
    run = load_run(table_run["run_dir"])
    function, sidecar = exported(table_run["run_dir"], table_run["folder"] / "t.stablehlo")
    (city,) = [c for c in sidecar["inputs"]["columns"] if c["kind"] == "categorical"]
    assert city == {"name": "city", "kind": "categorical", "categories": CITIES}
    frame = table_run["frame"].drop(columns="label")
    new = pd.DataFrame({"a": [0.1, -1.0], "b": [np.nan, 2.0], "city": [None, "paris"]})  # missing; unseen
    frame = pd.concat([frame, new], ignore_index=True)
    codes = frame["city"].map({c: float(i) for i, c in enumerate(CITIES)}).astype(float)
    codes[frame["city"].notna() & codes.isna()] = -1.0  # a code that is no category's: unseen
    x = np.column_stack([frame["a"], frame["b"], codes])
    np.testing.assert_allclose(call(function, sidecar, x), run.predict_proba(frame), rtol=0, atol=1e-12)


def test_a_cell_the_run_would_refuse_makes_its_row_nan(tmp_path):
    run_dir = train(CONFIGS / "logreg.yaml", tmp_path / "runs", "train.steps=5")  # data.missing: error
    function, sidecar = exported(run_dir, tmp_path / "m.stablehlo")
    x = features("breast_cancer")[:3].copy()
    x[1, 4] = np.nan
    got = call(function, sidecar, x)
    assert np.isnan(got[1]).all() and np.isfinite(got[[0, 2]]).all()


def test_the_artifact_runs_with_jax_alone_and_files_are_never_overwritten_unasked(tmp_path):
    run_dir = train(CONFIGS / "logreg.yaml", tmp_path / "runs", "train.steps=5")
    out = tmp_path / "m.stablehlo"
    function, sidecar = exported(run_dir, out)
    x = features("breast_cancer")[:4]
    script = (
        "import sys, json, numpy as np, jax\n"
        "f = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))\n"
        "x = np.array(json.loads(sys.argv[2]), np.float32)\n"
        "print(json.dumps(np.asarray(f.call(x)).tolist()))\n"
        "assert 'gradfit' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(out), json.dumps(x.tolist())], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(json.loads(done.stdout), call(function, sidecar, x), rtol=0, atol=1e-7)
    again = invoke("export", run_dir, "--out", out)
    assert again.exit_code == 2 and "--force" in again.output
    assert invoke("export", run_dir, "--out", out, "--force").exit_code == 0
    own = invoke("export", run_dir, "--out", run_dir / "params.npz", "--force")
    assert own.exit_code == 2 and (run_dir / "params.npz").stat().st_size > 0
