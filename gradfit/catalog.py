"""Finding, listing and comparing runs from their files alone: ``gradfit runs``, ``compare`` and ``plot``. No jax.

A listing reads each run's summary.json and nothing else (a run without one, still training or killed, also has
its config.yaml read), so a folder of a thousand runs lists in well under a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml

from gradfit import checkpoints, files
from gradfit.errors import GradfitError, RunDirError
from gradfit.runs import MEMBERS_DIR, RunDir, Summary

# completed, failed, interrupted: as summary.json says; running: a process holds the run's lock; unfinished: no
# summary and nobody training (killed hard, or stopped before its first log point); damaged: unreadable summary
STATUSES = ("completed", "failed", "interrupted", "running", "unfinished", "damaged")


@dataclasses.dataclass(frozen=True)
class RunEntry:
    """One run directory as a listing sees it."""

    path: Path
    status: str  # one of STATUSES
    summary: Optional[Summary]
    model: str
    dataset: str
    steps: Optional[int]
    started: str  # ISO time (the folder's timestamp when the summary does not say)
    problem: Optional[str] = None  # why it is damaged

    @property
    def name(self) -> str:
        return self.path.name

    def row(self) -> dict:
        """The listing's columns (``--json`` and the table say the same thing)."""
        summary = self.summary
        final = summary.final if summary else {}
        best = summary.best if summary else {}
        return {
            "run": self.name, "path": str(self.path), "status": self.status, "model": self.model,
            "dataset": self.dataset, "steps": self.steps,
            "best_val_loss": best.get("val_loss"), "best_val_accuracy": best.get("val_accuracy"),
            "val_loss": final.get("val_loss"), "val_accuracy": final.get("val_accuracy"),
            "test_accuracy": final.get("test_accuracy"),
            "wall_time_s": summary.wall_time_s if summary else None, "started": self.started,
            "stop_reason": summary.stop_reason if summary else self.problem,
        }


SORT_KEYS = ("started", "run", "status", "steps", "best_val_loss", "best_val_accuracy", "val_loss", "val_accuracy",
             "test_accuracy", "wall_time_s")


def find_runs(folder: str | Path) -> list[RunEntry]:
    """Every run directory in ``folder``: the folder itself if it is one, its sub-folders that are, and the
    members of the sweeps among them; oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunDirError(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder; pass "
                          "the folder that holds the runs (default: runs)")
    found = [read_entry(path) for path in _run_folders(folder)]
    return sorted(found, key=lambda entry: (entry.started, entry.name))


def _run_folders(folder: Path) -> Iterator[Path]:
    if _is_run(folder):
        yield folder
        return
    with os.scandir(folder) as children:
        for child in sorted(children, key=lambda c: c.name):
            if not child.is_dir(follow_symlinks=False):
                continue
            path = Path(child.path)
            if _is_run(path):
                yield path
            elif (path / MEMBERS_DIR).is_dir():  # a sweep: its members are runs
                yield from (member for member in sorted((path / MEMBERS_DIR).iterdir()) if _is_run(member))


def _is_run(path: Path) -> bool:
    run = RunDir(path)
    return run.config_file.is_file() and run.metrics_file.exists()


def read_entry(path: Path) -> RunEntry:
    """What a listing shows of one run directory, from its summary (or its config when it has none)."""
    run = RunDir(path)
    started = _folder_time(path)
    try:
        summary = run.summary()
    except RunDirError as exc:
        return RunEntry(path, "damaged", None, "?", "?", None, started, str(exc))
    running = _locked_by_another(path)
    if summary is not None:
        status = "running" if running else summary.status
        return RunEntry(path, status, summary, summary.model or "?", summary.dataset or "?", summary.steps,
                        summary.started or started)
    config = _config_tree(run)
    newest = checkpoints.latest(path)
    return RunEntry(path, "running" if running else "unfinished", None, str(config["model"].get("kind", "?")),
                    str(config["data"].get("source", "?")), None if newest is None else checkpoints.step_of(newest),
                    started)


def _config_tree(run: RunDir) -> dict:
    """model and data sections of a run's config.yaml, as plain YAML (empty when unreadable)."""
    tree: Any = None
    with contextlib.suppress(OSError, GradfitError, yaml.YAMLError):
        tree = yaml.safe_load(files.read_text(run.config_file, "config", RunDirError, files.MAX_JSON_BYTES))
    tree = tree if isinstance(tree, dict) else {}
    return {section: tree.get(section) if isinstance(tree.get(section), dict) else {} for section in ("model", "data")}


