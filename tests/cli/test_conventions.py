"""One spelling across commands: -o, usage errors, what --help shows after an option, and counts."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from gradfit.cli.app import app, legacy_spellings
from gradfit.counts import count, rate

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def commands() -> list[tuple[str, typer.core.TyperCommand]]:
    """Every command of the app, as 'train' or 'config show'."""
    found = []
    for name, command in typer.main.get_command(app).commands.items():
        if isinstance(command, typer.core.TyperGroup):
            found += [(f"{name} {sub}", cmd) for sub, cmd in command.commands.items()]
        else:
            found.append((name, command))
    return found


COMMANDS = commands()


def test_every_command_is_walked():
    names = {name for name, _ in COMMANDS}
    assert {"train", "sweep", "predict", "plot", "export", "config show", "data convert"} <= names


def test_o_always_names_the_file_a_command_writes():
    short_o, out_dir = [], []
    for name, command in COMMANDS:
        for param in command.params:
            if "-o" in param.opts:
                short_o.append((name, [o for o in param.opts if o.startswith("--")]))
            if "--out-dir" in param.opts:
                out_dir.append((name, param.opts))
    assert short_o and all(long == ["--out"] for _, long in short_o), short_o
    assert {name for name, _ in out_dir} == {"train", "sweep"}
    assert all(opts == ["--out-dir"] for _, opts in out_dir), out_dir  # no short form: -o is a file


def test_the_old_short_out_dir_still_works_with_a_note(capsys):
    assert legacy_spellings(["train", "c.yaml", "-q", "-o", "runs2"]) == ["train", "c.yaml", "-q", "--out-dir", "runs2"]
    assert legacy_spellings(["sweep", "c.yaml", "-oruns2"]) == ["sweep", "c.yaml", "--out-dir=runs2"]
    assert "-o is --out-dir" in capsys.readouterr().err
    assert legacy_spellings(["predict", "run", "x.csv", "-o", "p.csv"]) == ["predict", "run", "x.csv", "-o", "p.csv"]
    assert legacy_spellings(["train", "c.yaml", "--", "-o"])[-1] == "-o"  # after --, an argument


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plot"], "Missing argument 'RUN...'"),
        (["plot", "runs/x"], "Missing option '--out'"),
        (["train", "--bogus"], "No such option: --bogus"),
        (["predict"], "Missing argument"),
        (["config", "show", "--nope"], "No such option: --nope"),
        (["runs", "--sort", "nope"], "'nope'"),
    ],
)
def test_a_usage_error_reads_like_every_other_error(args, message):
    result = runner.invoke(app, args, env=WIDE, prog_name="gradfit")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"Usage: gradfit {args[0]}"), result.output
    assert lines[-1].startswith("error: ") and message in lines[-1], result.output
    assert "Error" not in result.output and "╭" not in result.output and "Traceback" not in result.output


def test_help_shows_a_placeholder_after_an_option_and_nothing_after_a_flag():
    typer_types = re.compile(r"<(int|float|str|path|bool)|\[x[<>]=|INTEGER|FLOAT|\bTEXT RANGE")
    for name, _ in COMMANDS:
        result = runner.invoke(app, [*name.split(), "--help"], env=WIDE)
        assert result.exit_code == 0, name
        assert not typer_types.search(result.output), (name, typer_types.search(result.output))
    train = runner.invoke(app, ["train", "--help"], env=WIDE).output
    assert re.search(r"--num-processes\s+N>=1\s", train)  # a range folded into its placeholder
    assert re.search(r"--device\s+auto\|cpu\|gpu\s", train)  # choices as they are
    assert re.search(r"--json\s+Print", train)  # a flag: nothing between it and its help


def test_a_count_groups_its_digits_and_agrees_with_its_noun():
    assert count(1, "evaluation") == "1 evaluation"
    assert count(7, "evaluation") == "7 evaluations"
    assert count(48000, "row") == "48,000 rows"
    assert count(2, "entry", "entries") == "2 entries"
    assert rate(5355.4) == "5,355" and rate(99.51) == "99.5" and rate(0.01234) == "0.0123"


def test_the_training_summary_writes_counts_one_way():
    from rich.console import Console

    from gradfit.cli.render.training import summary_table
    from gradfit.runs.rundir import Summary

    final = {f"{s}_{m}": 0.5 for s in ("val", "test") for m in ("loss", "accuracy")} | {"train_loss": 0.4}
    summary = Summary(
        run_dir="runs/x",
        status="completed",
        stop_reason="completed all steps",
        steps=3000,
        epochs=30.0,
        objective=0.4,
        grad_norm=0.1,
        final=final,
        steps_per_s=5355.2,
        evaluations=1,
        eval_every=3000,
        wall_time_s=1.0,
        train_time_s=0.5,
        eval_time_s=0.1,
        trace_time_s=0.1,
        compile_time_s=0.1,
        compile_cache="miss",
        device="cpu:0 (cpu)",
        params_step=3000,
    )
    console = Console(width=200)
    with console.capture() as captured:
        console.print(summary_table(summary))
    text = captured.get()
    assert "3,000 / 30" in text and "(1 evaluation, every 3,000 steps)" in text and "5,355 (training" in text
    assert not re.search(r"(?<![\d.,])\d{4,}(?![\d.])", text), text  # no ungrouped count


def test_the_usage_line_writes_arguments_as_click_does():
    usage = {
        args[0]: runner.invoke(app, list(args), env=WIDE, prog_name="gradfit").output.splitlines()[0]
        for args in (("plot",), ("train", "--bogus"), ("compare",))
    }
    assert usage == {
        "plot": "Usage: gradfit plot [OPTIONS] RUN...",
        "train": "Usage: gradfit train [OPTIONS] [CONFIG]",
        "compare": "Usage: gradfit compare [OPTIONS] RUN RUN...",
    }
