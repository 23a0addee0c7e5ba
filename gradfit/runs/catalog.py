"""Finding and listing runs from their files alone: ``gradfit runs``, and the runs ``compare`` and ``plot`` open.
No jax.

A listing reads each run's summary.json and nothing else (a run without one, still training or killed, also has
its config.yaml read), so a folder of a thousand runs lists in well under a second. A sweep in the folder is one
entry, read from its sweep.json and its best member's summary, unless its members are asked for.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from gradfit import files
from gradfit.config.choices import HIGHER_IS_BETTER
from gradfit.errors import GradfitError, RunDirError
from gradfit.runs import checkpoints, lock
from gradfit.runs.rundir import MEMBERS_DIR, SWEEP_STATE, RunDir, Summary

# completed, failed, interrupted: as summary.json says; running: a process holds the run's lock; unfinished: no
# summary and nobody training (killed hard, or stopped before its first log point); damaged: unreadable summary
STATUSES = ("completed", "failed", "interrupted", "running", "unfinished", "damaged")


@dataclasses.dataclass(frozen=True)
class SweepInfo:
    """What a listing shows of a sweep beyond its best member's metrics."""

    members: int  # planned members, pending ones included
    best_member: Path | None  # the member whose metrics the sweep's row shows (None: none completed yet)
    wall_time_s: float | None  # the whole sweep's


