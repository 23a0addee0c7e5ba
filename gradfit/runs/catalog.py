"""Finding, listing and comparing runs from their files alone: ``gradfit runs``, ``compare`` and ``plot``. No jax.

A listing reads each run's summary.json and nothing else (a run without one, still training or killed, also has
its config.yaml read), so a folder of a thousand runs lists in well under a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gradfit.errors import GradfitError, RunDirError
from gradfit.runs import checkpoints
from gradfit.runs.rundir import MEMBERS_DIR, RunDir, Summary

# completed, failed, interrupted: as summary.json says; running: a process holds the run's lock; unfinished: no
# summary and nobody training (killed hard, or stopped before its first log point); damaged: unreadable summary
STATUSES = ("completed", "failed", "interrupted", "running", "unfinished", "damaged")


@dataclasses.dataclass(frozen=True)
class RunEntry:
    """One run directory as a listing sees it."""

    path: Path
    label: str  # its path from the folder listed (a sweep member: <sweep>/members/<member>)
    status: str  # one of STATUSES
    summary: Summary | None
    model: str
    dataset: str
    steps: int | None
    started: str  # ISO time (the folder's timestamp when the summary does not say)
    problem: str | None = None  # why it is damaged

    def row(self) -> dict:
        """The listing's columns (``--json`` and the table say the same thing)."""
        summary = self.summary
        final = summary.final if summary else {}
        best = summary.best if summary else {}
        return {
            "run": self.label,
            "path": str(self.path),
            "status": self.status,
            "model": self.model,
            "dataset": self.dataset,
            "steps": self.steps,
            "best_val_loss": best.get("val_loss"),
            "best_val_accuracy": best.get("val_accuracy"),
            "val_loss": final.get("val_loss"),
            "val_accuracy": final.get("val_accuracy"),
            "test_accuracy": final.get("test_accuracy"),
            "best_val_rmse": best.get("val_rmse"),  # a numeric target's
            "val_rmse": final.get("val_rmse"),
            "test_rmse": final.get("test_rmse"),
            "wall_time_s": summary.wall_time_s if summary else None,
            "started": self.started,
            "stop_reason": summary.stop_reason if summary else self.problem,
        }


SORT_KEYS = (
    "started",
    "run",
    "status",
    "steps",
    "best_val_loss",
    "best_val_accuracy",
    "val_loss",
    "val_accuracy",
    "test_accuracy",
    "best_val_rmse",
    "val_rmse",
    "test_rmse",
    "wall_time_s",
)


