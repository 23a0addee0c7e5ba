"""The command line, through typer's CliRunner and (for the console script and imports) subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import CONFIGS, ROOT, requires_no_gpu
from typer.testing import CliRunner

import gradfit
from gradfit.cli.app import app

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
    code = "import sys, gradfit.cli.app; assert 'jax' not in sys.modules, 'jax imported'; print('ok')"
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
    assert "Training summary" in result.output and "test_loss / test_accuracy" in result.output
    (run_dir,) = tmp_path.iterdir()
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "params.npz",
        "summary.json",
        "preprocessing.json",
    }


def test_train_json_goes_to_stdout_and_progress_to_stderr(tmp_path):
    result = invoke(
        "train",
        str(CONFIGS / "logreg.yaml"),
        "--out-dir",
        str(tmp_path),
        "--json",
        "--device",
        "cpu",
        "--precision",
        "float64",
        "-s",
        "train.steps=5",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["precision"] == "float64" and summary["device"].startswith("cpu")
    assert summary["steps"] == 5
    assert "step 0/5" in result.stderr


def test_quiet_prints_nothing_on_success(tmp_path):
    result = invoke("train", str(CONFIGS / "logreg.yaml"), "--out-dir", str(tmp_path), "--quiet", "-s", "train.steps=3")
    assert result.exit_code == 0 and result.output == ""


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "missing.yaml"], "missing.yaml: config file not found"),
        (["train", str(CONFIGS / "mpl.yaml")], f"config file not found; did you mean {CONFIGS / 'mlp.yaml'}?"),
        (
            ["data", "describe", str(CONFIGS.parent / "data" / "breast_cancr.csv")],
            f"not found; did you mean {CONFIGS.parent / 'data' / 'breast_cancer.csv'}?",
        ),
        (["train", str(CONFIGS / "logreg.yaml"), "--set", "optimizer.lerning_rate=1"], "did you mean 'learning_rate'?"),
        (["train", str(CONFIGS / "logreg.yaml"), "--set", "train.steps=-3"], "train.steps"),
        (["train", str(CONFIGS / "logreg.yaml"), "--set", "oops"], "expected KEY.PATH=VALUE"),
        (
            ["train", str(CONFIGS / "logreg.yaml"), "--set", "data.source=file", "--set", "data.path=nope.csv"],
            "nope.csv: data file not found",
        ),
        (["train", str(CONFIGS / "mlp.yaml"), "--set", "train.batch_size=100000"], "exceeds the"),
        (["config", "show", "nothing.yaml"], "config file not found"),
    ],
)
def test_user_errors_exit_2_with_a_message_and_no_traceback(args, message, tmp_path):
    result = invoke(*args, *(["--out-dir", str(tmp_path / "runs")] if args[0] == "train" else []))
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # nothing written for a rejected config


@requires_no_gpu
def test_gpu_request_without_gpu_exits_2_with_install_hint(tmp_path):
    result = invoke("train", str(CONFIGS / "logreg.yaml"), "--device", "gpu", "--out-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "JAX sees no GPU" in result.stderr and "pip install" in result.stderr


def test_divergence_exits_1(tmp_path):
    result = invoke(
        "train",
        str(CONFIGS / "mlp.yaml"),
        "--out-dir",
        str(tmp_path),
        "-q",
        "--set",
        "optimizer={name: sgd, learning_rate: 1.0e+4}",
        "--set",
        "train.epochs=2",
    )
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


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "csv_text,message",
    [
        ("a,b,target\n1,2,x\n3,oops,y\n", ":3: column 'b' has non-numeric value 'oops'"),
        ("a,b,target\n1,2,x\n3,nan,y\n", ":3: column 'b' is missing"),
        ("a,b,target\n1,2,x\n3,4\n", ":3: 2 fields but the header has 3 columns"),
        ("a,b,label\n1,2,x\n3,4,y\n", "no label column 'target'"),
        ("a,b,target\n1,2,x\n3,4,x\n5,6,x\n", "single class ('x')"),
        ("a,target,a\n1,x,2\n3,y,4\n", "duplicate column name(s) in the header: 'a'"),
        ("a;b;target\n1;2;x\n", "seems to use another separator"),
        ("", "file is empty"),
    ],
)
def test_broken_data_files_exit_2_naming_the_problem(csv_text, message, tmp_path):
    path = _write(tmp_path / "data.csv", csv_text)
    result = invoke(
        "train",
        str(CONFIGS / "logreg.yaml"),
        "--out-dir",
        str(tmp_path / "runs"),
        "--set",
        "data.source=file",
        "--set",
        f"data.path={path}",
    )
    assert result.exit_code == 2, result.output
    assert "data.csv" in result.stderr and message in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_command_line_steps_replace_the_files_epochs(tmp_path):
    result = invoke("train", str(CONFIGS / "mlp.yaml"), "--out-dir", str(tmp_path), "--json", "--set", "train.steps=70")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 70


def test_null_clears_a_key_the_new_variant_does_not_use():
    result = invoke(
        "config",
        "show",
        str(CONFIGS / "mlp.yaml"),
        "--set",
        "optimizer.name=sgd",
        "--set",
        "optimizer.b1=null",
        "--set",
        "optimizer.schedule={name: constant}",
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "override,message",
    [
        ("seed=18446744073709551616", "seed"),
        ("optimizer.learning_rate=.inf", "optimizer.learning_rate"),
        ("model.l2=.nan", "model.l2"),
    ],
)
def test_extreme_numbers_are_config_errors(override, message, tmp_path):
    result = invoke("train", str(CONFIGS / "logreg.yaml"), "--out-dir", str(tmp_path), "--set", override)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_sigint_finishes_the_chunk_writes_a_checkpoint_and_exits_130(tmp_path):
    config = _write(
        tmp_path / "long.yaml",
        (
            "name: long\ndata: {source: synthetic, synthetic: {n_samples: 20000, n_features: 50}}\n"
            "optimizer: {name: sgd, learning_rate: 0.5}\ntrain: {steps: 10000000, log_every: 20}\n"
            "runtime: {device: cpu}\n"
        ),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gradfit", "train", config, "--out-dir", str(tmp_path / "runs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = None
    for _ in range(600):  # wait until a few log points are on disk (at most 60 s)
        found = list((tmp_path / "runs").glob("long-*/metrics.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            metrics = found[0]
            break
        time.sleep(0.1)
    assert metrics is not None, "training did not start"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    run_dir = metrics.parent
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert summary["status"] == "interrupted" and summary["stop_reason"].startswith("SIGINT")
    assert summary["steps"] == records[-1]["step"] and summary["objective"] == records[-1]["objective"]
    assert (run_dir / "params.npz").exists()
    assert (run_dir / "checkpoints" / f"step-{summary['steps']:08d}.npz").exists()
    assert f"Resume with: gradfit train --resume {run_dir}" in " ".join(err.split())
