"""gradfit runs, compare and plot with sweeps among the runs, on run directories written by hand (no training):
a sweep as one row, tables that fit the terminal without wrapping a name, sweep folders given to plot and compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from gradfit.cli.app import app
from gradfit.runs import catalog, lock
from gradfit.runs import plot as plotting
from gradfit.sweeps.plan import rank

SWEEP = "mlp-sweep-20261201-110000"
RUNS = ("logreg-20261201-100000", "mlp-20261201-120000", "linear-20261201-090000")
# (learning rate, seed, final val_loss) per member: the 0.003 setting ranks first (mean 0.35), though member 0 of
# the 0.001 setting has the lowest val_loss of all (0.2)
MEMBERS = [(0.001, 0, 0.2), (0.001, 1, 0.9), (0.003, 0, 0.4), (0.003, 1, 0.3), (0.01, 0, 0.6), (0.01, 1, 0.7)]


def invoke(*args, columns: int = 200):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})


def write_run(path: Path, name: str, val_loss: float | None, config: str = "", **summary) -> Path:
    """A run directory as gradfit train leaves it, as far as listing, compare and plot read it."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"name: {name}\n{config}")
    records = [{"step": s, "batch_objective": 1 / (1 + s), "val_loss": (val_loss or 1) + 1 / (1 + s)} for s in range(5)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if val_loss is not None:
        final = {"val_loss": val_loss, "val_accuracy": 1 - val_loss / 2, "test_accuracy": 0.9}
        fields = {"run_dir": str(path), "status": "completed", "stop_reason": "completed all steps", "model": "mlp"}
        fields |= {"dataset": "/home/someone/data/breast_cancer.csv", "steps": 40, "final": final}
        (path / "summary.json").write_text(json.dumps(fields | {"best": {"val_loss": val_loss}} | summary))
    return path


def write_sweep(folder: Path, name: str = SWEEP, members=MEMBERS, status: str = "completed") -> Path:
    """A sweep's folder: sweep.yaml, sweep.json (its ranking from gradfit's own ``rank``) and its members."""
    sweep = folder / name
    entries = []
    for index, (rate, seed, loss) in enumerate(members):
        member = f"{index:03d}_learning_rate={rate}_seed={seed}"
        config = f"model: {{kind: mlp}}\noptimizer: {{learning_rate: {rate}}}\nseed: {seed}\n"
        write_run(sweep / "members" / member, f"mlp-{index:03d}", loss, config)
        done = loss is not None
        entries.append(
            {
                "index": index,
                "setting": index // 2,
                "values": {"optimizer.learning_rate": rate, "seed": seed},
                "folder": member,
                "status": "completed" if done else "pending",
                **({"final": {"val_loss": loss}} if done else {}),
            }
        )
    (sweep / "sweep.yaml").write_text("name: mlp\nsweep: {seeds: 2}\n")
    state = {"status": status, "metric": "val_loss", "members": entries, "wall_time_s": 12.5, "stop_reason": None}
    (sweep / "sweep.json").write_text(json.dumps(state | {"ranking": rank(entries, "val_loss")}))
    return sweep


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three runs and a sweep of six, in runs/."""
    runs = tmp_path / "runs"
    for name, loss in zip(RUNS, (0.05, 0.5, None)):
        write_run(runs / name, name.split("-")[0], loss)
    write_sweep(runs)
    return runs


def table_lines(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


# ------------------------------------------------------------------------------------------------ gradfit runs


def test_at_80_columns_names_stay_whole_and_a_sweep_is_one_row(folder):
    lines = table_lines(invoke("runs", folder, columns=80))
    assert max(cell_len(line) for line in lines) <= 80
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == 4  # three runs and the sweep
    for name in RUNS:
        assert sum(name in row for row in rows) == 1, name  # whole, on one line
    assert any(f"{SWEEP} (6 runs)" in row for row in rows)
    assert not any("members/" in row for row in rows)
    text = " ".join(" ".join(lines).split())
    assert "the row shows the best of its 6 runs, members/003_learning_rate=0.003_seed=1" in text
    dropped = text.split("not shown at 80 columns: ")[1]
    assert dropped.startswith("model, dataset, best val_loss, test_acc, wall time, started (")
    assert "--json" in dropped


def test_members_lists_every_member_whole_at_80_columns(folder):
    lines = table_lines(invoke("runs", folder, "--members", columns=80))
    assert max(cell_len(line) for line in lines) <= 80
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == 3 + len(MEMBERS)
    for index, (rate, seed, _) in enumerate(MEMBERS):  # "members" left out where it does not fit
        assert any(f"{SWEEP}/…/{index:03d}_learning_rate={rate}_seed={seed}" in row for row in rows)
    assert "… marks what a name leaves out to fit 80 columns" in " ".join(lines)


def test_a_wide_terminal_shows_every_column_and_datasets_by_their_file_name(folder):
    lines = table_lines(invoke("runs", folder, columns=200))
    assert "not shown" not in "\n".join(lines)
    header = next(line for line in lines if line.startswith("┃"))
    for column in ("model", "dataset", "best val_loss", "test_acc", "wall time", "started"):
        assert column in header
    rows = [line for line in lines if line.startswith("│")]
    assert any("breast_cancer.csv" in row for row in rows) and not any("/home/someone" in row for row in rows)
    narrower = "\n".join(table_lines(invoke("runs", folder, columns=120)))
    assert "not shown at 120 columns: " in narrower and "model" in next(
        line for line in narrower.splitlines() if line.startswith("┃")
    )


def test_a_name_too_long_for_the_terminal_is_shortened_in_the_middle_not_wrapped(folder):
    lines = table_lines(invoke("runs", folder, "--members", columns=50))
    rows = [line for line in lines if line.startswith("│")]
    assert max(cell_len(line) for line in lines) <= 50 and len(rows) == 3 + len(MEMBERS)
    assert any("…" in row and row.split("│")[1].strip().endswith("_rate=0.003_seed=1") for row in rows)
    assert "… marks what a name leaves out" in " ".join(lines)
    lines = table_lines(invoke("runs", folder, "--members", columns=64))  # room for the sweep's name whole
    rows = [line for line in lines if line.startswith("│")]
    assert max(cell_len(line) for line in lines) <= 64
    for index, (rate, seed, _) in enumerate(MEMBERS):  # the member's index and its last value stay
        assert any(f"{SWEEP}/…/{index:03d}_" in row and f"{rate}_seed={seed} " in row for row in rows), index


def test_json_keeps_one_row_per_sweep_and_members_expands_it(folder):
    rows = {row["run"]: row for row in json.loads("".join(table_lines(invoke("runs", folder, "--json"))))}
    sweep = rows[SWEEP]
    best = folder / SWEEP / "members" / "003_learning_rate=0.003_seed=1"  # the best setting's best seed
    assert (sweep["kind"], sweep["members"], sweep["best_member"]) == ("sweep", 6, str(best))
    assert (sweep["val_loss"], sweep["status"], sweep["wall_time_s"], sweep["model"]) == (0.3, "completed", 12.5, "mlp")
    assert sweep["started"] == "2026-12-01T11:00:00"  # from the folder's name
    assert {rows[name]["kind"] for name in RUNS} == {"run"}
    assert all(row["members"] is None and row["best_member"] is None for name, row in rows.items() if name != SWEEP)
    assert rows.keys() - {SWEEP} == set(RUNS)

    expanded = json.loads("".join(table_lines(invoke("runs", folder, "--json", "--members"))))
    members = [row for row in expanded if row["kind"] == "member"]
    assert (
        len(expanded) == 3 + 6
        and len(members) == 6
        and all(row["run"].startswith(f"{SWEEP}/members/") for row in members)
    )
    assert set(expanded[0]) == set(sweep)  # one shape for every row

    own = json.loads("".join(table_lines(invoke("runs", folder / SWEEP, "--json"))))
    assert [row["kind"] for row in own] == ["member"] * 6 and own[0]["run"].startswith("members/")


def test_sort_and_status_treat_a_sweep_by_its_best_member_and_its_own_status(folder):
    write_sweep(folder, "lr-sweep-20261202-080000", MEMBERS[:2], status="interrupted")
    rows = json.loads("".join(table_lines(invoke("runs", folder, "--json", "--sort", "val_loss"))))
    assert [row["run"] for row in rows] == [
        "logreg-20261201-100000",  # 0.05
        "lr-sweep-20261202-080000",  # its best member: 0.2
        SWEEP,  # 0.3
        "mlp-20261201-120000",  # 0.5
        "linear-20261201-090000",  # no summary: last
    ]
    interrupted = json.loads("".join(table_lines(invoke("runs", folder, "--json", "--status", "interrupted"))))
    assert [row["run"] for row in interrupted] == ["lr-sweep-20261202-080000"]
    newest = json.loads("".join(table_lines(invoke("runs", folder, "--json"))))
    assert newest[0]["run"] == "lr-sweep-20261202-080000"  # started (the default): newest first


def test_a_sweep_in_training_killed_unstarted_or_damaged_is_still_one_row(tmp_path):
    running = write_sweep(tmp_path, "a-sweep-20261201-110000", [(0.1, 0, None), (0.2, 0, None)], status="running")
    killed = write_sweep(tmp_path, "b-sweep-20261201-110000", [(0.1, 0, 0.5), (0.2, 0, None)], status="running")
    damaged = write_sweep(tmp_path, "c-sweep-20261201-110000", MEMBERS[:3])
    (damaged / "sweep.json").write_text('{"members": [{"folder": "../../elsewhere"}], "ranking": []}')
    with lock.locked(running):
        entries = {entry.label: entry for entry in catalog.find_runs(tmp_path)}
    assert {label: entry.status for label, entry in entries.items()} == {
        running.name: "running",
        killed.name: "unfinished",  # sweep.json says running, and nobody holds the sweep
        damaged.name: "damaged",
    }
    assert entries[running.name].summary is None and entries[running.name].model == "mlp"
    killed_row = entries[killed.name].row()  # what completed before the kill: its best so far
    assert (killed_row["best_member"], killed_row["val_loss"]) == (
        str(killed / "members" / "000_learning_rate=0.1_seed=0"),
        0.5,
    )
    assert entries[damaged.name].sweep.members == 3 and "../../elsewhere" in entries[damaged.name].problem
    lines = table_lines(invoke("runs", tmp_path, columns=100))
    text = " ".join(" ".join(lines).split())
    assert "a-sweep-20261201-110000: none of its 2 runs completed yet" in text
    assert "damaged: " in text and "not a sweep state" in text


# ------------------------------------------------------------------------------------------------ compare, plot


def test_compare_takes_a_sweep_folder_as_its_members(folder):
    result = invoke("compare", folder / SWEEP, "--json")
    assert result.exit_code == 0, result.output
    compared = json.loads(result.stdout)
    assert compared["runs"] == [str(path) for path in sorted((folder / SWEEP / "members").iterdir())]
    assert compared["config"]["optimizer.learning_rate"] == [rate for rate, _, _ in MEMBERS]
    assert len(set(compared["labels"])) == 6
    with_run = json.loads(invoke("compare", folder / RUNS[0], folder / SWEEP, "--json").stdout)
    assert with_run["labels"][0] == RUNS[0] and len(with_run["runs"]) == 7


def test_plot_takes_sweep_folders_as_their_members_with_distinct_labels(folder, tmp_path, monkeypatch):
    write_sweep(folder, "mlp-sweep-20261202-110000", MEMBERS[:2])  # the same member folder names as the first
    drawn = {}

    def plot_curves(curves, metrics, out, **options):
        drawn["labels"] = [label for label, records in curves]
        drawn["points"] = [len(list(records)) for _, records in curves]

    monkeypatch.setattr(plotting, "plot_curves", plot_curves)
    args = ["plot", folder / RUNS[0], folder / SWEEP, folder / "mlp-sweep-20261202-110000", "--out", tmp_path / "c.png"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    labels = drawn["labels"]
    assert len(labels) == 1 + 6 + 2 and len(set(labels)) == len(labels) and drawn["points"] == [5] * len(labels)
    assert labels[0] == RUNS[0] and labels[1] == f"{SWEEP}/members/000_learning_rate=0.001_seed=0"


@pytest.mark.parametrize("command", ["plot", "compare"])
def test_a_folder_that_is_neither_a_run_nor_a_sweep_is_refused_with_a_hint(folder, tmp_path, command):
    out = ["--out", tmp_path / "c.png"] if command == "plot" else []
    result = invoke(command, folder, folder / RUNS[0], *out)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "not a gradfit run directory" in message and f"{folder} holds runs: name them (e.g. {folder}/*)" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    message = " ".join(invoke(command, empty, folder / RUNS[0], *out).output.split())
    assert "not a gradfit run directory" in message and "or a sweep's folder" in message
