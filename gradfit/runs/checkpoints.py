"""Checkpoints: everything a run needs to continue exactly, one ``.npz`` file per checkpoint, no pickle.

``<run_dir>/checkpoints/step-00001200.npz`` holds named arrays ("state/params/layers/0/w",
"state/opt_state/0/mu/layers/0/w", "best/layers/0/w", ...) plus one entry ``meta``: a JSON string with the
step, the resolved config and its hash, the loop's host-side state and a SHA-256 digest of every array. Each
file is written atomically (temporary file, fsync, rename), so a crash leaves the previous checkpoints intact;
loading checks the digest, so a truncated or edited file is refused rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradfit import files
from gradfit.errors import RunDirError
from gradfit.runs import rundir

FORMAT = 2  # 2: gradfit 0.2 (train state without the epoch order; probe and data digest)
_META = "meta"
_NAME = re.compile(r"step-([0-9]{8,})\.npz")


def folder(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def digest(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> str:
    """SHA-256 over the metadata (but its digest) and every array's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{array.dtype.str}|{array.shape}\n".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def config_hash(config_dump: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config_dump, sort_keys=True).encode()).hexdigest()


def step_of(path: Path) -> int | None:
    match = _NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def listing(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in the run, oldest first."""
    found = []
    if folder(run_dir).is_dir():
        for path in folder(run_dir).iterdir():
            step = step_of(path)
            if step is not None:
                found.append((step, path))
    return sorted(found)


def save(run_dir: Path, step: int, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], keep: int) -> Path:
    """Write the checkpoint of ``step`` atomically, then delete all but the newest ``keep``."""
    path = folder(run_dir) / f"step-{step:08d}.npz"
    path.parent.mkdir(exist_ok=True)
    record = rundir.to_jsonable({**meta, "format": FORMAT, "step": step})
    record["digest"] = digest(arrays, record)
    rundir.save_arrays(path, {**arrays, _META: np.array(json.dumps(record, allow_nan=False))})
    prune(run_dir, keep)
    return path


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (called only after a new one is safely on disk)."""
    for _, old in listing(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def load(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of one checkpoint, after checking that it is complete and unmodified.

    Raises:
        RunDirError: the file is truncated, not a gradfit checkpoint, or its arrays do not match the digest.
    """
    hint = previous_hint(path)
    try:
        arrays = files.load_npz(path, "checkpoint", RunDirError)
    except RunDirError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise RunDirError(f"{path}: unreadable, truncated or corrupted ({reason}); {hint}") from None
    if _META not in arrays:
        raise RunDirError(f"{path}: not a gradfit checkpoint (it has no metadata); {hint}")
    try:
        meta = json.loads(str(arrays.pop(_META)))
    except ValueError:
        raise RunDirError(f"{path}: not a gradfit checkpoint (its metadata is not JSON); {hint}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise RunDirError(f"{path}: checkpoint format {found!r}, but this gradfit reads format {FORMAT}; {hint}")
    if digest(arrays, meta) != meta.get("digest"):
        raise RunDirError(
            f"{path}: the contents do not match the digest recorded when the checkpoint was "
            f"written (the file was modified); {hint}"
        )
    return arrays, meta


def previous_hint(path: Path) -> str:
    """How to go on when the checkpoint at ``path`` cannot be used."""
    step = step_of(path)
    older = [p for s, p in listing(path.parent.parent) if step is not None and s < step]
    if older:
        return f"delete it to resume from the previous checkpoint, {older[-1].name}"
    return "no older checkpoint exists: start a new run"


UNCOMPUTED_KEYS = {"train.loggers"}  # what a run writes down, not what it computes: free to change on resume


def changed_keys(
    saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "", ignored: frozenset | set = UNCOMPUTED_KEYS
) -> dict[str, tuple]:
    """{'optimizer.learning_rate': (old, new), ...} between two config dumps, the ``ignored`` keys aside."""
    changes = {}
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes.update(changed_keys(old, new, f"{prefix}{key}.", ignored))
        elif old != new and f"{prefix}{key}" not in ignored:
            changes[f"{prefix}{key}"] = (old, new)
    return changes


def latest(run_dir: Path) -> Path | None:
    found = listing(run_dir)
    return found[-1][1] if found else None
