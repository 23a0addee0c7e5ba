"""The command line, through typer's CliRunner and (for the console script and imports) subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import gradfit
from conftest import CONFIGS, ROOT
from gradfit.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # keep Rich from wrapping messages mid-sentence


def invoke(*args: str):
    return runner.invoke(app, list(args), env=WIDE)


def test_help_texts_teach_with_examples():
    top = invoke("--help")
    assert top.exit_code == 0
    for command in ("train", "config"):
        assert command in top.output
    assert "gradfit train configs/logreg.yaml" in top.output
    train_help = invoke("train", "--help")
    assert train_help.exit_code == 0
    assert "Examples" in train_help.output and "--set" in train_help.output and "--out-dir" in train_help.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"gradfit {gradfit.__version__}"


def test_cli_import_does_not_import_jax():
    code = "import sys, gradfit.cli; assert 'jax' not in sys.modules, 'jax imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_console_script_is_installed():
    result = subprocess.run(["gradfit", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and gradfit.__version__ in result.stdout


def test_train_prints_progress_summary_and_writes_the_run(tmp_path):
    result = invoke("train", str(CONFIGS / "logreg.yaml"), "--out-dir", str(tmp_path), "--set", "train.steps=10")
    assert result.exit_code == 0, result.output
    assert "step 0/10" in result.output  # plain log lines: CliRunner is not a terminal
    assert "Training summary" in result.output and "test loss / accuracy" in result.output
    (run_dir,) = tmp_path.iterdir()
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.jsonl", "params.npz", "summary.json",
                                                   "preprocessing.json"}


def test_train_json_goes_to_stdout_and_progress_to_stderr(tmp_path):
    result = invoke("train", str(CONFIGS / "logreg.yaml"), "-o", str(tmp_path), "--json", "--device", "cpu",
                    "--precision", "float64", "-s", "train.steps=5")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["precision"] == "float64" and summary["device"].startswith("cpu")
    assert summary["steps"] == 5
    assert "step 0/5" in result.stderr


def test_quiet_prints_nothing_on_success(tmp_path):
    result = invoke("train", str(CONFIGS / "logreg.yaml"), "-o", str(tmp_path), "--quiet", "-s", "train.steps=3")
    assert result.exit_code == 0 and result.output == ""


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "missing.yaml"], "missing.yaml: config file not found"),
        (["train", str(CONFIGS / "logreg.yaml"), "--set", "optimizer.lerning_rate=1"],
         "did you mean 'learning_rate'?"),
        (["train", str(CONFIGS / "logreg.yaml"), "--set", "train.steps=-3"], "train.steps"),
        (["train", str(CONFIGS / "logreg.yaml"), "--set", "oops"], "expected KEY.PATH=VALUE"),
        (["train", str(CONFIGS / "logreg.yaml"), "--set", "data.source=file", "--set", "data.path=nope.csv"],
         "nope.csv: data file not found"),
        (["train", str(CONFIGS / "logreg.yaml"), "--set", "data.source=digits"], "use model.kind: mlp"),
        (["train", str(CONFIGS / "mlp.yaml"), "--set", "train.batch_size=100000"], "exceeds the"),
        (["config", "show", "nothing.yaml"], "config file not found"),
    ],
)
def test_user_errors_exit_2_with_a_message_and_no_traceback(args, message, tmp_path):
    result = invoke(*args, *(["-o", str(tmp_path / "runs")] if args[0] == "train" else []))
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # nothing written for a rejected config


def test_gpu_request_without_gpu_exits_2_with_install_hint(tmp_path):
    jax = pytest.importorskip("jax")
    try:
        has_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        has_gpu = False
    if has_gpu:
        pytest.skip("this machine has a GPU")
    result = invoke("train", str(CONFIGS / "logreg.yaml"), "--device", "gpu", "-o", str(tmp_path))
    assert result.exit_code == 2
    assert "JAX sees no GPU" in result.stderr and "pip install" in result.stderr


def test_divergence_exits_1(tmp_path):
    result = invoke("train", str(CONFIGS / "mlp.yaml"), "-o", str(tmp_path), "-q",
                    "--set", "optimizer={name: sgd, learning_rate: 1.0e+4}", "--set", "train.epochs=2")
    assert result.exit_code == 1
    assert "diverged" in result.stderr and "Traceback" not in result.output


def test_config_show_lists_sources_and_hides_unused_keys():
    result = invoke("config", "show", str(CONFIGS / "mlp.yaml"), "--set", "model.hidden=[256,256]")
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") >= 4}
    assert "[256, 256]" in lines["model.hidden"] and "--set" in lines["model.hidden"]
    assert "mlp.yaml:" in lines["optimizer.learning_rate"]
    assert "default" in lines["optimizer.b1"]
    assert "optimizer.momentum" not in lines  # adam does not use it
    assert "hidden" in result.output


def test_config_validate(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  name: adamm\n")
    good = invoke("config", "validate", *[str(p) for p in sorted(CONFIGS.glob("*.yaml"))])
    assert good.exit_code == 0 and good.output.count("ok ") == len(list(CONFIGS.glob("*.yaml")))
    mixed = invoke("config", "validate", str(CONFIGS / "logreg.yaml"), str(bad))
    assert mixed.exit_code == 2
    assert "did you mean 'adam'?" in mixed.stderr and "bad.yaml" in mixed.stderr
