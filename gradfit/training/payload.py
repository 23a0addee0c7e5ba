"""What a checkpoint holds, written and read back: the train state, the loop's state, early stopping and the
evidence a resume checks (the probe objective and the data's digest).

The loop carries nothing from one chunk to the next outside the train state, ``LoopState`` and
``EarlyStopping``, and all three go into every checkpoint: that is what makes a resumed run bit-identical to an
uninterrupted one (``gradfit.training.resume``). The files themselves are ``gradfit.runs.checkpoints``'.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, get_args

import jax
import numpy as np
import pydantic
from pydantic import ConfigDict, Field

from gradfit.config.choices import HIGHER_IS_BETTER, Metric
from gradfit.config.load import GradfitConfig
from gradfit.core.models import named_leaves, params_from_named
from gradfit.errors import RunDirError
from gradfit.runs import checkpoints, rundir
from gradfit.training.failures import one_line
from gradfit.training.prepare import Prepared
from gradfit.training.programs import TrainState
from gradfit.training.stopping import EarlyStopping


@dataclasses.dataclass
class LoopState:
    """What the loop carries between log points, besides the train state."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    step: Annotated[int, Field(ge=0, strict=True)] = 0
    elapsed_s: Annotated[float, Field(ge=0, strict=True)] = 0.0  # wall time of the run's earlier sessions
    train_time_s: Annotated[float, Field(ge=0, strict=True)] = 0.0  # training steps and log points
    eval_time_s: Annotated[float, Field(ge=0, strict=True)] = 0.0  # evaluations
    evaluations: Annotated[int, Field(ge=0, strict=True)] = 0
    last: dict = dataclasses.field(default_factory=dict)  # the last log record
    resumes: list = dataclasses.field(default_factory=list)
    started: str | None = None  # ISO time the run's first session started
    best: dict = dataclasses.field(default_factory=dict)  # best validation metrics evaluated, and their steps

    def note_best(self, record: dict) -> None:
        """Keep the best validation metrics seen (lower loss and errors, higher accuracy and R^2) for summary.json."""
        for key in get_args(Metric):
            sign = -1 if key in HIGHER_IS_BETTER else 1
            value, best = record.get(key), self.best.get(key)
            if value is not None and np.isfinite(value) and (best is None or sign * value < sign * best):
                self.best[key], self.best[f"{key}_step"] = value, record["step"]


def contents(
    state: TrainState,
    best: Any,
    config: GradfitConfig,
    loop: LoopState,
    stopper: EarlyStopping | None,
    *,
    elapsed_s: float,
    finished: str | None,
    probe: float,
    data_digest: str,
    device: str,
) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of a checkpoint: the train state, the best parameters (None: none kept) and the rest.

    Args:
        elapsed_s: the run's wall time up to now (``loop`` is saved with it).
        finished: the stop reason of a run that finished training, else None.
        probe: the probe objective at the state's parameters, which a resume must reproduce.
        data_digest: the digest of the data, which a resume must see again.
        device: where the state was computed.
    """
    arrays = _named("state", jax.device_get(state))
    if best is not None:
        arrays.update(_named("best", jax.device_get(best)))
    dump = config.model_dump(mode="json")
    meta = {
        "config": dump,
        "config_hash": checkpoints.config_hash(dump),
        "loop": {**dataclasses.asdict(loop), "elapsed_s": elapsed_s},
        "early_stopping": None if stopper is None else dataclasses.asdict(stopper),
        "finished": finished,
        "probe": probe,
        "data_digest": data_digest,
        "device": device,
        "versions": rundir.versions(),
    }
    return arrays, meta


def _named(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    return {f"{prefix}/{name}": np.asarray(leaf) for name, leaf in named_leaves(tree).items()}


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """The newest checkpoint of a run, read and checked, and how the config to resume with differs from it."""

    path: Path
    arrays: dict
    changes: dict  # {"optimizer.learning_rate": (old, new)}
    recorded_only: bool  # the config differs in keys that change what is written, not computed (train.loggers)
    loop: LoopState
    stopper: EarlyStopping | None
    finished: str | None  # the stop reason when the run had finished training
    probe: float  # the probe objective at the checkpoint's parameters
    data_digest: str
    device: str  # where it was computed: "cpu:0 (cpu)", "4 x gpu (NVIDIA H200), 2 processes"

    @classmethod
    def read(cls, run_dir: Path, config: GradfitConfig) -> SavedRun:
        """The newest checkpoint of ``run_dir``, compared with ``config``.

        Raises:
            RunDirError: no checkpoint, or one whose contents are damaged or inconsistent.
        """
        path = checkpoints.latest(run_dir)
        if path is None:
            raise RunDirError(
                f"{run_dir}: no checkpoint to resume from (the run stopped before writing one); start a new run"
            )
        arrays, meta = checkpoints.load(path)
        try:  # the digest already rules out damage: these checks keep a hand-made file from reaching the loop
            now = config.model_dump(mode="json")
            changes = checkpoints.changed_keys(meta["config"], now)
            recorded_only = not changes and bool(checkpoints.changed_keys(meta["config"], now, ignored=set()))
            loop = pydantic.TypeAdapter(LoopState).validate_python(meta["loop"])
            stopper = meta["early_stopping"]
            stopper = None if stopper is None else pydantic.TypeAdapter(EarlyStopping).validate_python(stopper)
            finished = meta["finished"]
            if not isinstance(finished, (str, type(None))):
                raise TypeError("'finished' is not a string")
            if not (loop.step == meta["step"] == checkpoints.step_of(path) == int(arrays["state/step"])):
                raise ValueError("its step numbers disagree")
            if loop.last.get("step") != loop.step:
                raise ValueError("the last log record is incomplete")
            probe, data_digest = meta["probe"], meta["data_digest"]
            if not isinstance(probe, float) or not isinstance(data_digest, str):
                raise TypeError("its probe or data digest is missing")
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise RunDirError(
                f"{path}: the checkpoint's metadata is inconsistent ({one_line(exc)}); "
                f"{checkpoints.previous_hint(path)}"
            ) from None
        return cls(
            path, arrays, changes, recorded_only, loop, stopper, finished, probe, data_digest, str(meta.get("device"))
        )

    def restore(self, run: Prepared) -> tuple[TrainState, LoopState, EarlyStopping | None, Any]:
        """(train state, loop state, early stopping, best params) on the run's devices, under ``run.config``."""
        stopper = EarlyStopping.from_config(run.config, self.stopper)
        state = run.topology.put(_restore(run.state, self.arrays, "state", self.path))
        best = None
        if stopper is not None and stopper.best is not None:
            best = run.topology.put(_restore(run.state.params, self.arrays, "best", self.path))
        return state, dataclasses.replace(self.loop), stopper, best


def _restore(template: Any, arrays: dict, prefix: str, path: Path) -> Any:
    """``template``'s structure filled from the checkpoint arrays under ``prefix``; names, shapes, dtypes checked."""
    stored = {name[len(prefix) + 1 :]: a for name, a in arrays.items() if name.startswith(prefix + "/")}
    for name, leaf in named_leaves(template).items():
        if name in stored and stored[name].dtype != leaf.dtype:
            raise RunDirError(
                f"{path}: '{prefix}/{name}' is {stored[name].dtype} but this config needs "
                f"{leaf.dtype} (was runtime.precision changed?)"
            )
    try:
        return params_from_named(template, stored, origin=f"{path} ({prefix})")
    except ValueError as exc:
        raise RunDirError(f"{exc}; the checkpoint was written for another model, optimizer or data shape") from None