def _folder_time(path: Path) -> str:
    """ISO time from the folder's ``-YYYYmmdd-HHMMSS`` suffix, else its config's modification time."""
    import datetime as dt

    for part in (path.name.rsplit("-", 2)[-2:], path.name.rsplit("-", 3)[-3:-1]):
        with contextlib.suppress(ValueError):
            return dt.datetime.strptime("-".join(part), "%Y%m%d-%H%M%S").isoformat()
    with contextlib.suppress(OSError):
        return dt.datetime.fromtimestamp(RunDir(path).config_file.stat().st_mtime).isoformat(timespec="seconds")
    return ""


def _locked_by_another(path: Path) -> bool:
    """True while a gradfit process holds the run's lock (it is training it now)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        return False
    try:
        handle = os.open(path / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # held for an instant only, never while anyone waits
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(handle)


def sort_rows(rows: list[dict], key: str) -> list[dict]:
    """Rows by ``key``: best first for metrics (lowest loss, highest accuracy), newest first for started,
    fastest first for wall time; rows without the value last."""
    descending = key in ("started", "best_val_accuracy", "val_accuracy", "test_accuracy", "steps")
    present = [row for row in rows if row[key] is not None]
    absent = [row for row in rows if row[key] is None]
    return sorted(present, key=lambda row: row[key], reverse=descending) + absent


# ------------------------------------------------------------------------------------------------ compare


@dataclasses.dataclass(frozen=True)
class Comparison:
    runs: list[str]  # run folder paths, in the order given
    config: dict[str, list]  # dotted key -> its value in each run, for the keys that differ
    metrics: dict[str, list]  # metric -> its value in each run

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


COMPARED_METRICS = ("status", "steps", "epochs", "objective", "grad_norm", "train_loss", "val_loss", "val_accuracy",
                    "test_loss", "test_accuracy", "best_val_loss", "best_val_accuracy", "wall_time_s", "steps_per_s")


def compare(paths: Sequence[str | Path]) -> Comparison:
    """The config keys on which runs differ and their metrics side by side."""
    if len(paths) < 2:
        raise GradfitError("compare needs at least two runs: gradfit compare RUN RUN [RUN...]")
    folders = [RunDir.open(path) for path in paths]
    configs = [_flat(_load_config(run)) for run in folders]
    keys = sorted(set().union(*configs))
    missing = object()
    differ = {key: [config.get(key, missing) for config in configs] for key in keys}
    config = {key: [None if v is missing else v for v in values] for key, values in differ.items()
              if any(v != values[0] for v in values[1:])}
    rows = [read_entry(run.path) for run in folders]
    metrics = {name: [_metric(entry, name) for entry in rows] for name in COMPARED_METRICS}
    return Comparison([str(run.path) for run in folders], config, metrics)


def _load_config(run: RunDir) -> dict:
    text = files.read_text(run.config_file, "config", RunDirError, files.MAX_JSON_BYTES)
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RunDirError(f"{run.config_file}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise RunDirError(f"{run.config_file}: not a gradfit config (a mapping of sections)")
    return tree


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
    if name in summary.final:
        return summary.final[name]
    if name.startswith("best_"):
        return summary.best.get(name[len("best_"):])
    return getattr(summary, name)