@dataclasses.dataclass(frozen=True)
class RunEntry:
    """One run directory, or one sweep (``sweep`` set: its best member's metrics), as a listing sees it."""

    path: Path
    label: str  # its path from the folder listed (a sweep member: <sweep>/members/<member>)
    status: str  # one of STATUSES (a sweep's: what its sweep.json says)
    summary: Summary | None
    model: str
    dataset: str
    steps: int | None
    started: str  # ISO time (the folder's timestamp when the summary does not say)
    problem: str | None = None  # why it is damaged (a sweep: what stopped it)
    sweep: SweepInfo | None = None

    @property
    def kind(self) -> str:
        """run, sweep (one row for a whole sweep) or member (a run of a sweep, listed on its own)."""
        return "sweep" if self.sweep else "member" if self.path.parent.name == MEMBERS_DIR else "run"

    def row(self) -> dict:
        """The listing's columns (``--json`` and the table say the same thing)."""
        summary = self.summary
        final = summary.final if summary else {}
        best = summary.best if summary else {}
        sweep = self.sweep
        return {
            "run": self.label,
            "path": str(self.path),
            "kind": self.kind,
            "members": sweep.members if sweep else None,
            "best_member": str(sweep.best_member) if sweep and sweep.best_member else None,
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
            "wall_time_s": sweep.wall_time_s if sweep else summary.wall_time_s if summary else None,
            "started": self.started,
            "stop_reason": self.problem if sweep or not summary else summary.stop_reason,
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


def find_runs(folder: str | Path, members: bool = False) -> list[RunEntry]:
    """Every run directory in ``folder``, oldest first: the folder itself if it is one, its sub-folders that are,
    and its sweeps, each as one entry (``read_sweep``) or, with ``members``, as its members' (``folder`` itself a
    sweep: its members). A sub-folder that cannot be read (its permissions) is listed as damaged, saying so: the
    others are listed all the same."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunDirError(
            f"{folder}: no such folder (no runs yet? gradfit train CONFIG makes one in runs/, or "
            "pass the folder given to --out-dir)"
            if not folder.exists()
            else f"{folder}: not a folder; pass the folder that holds the runs (default: runs)"
        )
    try:
        found = [_entry(path, _label(path, folder), kind, problem) for path, kind, problem in _folders(folder, members)]
    except OSError as exc:  # the folder itself
        raise RunDirError(f"{folder}: cannot read the folder ({exc.strerror}); check its permissions") from None
    return sorted(found, key=lambda entry: (entry.started, entry.label))


def _entry(path: Path, label: str, kind: str, problem: str | None) -> RunEntry:
    if problem is not None:
        return _damaged(path, label, problem)
    return read_sweep(path, label) if kind == "sweep" else read_entry(path, label)


def _folders(folder: Path, members: bool) -> Iterator[tuple[Path, str, str | None]]:
    """(path, "run" or "sweep", None) for each run directory or sweep in ``folder``; (path, "run", why) for a
    folder in it that cannot be read."""
    if RunDir(folder).is_run():
        yield folder, "run", None
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
                    yield path, "run", _unreadable(path, exc)
                    continue
                if is_run:
                    yield path, "run", None
                elif is_sweep:
                    yield from _members(path / MEMBERS_DIR) if members else [(path, "sweep", None)]


def _members(members: Path) -> Iterator[tuple[Path, str, str | None]]:
    try:
        paths = sorted(members.iterdir())
    except OSError as exc:
        yield members, "run", _unreadable(members, exc)
        return
    for path in paths:
        try:
            if RunDir(path).is_run():
                yield path, "run", None
        except OSError as exc:
            yield path, "run", _unreadable(path, exc)


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


def _folder_time(path: Path, record: str = "config.yaml") -> str:
    """ISO time from the folder's ``-YYYYmmdd-HHMMSS[-n]`` suffix, else the modification time of its ``record``."""
    for part in (path.name.rsplit("-", 2)[-2:], path.name.rsplit("-", 3)[-3:-1]):
        with contextlib.suppress(ValueError):
            return dt.datetime.strptime("-".join(part), "%Y%m%d-%H%M%S").isoformat()
    with contextlib.suppress(OSError):
        return dt.datetime.fromtimestamp((path / record).stat().st_mtime).isoformat(timespec="seconds")
    return ""


def sort_rows(rows: list[dict], key: str) -> list[dict]:
    """Rows by ``key``: best first for metrics (lowest loss, highest accuracy), newest first for started,
    fastest first for wall time; rows without the value last."""
    descending = key in ("started", "best_val_accuracy", "val_accuracy", "test_accuracy", "steps")  # rmse: lowest first
    present = [row for row in rows if row[key] is not None]
    absent = [row for row in rows if row[key] is None]
    return sorted(present, key=lambda row: row[key], reverse=descending) + absent


def labels(paths: Sequence[Path]) -> list[str]:
    """Short names for runs shown side by side: each folder's name, with as many of its parents as tell it from the
    others (members of two sweeps share their folder names; a run among them keeps its own name alone)."""
    paths = [Path(path).resolve() for path in paths]
    names: list[str | None] = [None] * len(paths)
    for depth in range(1, max((len(path.parts) for path in paths), default=1) + 1):
        tails = [str(Path(*path.parts[-depth:])) for path in paths]
        counts = collections.Counter(tails)
        for i, tail in enumerate(tails):
            if names[i] is None and counts[tail] == 1:
                names[i] = tail
    return [name or str(path) for name, path in zip(names, paths)]  # None: the same run twice


# ------------------------------------------------------------------------------------------------ sweeps


def read_sweep(path: Path, label: str | None = None) -> RunEntry:
    """A sweep as one entry: its status and wall time from sweep.json, its model, dataset, steps and metrics from
    its best member (``_best_member``); damaged, saying why, when sweep.json does not read."""
    label = label or path.name
    started = _folder_time(path, SWEEP_STATE)
    try:
        return _read_sweep(path, label, started)
    except OSError as exc:  # a file of it that cannot even be looked at (its permissions)
        return _damaged_sweep(path, label, started, _unreadable(Path(exc.filename or path), exc))


def _read_sweep(path: Path, label: str, started: str) -> RunEntry:
    try:
        state = _sweep_state(path)
        members = [path / MEMBERS_DIR / _member_folder(member) for member in state["members"]]
        best = _best_member(state)
        best_path = None if best is None else path / MEMBERS_DIR / _member_folder(best)
    except RunDirError as exc:
        return _damaged_sweep(path, label, started, str(exc))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:  # edited by hand
        return _damaged_sweep(path, label, started, f"{path / SWEEP_STATE}: not a sweep state ({exc!r})")
    status = state.get("status")
    if lock.held_by_another(path):
        status = "running"
    elif status not in STATUSES or status == "running":  # nobody holds it: killed while it trained
        status = "unfinished"
    wall_time = state.get("wall_time_s")
    info = SweepInfo(len(members), best_path, wall_time if isinstance(wall_time, (int, float)) else None)
    reason = state.get("stop_reason") if isinstance(state.get("stop_reason"), str) else None
    shown = best_path if best_path is not None and RunDir(best_path).is_run() else None
    if shown is None:  # nothing completed yet: a member's model and dataset, no metrics
        first = next((read_entry(member) for member in members if RunDir(member).is_run()), None)
        model, dataset = (first.model, first.dataset) if first else ("?", "?")
        return RunEntry(path, label, status, None, model, dataset, None, started, reason, info)
    best_entry = read_entry(shown)
    return dataclasses.replace(
        best_entry, path=path, label=label, status=status, started=started, problem=reason, sweep=info
    )


def _damaged_sweep(path: Path, label: str, started: str, problem: str) -> RunEntry:
    count = sum(1 for _, _, why in _members(path / MEMBERS_DIR) if why is None)
    return RunEntry(path, label, "damaged", None, "?", "?", None, started, problem, SweepInfo(count, None, None))


def _sweep_state(path: Path) -> dict:
    """sweep.json, checked for what a listing reads of it."""
    state = json.loads(files.read_text(path / SWEEP_STATE, "sweep state", RunDirError, files.MAX_JSON_BYTES))
    if not isinstance(state, dict) or not isinstance(state.get("members"), list):
        raise ValueError("no list of members")
    return state


def _member_folder(member: dict) -> str:
    folder = member["folder"]
    if not isinstance(folder, str) or Path(folder).name != folder or folder in ("", ".", ".."):
        raise ValueError(f"member folder {folder!r}")
    return folder


def _best_member(state: dict) -> dict | None:
    """The member whose metrics stand for the sweep: in the setting its ranking marks best, the completed member
    with the best value of the sweep's metric; None while no setting is marked best."""
    ranking = state.get("ranking") or []
    if not ranking or not ranking[0].get("best"):
        return None
    metric = state.get("metric") or "val_loss"
    sign = -1 if metric in HIGHER_IS_BETTER else 1

    def score(member: dict) -> float | None:
        value = (member.get("final") or {}).get(metric)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    chosen = set(ranking[0]["members"])
    best, best_value = None, None
    for member in state["members"]:  # ties: the first
        value = score(member) if member.get("index") in chosen and member.get("status") == "completed" else None
        if value is not None and (best_value is None or sign * value < sign * best_value):
            best, best_value = member, value
    return best


def run_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The run directories ``paths`` name, for ``compare`` and ``plot``: a run directory as given, a sweep's folder
    as its members (in their folders' order, so by index)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if _is_sweep(path):
            members = [member for member, _, _ in _members(path / MEMBERS_DIR)]
            if not members:
                raise RunDirError(f"{path}: a sweep with no member run directories yet; nothing to show")
            found.extend(members)
        else:
            found.append(path)
    return found


def _is_sweep(path: Path) -> bool:
    try:
        return not RunDir(path).is_run() and (path / MEMBERS_DIR).is_dir()
    except OSError:  # RunDir.open says what is wrong
        return False


def open_runs(paths: Sequence[str | Path]) -> list[RunDir]:
    """``RunDir.open`` of each of ``run_paths(paths)``; a folder that is neither a run nor a sweep is refused with
    a hint."""
    return [_open_run(path) for path in run_paths(paths)]


def _open_run(path: Path) -> RunDir:
    try:
        return RunDir.open(path)
    except RunDirError as exc:
        hint = _not_a_run_hint(path)
        if hint is None:
            raise
        raise RunDirError(f"{exc}{hint}") from None


def _not_a_run_hint(path: Path) -> str | None:
    """What to pass instead of a folder that is neither a run nor a sweep; None for anything else."""
    try:
        if not path.is_dir() or RunDir(path).is_run():
            return None
        with os.scandir(path) as children:
            holds_runs = any(
                child.is_dir(follow_symlinks=False)
                and (RunDir(Path(child.path)).is_run() or Path(child.path, MEMBERS_DIR).is_dir())
                for child in children
            )
    except OSError:
        return None
    if holds_runs:
        return f"; {path} holds runs: name them (e.g. {path}/*)"
    return ", or a sweep's folder (runs/<name>-sweep-<timestamp>: its members)"
