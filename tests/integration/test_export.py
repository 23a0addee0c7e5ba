"""gradfit export: a run's whole prediction function as StableHLO that jax alone runs, equal to gradfit's own
predict_proba (predict for a numeric target) on the same input values: 1e-12 in float64, 1e-6 in float32 (the
artifact preprocesses in float64 and rounds once, as gradfit does). --format onnx converts the same function with
jax2onnx; onnxruntime runs it within the same tolerances, at any batch size."""

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


def features(name: str, dtype: str = "float64") -> np.ndarray:
    """A built-in table's features as float64 values that ``dtype`` holds exactly: what an artifact of that dtype
    receives, so that gradfit sees the same numbers."""
    x = np.genfromtxt(ROOT / "data" / f"{name}.csv", delimiter=",", skip_header=1)[:, :-1]
    return x.astype(dtype).astype(np.float64)


SHORT_MLP = ("train.epochs=2", "optimizer.schedule.warmup_steps=5")
KINDS = {  # config, overrides, data, tolerance
    "logistic-binary": ("logreg.yaml", ("train.steps=30",), "breast_cancer", 1e-6),
    "logistic-multinomial": ("multinomial.yaml", ("train.steps=30",), "digits", 1e-6),
    "mlp-gelu": ("mlp.yaml", (*SHORT_MLP, "model.hidden=[16, 8]", "model.activation=gelu"), "digits", 1e-6),
    "mlp-binary-float64": (
        "mlp.yaml",
        (*SHORT_MLP, "model.hidden=[8]", "data.source=breast_cancer", "runtime.precision=float64"),
        "breast_cancer",
        1e-12,
    ),
    "linear-float64": ("linear.yaml", ("train.steps=30",), "diabetes", 1e-12),
    "mlp-huber": ("mlp-regression.yaml", ("train.epochs=3",), "diabetes", 1e-6),  # relative: outputs times std 77
}