def find_runs(folder: str | Path) -> list[RunEntry]:
    """Every run directory in ``folder``: the folder itself if it is one, its sub-folders that are, and the
    members of the sweeps among them (or of ``folder``, if it is a sweep); oldest first. A sub-folder that
    cannot be read (its permissions) is listed as damaged, saying so: the others are listed all the same."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunDirError(
            f"{folder}: no such folder (no runs yet? gradfit train CONFIG makes one in runs/, or "
            "pass the folder given to --out-dir)"
            if not folder.exists()
            else f"{folder}: not a folder; pass the folder that holds the runs (default: runs)"
        )
    try:
        found = [
            read_entry(path, _label(path, folder)) if problem is None else _damaged(path, _label(path, folder), problem)
            for path, problem in _run_folders(folder)
        ]
    except OSError as exc:  # the folder itself
        raise RunDirError(f"{folder}: cannot read the folder ({exc.strerror}); check its permissions") from None
    return sorted(found, key=lambda entry: (entry.started, entry.label))


def _run_folders(folder: Path) -> Iterator[tuple[Path, str | None]]:
    """(path, None) for each run directory in ``folder``; (path, why) for a folder in it that cannot be read."""
    if RunDir(folder).is_run():
        yield folder, None
        return
    if (folder / MEMBERS_DIR).is_dir():  # a sweep: its members are runs
        yield from _members(folder / MEMBERS_DIR)
        return
    with os.scandir(folder) as children:
        for child in sorted(children, key=lambda c: c.name):
            if child.is_dir(follow_symlinks=False):
                path = Path(child.path)
                try:
                    is_run, is_sweep = RunDir(path).is_run(), (path / MEMBERS_DIR).is_dir()
                except OSError as exc:
                    yield path, _unreadable(path, exc)
                    continue
                if is_run:
                    yield path, None
                elif is_sweep:
                    yield from _members(path / MEMBERS_DIR)


def _members(members: Path) -> Iterator[tuple[Path, str | None]]:
    try:
        paths = sorted(members.iterdir())
    except OSError as exc:
        yield members, _unreadable(members, exc)
        return
    for path in paths:
        try:
            if RunDir(path).is_run():
                yield path, None
        except OSError as exc:
            yield path, _unreadable(path, exc)


def _unreadable(path: Path, exc: OSError) -> str:
    return f"{path}: cannot read it ({exc.strerror}); check its permissions"


def _label(path: Path, folder: Path) -> str:
    return path.name if path == folder else str(path.relative_to(folder))


def read_entry(path: Path, label: str | None = None) -> RunEntry:
    """What a listing shows of one run directory, from its summary (or its config when it has none)."""
    label = label or path.name
    try:
        return _read_entry(path, label)
    except OSError as exc:  # a file of it that cannot even be looked at (its permissions)
        return _damaged(path, label, _unreadable(Path(exc.filename or path), exc))


def _damaged(path: Path, label: str, problem: str) -> RunEntry:
    return RunEntry(path, label, "damaged", None, "?", "?", None, _folder_time(path), problem)


def _read_entry(path: Path, label: str) -> RunEntry:
    run = RunDir(path)
    started = _folder_time(path)
    try:
        summary = run.summary()
    except RunDirError as exc:
        return RunEntry(path, label, "damaged", None, "?", "?", None, started, str(exc))
    running = run.held_by_another()
    if summary is not None:
        return RunEntry(
            path,
            label,
            "running" if running else summary.status,
            summary,
            summary.model or "?",
            summary.dataset or "?",
            summary.steps,
            summary.started or started,
        )
    model = dataset = "?"
    with contextlib.suppress(GradfitError, OSError):
        config = run.config()
        model, dataset = config.model.kind, config.data.source
    newest = checkpoints.latest(path)
    return RunEntry(
        path,
        label,
        "running" if running else "unfinished",
        None,
        model,
        dataset,
        None if newest is None else checkpoints.step_of(newest),
        started,
    )


def _folder_time(path: Path) -> str:
    """ISO time from the folder's ``-YYYYmmdd-HHMMSS[-n]`` suffix, else its config's modification time."""
    for part in (path.name.rsplit("-", 2)[-2:], path.name.rsplit("-", 3)[-3:-1]):
        with contextlib.suppress(ValueError):
            return dt.datetime.strptime("-".join(part), "%Y%m%d-%H%M%S").isoformat()
    with contextlib.suppress(OSError):
        return dt.datetime.fromtimestamp(RunDir(path).config_file.stat().st_mtime).isoformat(timespec="seconds")
    return ""


def sort_rows(rows: list[dict], key: str) -> list[dict]:
    """Rows by ``key``: best first for metrics (lowest loss, highest accuracy), newest first for started,
    fastest first for wall time; rows without the value last."""
    descending = key in ("started", "best_val_accuracy", "val_accuracy", "test_accuracy", "steps")  # rmse: lowest first
    present = [row for row in rows if row[key] is not None]
    absent = [row for row in rows if row[key] is None]
    return sorted(present, key=lambda row: row[key], reverse=descending) + absent


def labels(paths: Sequence[Path]) -> list[str]:
    """Short names for runs shown side by side: the folder's name, with its parents' where two are alike
    (members of two sweeps share their folder names)."""
    paths = [Path(path).resolve() for path in paths]
    for depth in range(1, max((len(path.parts) for path in paths), default=1) + 1):
        names = [str(Path(*path.parts[-depth:])) for path in paths]
        if len(set(names)) == len(names):
            return names
    return [str(path) for path in paths]  # the same run twice


# ------------------------------------------------------------------------------------------------ compare


@dataclasses.dataclass(frozen=True)
class Comparison:
    runs: list[str]  # run folder paths, in the order given
    labels: list[str]  # their short names (``labels``)
    config: dict[str, list]  # dotted key -> its value in each run, for the keys that differ
    metrics: dict[str, list]  # metric -> its value in each run

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


COMPARED_METRICS = (
    "status",
    "steps",
    "epochs",
    "objective",
    "grad_norm",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    "val_rmse",
    "val_mae",
    "val_r2",
    "test_rmse",
    "test_mae",
    "test_r2",
    "best_val_loss",
    "best_val_accuracy",
    "best_val_rmse",
    "wall_time_s",
    "steps_per_s",
)
#: metrics of one kind of target: left out of a comparison where no run has them
_TASK_METRICS = {
    "val_accuracy",
    "test_accuracy",
    "best_val_accuracy",
    *(f"{s}_{m}" for s in ("val", "test") for m in ("rmse", "mae", "r2")),
    "best_val_rmse",
}


def compare(paths: Sequence[str | Path]) -> Comparison:
    """The config keys on which runs differ and their metrics side by side.

    Configs are compared resolved, every key with its value, so a key an older run's config.yaml does not
    spell (its default then) is not a difference unless the default changed.
    """
    if len(paths) < 2:
        raise GradfitError("compare needs at least two runs: gradfit compare RUN RUN [RUN...]")
    folders = [RunDir.open(path) for path in paths]
    configs = [_flat(run.config().model_dump(mode="json")) for run in folders]
    keys = sorted(set().union(*configs))
    values = {key: [config.get(key) for config in configs] for key in keys}
    config = {key: row for key, row in values.items() if any(v != row[0] for v in row[1:])}
    rows = [read_entry(run.path) for run in folders]
    metrics = {name: [_metric(entry, name) for entry in rows] for name in COMPARED_METRICS}
    regression = any(entry.summary is not None and "val_rmse" in entry.summary.final for entry in rows)

    def shown(name: str, values: list) -> bool:  # classes keep their accuracy rows, even where none was measured
        return (
            name not in _TASK_METRICS
            or any(v is not None for v in values)
            or (name.endswith("accuracy") and not regression)
        )

    metrics = {name: values for name, values in metrics.items() if shown(name, values)}
    return Comparison([str(run.path) for run in folders], labels([run.path for run in folders]), config, metrics)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _metric(entry: RunEntry, name: str) -> Any:
    summary = entry.summary
    if name == "status":
        return entry.status
    if summary is None:
        return entry.steps if name == "steps" else None
    if name in summary.final or name in _TASK_METRICS - {"best_val_accuracy", "best_val_rmse"}:
        return summary.final.get(name)
    if name.startswith("best_"):
        return summary.best.get(name[len("best_") :])
    return getattr(summary, name)