@pytest.fixture(scope="module")
def kind_run(tmp_path_factory):
    """``kind -> run_dir`` of a KINDS entry, trained once for the module: the StableHLO and ONNX tests share it."""
    runs: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in runs:
            config, sets, _, _ = KINDS[kind]
            runs[kind] = train(CONFIGS / config, tmp_path_factory.mktemp(kind), *sets)
        return runs[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_every_model_kind_exports_and_predicts_as_gradfit_does(kind, kind_run, tmp_path):
    _, _, data, tolerance = KINDS[kind]
    run_dir = kind_run(kind)
    function, sidecar = exported(run_dir, tmp_path / "model.stablehlo")
    run = load_run(run_dir)
    x = features(data, sidecar["inputs"]["dtype"])
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


def table_rows(table_run: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """(the table's rows and two more, one with missing cells and one with an unseen category; the same rows as
    the exported function takes them)."""
    frame = table_run["frame"].drop(columns="label")
    new = pd.DataFrame({"a": [0.1, -1.0], "b": [np.nan, 2.0], "city": [None, "paris"]})  # missing; unseen
    frame = pd.concat([frame, new], ignore_index=True)
    codes = frame["city"].map({c: float(i) for i, c in enumerate(CITIES)}).astype(float)
    codes[frame["city"].notna() & codes.isna()] = -1.0  # a code that is no category's: unseen
    return frame, np.column_stack([frame["a"], frame["b"], codes])


def test_categories_and_missing_cells_are_encoded_inside_the_exported_function(table_run):
    run = load_run(table_run["run_dir"])
    function, sidecar = exported(table_run["run_dir"], table_run["folder"] / "t.stablehlo")
    (city,) = [c for c in sidecar["inputs"]["columns"] if c["kind"] == "categorical"]
    assert city == {"name": "city", "kind": "categorical", "categories": CITIES}
    frame, x = table_rows(table_run)
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


# ONNX: the same prediction function converted by jax2onnx, run by onnxruntime.


@pytest.fixture(scope="module")
def onnxruntime():
    pytest.importorskip("jax2onnx")
    return pytest.importorskip("onnxruntime")


def onnx_exported(onnxruntime, run_dir: Path, out: Path):
    """Export as ONNX through the CLI; (an onnxruntime session of it, the sidecar)."""
    result = invoke("export", run_dir, "--format", "onnx", "--out", out)
    assert result.exit_code == 0, result.output
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["format"] == "gradfit-onnx-1" and "x64" not in sidecar
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [sidecar["inputs"]["name"]]
    assert [o.name for o in session.get_outputs()] == [sidecar["output"]["name"]]
    assert session.get_inputs()[0].shape == sidecar["inputs"]["shape"]  # ["batch", inputs]: a symbolic batch
    assert (
        session.get_outputs()[0].type
        == {"float32": "tensor(float)", "float64": "tensor(double)"}[sidecar["inputs"]["dtype"]]
    )
    return session, sidecar


ONNX_FLOAT32 = 1e-5  # the graph preprocesses in float32 (measured up to 9.9e-7 on digits)


def onnx_call(session, sidecar: dict, x: np.ndarray) -> np.ndarray:
    (got,) = session.run(None, {sidecar["inputs"]["name"]: np.asarray(x, sidecar["inputs"]["dtype"])})
    assert got.dtype == sidecar["inputs"]["dtype"]
    return got


@pytest.mark.parametrize("kind", KINDS)
def test_every_model_kind_exports_to_onnx_and_predicts_as_gradfit_does(kind, kind_run, onnxruntime, tmp_path):
    _, _, data, tolerance = KINDS[kind]
    run_dir = kind_run(kind)
    session, sidecar = onnx_exported(onnxruntime, run_dir, tmp_path / "model.onnx")
    run = load_run(run_dir)
    x = features(data, sidecar["inputs"]["dtype"])
    tolerance = max(tolerance, ONNX_FLOAT32) if sidecar["inputs"]["dtype"] == "float32" else tolerance
    expected = run.predict(x) if run.regression else run.predict_proba(x)
    for rows in (x, x[:7]):  # two batch sizes from one graph
        got = onnx_call(session, sidecar, rows)
        if run.regression:
            np.testing.assert_allclose(got, expected[: len(rows)], rtol=tolerance, atol=0)
        else:
            np.testing.assert_allclose(got, expected[: len(rows)], rtol=0, atol=tolerance)
    assert sidecar["output"]["name"] == ("prediction" if run.regression else "probabilities")


def test_onnx_encodes_categories_and_missing_cells_and_refuses_rows_as_stablehlo_does(table_run, kind_run, onnxruntime):
    session, sidecar = onnx_exported(onnxruntime, table_run["run_dir"], table_run["folder"] / "t.onnx")
    frame, x = table_rows(table_run)
    expected = load_run(table_run["run_dir"]).predict_proba(frame)
    np.testing.assert_allclose(onnx_call(session, sidecar, x), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(onnx_call(session, sidecar, x[-3:]), expected[-3:], rtol=0, atol=1e-12)
    run_dir = kind_run("logistic-binary")  # data.missing: error
    session, sidecar = onnx_exported(onnxruntime, run_dir, table_run["folder"] / "refusing.onnx")
    x = features("breast_cancer")[:3].copy()
    x[1, 4] = np.nan
    got = onnx_call(session, sidecar, x)
    assert np.isnan(got[1]).all() and np.isfinite(got[[0, 2]]).all()


def test_onnx_runs_with_onnxruntime_alone_and_refusals_write_nothing(kind_run, onnxruntime, tmp_path, monkeypatch):
    run_dir = kind_run("logistic-binary")
    out = tmp_path / "m.onnx"
    session, sidecar = onnx_exported(onnxruntime, run_dir, out)
    x = features("breast_cancer")[:4]
    script = (
        "import sys, json, numpy as np, onnxruntime\n"
        "session = onnxruntime.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "(p,) = session.run(None, {'x': np.array(json.loads(sys.argv[2]), np.float32)})\n"
        "print(json.dumps(p.tolist()))\n"
        "assert 'gradfit' not in sys.modules and 'jax' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(out), json.dumps(x.tolist())], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(json.loads(done.stdout), onnx_call(session, sidecar, x), rtol=0, atol=1e-7)

    before = out.read_bytes()
    again = invoke("export", run_dir, "--format", "onnx", "--out", out)
    assert again.exit_code == 2 and "--force" in again.output and out.read_bytes() == before
    out.unlink()  # the sidecar alone also blocks the export
    again = invoke("export", run_dir, "--format", "onnx", "--out", out)
    assert again.exit_code == 2 and "--force" in again.output and not out.exists()

    fresh = tmp_path / "fresh.onnx"
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # import jax2onnx raises ImportError
    missing = invoke("export", run_dir, "--format", "onnx", "--out", fresh)
    assert missing.exit_code == 2 and "pip install 'gradfit[onnx]'" in missing.output
    monkeypatch.undo()

    def unsupported(*args, **kwargs):
        raise NotImplementedError("no ONNX plugin for primitive 'frobnicate'\n(a long traceback)")

    monkeypatch.setattr("jax2onnx.to_onnx", unsupported)
    refused = invoke("export", run_dir, "--format", "onnx", "--out", fresh)
    assert refused.exit_code == 2, refused.output
    assert "cannot convert run" in refused.output and "'frobnicate'" in refused.output
    assert "long traceback" not in refused.output
    assert not fresh.exists() and not Path(f"{fresh}.json").exists()
    assert list(tmp_path.iterdir()) == [out.with_name("m.onnx.json")]  # no temporary file left either


def test_run_export_from_python_writes_what_the_command_writes(kind_run, tmp_path):
    from gradfit.errors import ConfigError, GradfitError

    run_dir = kind_run("logistic-binary")
    run = load_run(run_dir)
    target = run.export(tmp_path / "model.stablehlo")
    assert target == tmp_path / "model.stablehlo"
    command = tmp_path / "command.stablehlo"
    assert CliRunner().invoke(app, ["export", str(run_dir), "--out", str(command)]).exit_code == 0
    x = features("breast_cancer", "float32")[:20].astype(np.float32)
    results = [jax.export.deserialize(bytearray(path.read_bytes())).call(x) for path in (target, command)]
    np.testing.assert_array_equal(*results)
    assert json.loads((tmp_path / "model.stablehlo.json").read_text()) == json.loads(
        (tmp_path / "command.stablehlo.json").read_text()
    )
    with pytest.raises(GradfitError, match="exists"):
        run.export(target)  # kept unless force
    run.export(target, force=True)
    with pytest.raises(GradfitError, match="gradfit keeps"):
        run.export(Path(run_dir) / "config.yaml", force=True)  # a run's own file: never, even with force
    with pytest.raises(ConfigError, match="format"):
        run.export(tmp_path / "m.x", format="tflite")
