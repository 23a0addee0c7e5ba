"""Training a sweep: many members in one compiled program (``jax.vmap``), each written as a normal run directory.

Members that compile alike (``sweeps.program_key``) form a group, which compiles its programs once
(``gradfit.sweeps.group``) and shares its data. Members train in blocks of
``parallel`` side by side (the last block padded, so one program serves every block). Each member has its own
``session.Session``: it logs, evaluates, stops early, checkpoints and writes its run directory as ``gradfit train``
would, from its slice of the block's metrics and state. A member that stops (converged, early stopping,
diverged) is written when it stops and keeps its slot until the block ends; vmap keeps every member's
arithmetic apart, so one member's NaNs never reach another.

Layout of ``<out_dir>/<name>-sweep-<timestamp>/``: ``sweep.yaml`` (the base config and its ``sweep:`` section,
which ``--resume`` plans from again), ``sweep.json`` (members, groups, ranking) and ``members/<index>_<values>/``,
one run directory per member.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from gradfit import files
from gradfit.config.load import resolve_config, to_yaml
from gradfit.core import precision
from gradfit.errors import ConfigError, GradfitError, Interrupted, RunDirError, TrainingFailed
from gradfit.runs import checkpoints, lock, rundir
from gradfit.runs.checkpoints import changed_keys
from gradfit.runtime import resources
from gradfit.sweeps import plan as sweeps
from gradfit.sweeps.group import Group
from gradfit.training.failures import one_line
from gradfit.training.payload import SavedRun
from gradfit.training.prepare import Prepared, prepare
from gradfit.training.resume import continue_from, record_resume
from gradfit.training.session import Session
from gradfit.training.stopping import Status, StopRequests

MAX_PARALLEL = 1024  # members per block
PLAN_FILE, STATE_FILE, MEMBERS = rundir.SWEEP_PLAN, rundir.SWEEP_STATE, rundir.MEMBERS_DIR


class SweepCallbacks:
    """Progress hooks of a sweep; the engine prints nothing itself."""

    def on_stage(self, message: str) -> None: ...

    def on_block(self, info: dict) -> None: ...

    def on_chunk(self, step: int, total_steps: int, active: int) -> None: ...

    def on_member(self, result: dict) -> None: ...


DONE = ("completed", "failed")  # a member with this status is not trained again


def start(resolved, plan: sweeps.Sweep, out_dir: str | Path = "runs", callbacks: SweepCallbacks | None = None) -> dict:
    """Train every member of ``plan`` in a new sweep directory; returns what sweep.json holds.

    Raises:
        GradfitError: bad settings or data (before the sweep directory is created).
        Interrupted: SIGINT or SIGTERM; every member in training was checkpointed first.
        TrainingFailed: no member completed.
    """
    started = time.perf_counter()
    base = resolved.config
    with rundir.fresh(out_dir, f"{base.name}-sweep") as sweep_dir:
        section = plan.section.model_dump(mode="json")
        files.write_atomic(
            sweep_dir / PLAN_FILE,
            to_yaml(base, _PLAN_HEADER) + yaml.safe_dump({"sweep": section}, sort_keys=False, default_flow_style=None),
        )
        (sweep_dir / MEMBERS).mkdir()
        state: dict[str, Any] = {
            "sweep_dir": str(sweep_dir),
            "plan": _plan_record(base, plan),
            "status": "running",
            "metric": plan.section.metric,
            "swept": plan.swept,
            "notes": list(plan.notes),
            "settings": plan.settings,
            "groups": [],
            "resumes": [],
            "members": [
                {"index": m.index, "setting": m.setting, "values": m.values, "folder": m.folder, "status": "pending"}
                for m in plan.members
            ],
        }
        rundir.write_json(sweep_dir / STATE_FILE, state)
    try:
        return _Driver(sweep_dir, plan, state, callbacks, started).run()
    except GradfitError as exc:  # bad data or settings found before any member started: leave nothing behind
        if not isinstance(exc, TrainingFailed) and all(m["status"] == "pending" for m in state["members"]):
            shutil.rmtree(sweep_dir, ignore_errors=True)
        raise


def resume(sweep_dir: str | Path, callbacks: SweepCallbacks | None = None) -> dict:
    """Finish the unfinished members of a sweep: those interrupted continue from their checkpoints, bit for bit
    as if never stopped; those not started start."""
    started = time.perf_counter()
    sweep_dir = Path(sweep_dir)
    state = read_state(sweep_dir)
    resolved = resolve_config(sweep_dir / PLAN_FILE, sweep=True)
    plan = sweeps.plan_sweep(resolved)
    _check_unedited(sweep_dir, state, resolved.config, plan)
    if all(m["status"] in DONE for m in state["members"]) and state["status"] in DONE:
        raise RunDirError(f"{sweep_dir}: every member has finished; nothing to resume")
    # every member may have finished just before a kill: the resume then only says how the sweep ended
    state["resumes"].append({"unfinished": sum(m["status"] not in DONE for m in state["members"])})
    state["wall_time_s_before"] = state.get("wall_time_s") or 0.0
    return _Driver(sweep_dir, plan, state, callbacks, started).run()


def _plan_record(base, plan: sweeps.Sweep) -> dict:
    """What sweep.yaml said when the sweep started, as sweep.json keeps it to see hand edits before a resume."""
    return {**base.model_dump(mode="json"), "sweep": plan.section.model_dump(mode="json")}


def _check_unedited(sweep_dir: Path, state: dict, base, plan: sweeps.Sweep) -> None:
    """Refuse a sweep.yaml edited since the sweep started: members trained before and after an edit would differ.

    A sweep.json without the record (gradfit 0.1) is checked by its members alone.
    """
    changes = {} if "plan" not in state else changed_keys(state["plan"], _plan_record(base, plan), ignored=set())
    members = [m["folder"] for m in state["members"]]
    if not changes and [m.folder for m in plan.members] == members:
        return
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()) or "its members"
    raise RunDirError(
        f"{sweep_dir / PLAN_FILE}: edited since the sweep started ({listed}); a sweep resumes only as it started. "
        f"Undo the edit, or start a new sweep from it: gradfit sweep {sweep_dir / PLAN_FILE}"
    )


_PLAN_HEADER = "# A gradfit sweep: the base config and its sweep section. Resume with: gradfit sweep --resume <dir>\n"


def read_state(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / STATE_FILE
    if not path.is_file() or not (Path(sweep_dir) / PLAN_FILE).is_file():
        raise RunDirError(
            f"{sweep_dir}: not a gradfit sweep directory (no {STATE_FILE} or {PLAN_FILE}); pass a "
            "folder made by gradfit sweep, e.g. runs/<name>-sweep-<timestamp>"
        )
    try:
        state = json.loads(files.read_text(path, "sweep state", RunDirError, files.MAX_JSON_BYTES))
        if not isinstance(state.get("members"), list) or not isinstance(state.get("groups"), list):
            raise ValueError("members or groups missing")
        return state
    except ValueError as exc:
        raise RunDirError(f"{path}: not a sweep state ({exc}); the sweep was edited by hand") from None


@dataclasses.dataclass
class _Driver:
    sweep_dir: Path
    plan: sweeps.Sweep
    state: dict
    callbacks: SweepCallbacks | None
    started: float
    checkpoints: dict = dataclasses.field(default_factory=dict)  # member index -> its SavedRun or None

    def run(self) -> dict:
        groups: dict = {}
        for member in self.plan.members:
            groups.setdefault(sweeps.program_key(member.config), []).append(member)
        with lock.locked(self.sweep_dir), StopRequests() as stop:
            try:
                for index, members in enumerate(groups.values()):
                    if all(self.entry(m)["status"] in DONE for m in members) or stop.signal_name:
                        continue
                    with precision.of(members[0].config).scope():
                        self.train_group(index, members, stop)
            except BaseException as exc:
                self.settle(crash=one_line(exc))
                raise
            self.settle()
        self.raise_unless_completed(stop.signal_name)
        return self.state

    def entry(self, member) -> dict:
        return self.state["members"][member.index]

    def notify(self, hook: str, *args) -> None:
        call = getattr(self.callbacks, hook, None)
        if call is not None:
            try:
                call(*args)
            except (Exception, SystemExit):  # a failing display (a closed pipe) is dropped, not fatal
                self.callbacks = None

    def train_group(self, index: int, members: list, stop) -> None:
        self.notify("on_stage", f"group {index + 1}: loading data")
        run = prepare(members[0].config)
        if run.feed is not None:
            run.feed.close()
            raise ConfigError(
                "data.in_memory: a sweep holds its data in memory (the members share them); set "
                "data.in_memory: true, or sweep a smaller sample"
            )
        if run.topology.process_count > 1:
            raise ConfigError("a sweep runs in one process; start it without --distributed")
        traced = tuple(
            key
            for key in sweeps.traced_keys(run.config)
            if key != "seed" and len({repr(m.config_value(key)) for m in members}) > 1
        )
        recorded = next((g for g in self.state["groups"] if g["index"] == index), None)
        parallel = recorded["parallel"] if recorded else self.parallel(run, members)
        group = Group(index, members, run, traced, parallel)
        self.notify("on_stage", f"group {index + 1}: compiling for {parallel} members side by side")
        group.compile()
        if recorded is None:
            recorded = {
                "index": index,
                "members": [m.index for m in members],
                "traced": list(traced),
                "parallel": parallel,
            }
            self.state["groups"].append(recorded)
        recorded.update(trace_time_s=group.trace_time_s, compile_time_s=group.compile_time_s, cache=group.cache)
        unfinished = [m for m in members if self.entry(m)["status"] not in DONE and not self.trained(group, m)]
        for block in self.blocks(group, unfinished):
            if stop.signal_name:
                return
            self.train_block(group, block, stop)

    def parallel(self, run: Prepared, members: list) -> int:
        """Members per block: as asked, else as many as fit in the device memory (estimated before allocating),
        then evened out over the blocks."""
        asked = self.plan.section.parallel
        if asked == "auto":
            need = run.memory  # the estimate prepare checked the run against
            assert need is not None
            available = resources.device_available_bytes(run.device)
            asked = (
                MAX_PARALLEL
                if available is None
                else max(1, (available - need.data) // max(need.model + need.activations, 1))
            )
        k = max(1, min(int(asked), len(members), MAX_PARALLEL))
        return -(-len(members) // -(-len(members) // k))

    def blocks(self, group: Group, members: list) -> list:
        """Blocks of at most ``parallel`` members that start at the same step (their checkpoints')."""
        by_step: dict = {}
        for member in members:
            saved = self.saved(member)
            by_step.setdefault(0 if saved is None else saved.loop.step, []).append(member)
        k = group.parallel
        return [chunk[i : i + k] for _, chunk in sorted(by_step.items()) for i in range(0, len(chunk), k)]

    def member_dir(self, member) -> rundir.RunDir:
        return rundir.RunDir(self.sweep_dir / MEMBERS / member.folder)

    def saved(self, member) -> SavedRun | None:
        """The member's newest checkpoint, read once (None: it starts afresh)."""
        if member.index not in self.checkpoints:
            run_dir = self.member_dir(member).path
            fresh = self.entry(member)["status"] == "pending" or checkpoints.latest(run_dir) is None
            self.checkpoints[member.index] = None if fresh else SavedRun.read(run_dir, member.config)
        return self.checkpoints[member.index]

    def train_block(self, group: Group, block: list, stop) -> None:
        k, run = group.parallel, group.run
        slots = block + [block[0]] * (k - len(block))  # padding: discarded copies of the first member
        hyper = group.hyper(slots)
        states, keys = group.init(hyper, np.array([m.config.seed for m in slots], np.uint32), group.shared_data)
        fresh = group.unstack(states)
        sessions, restored = [], {}
        with contextlib.ExitStack() as held:
            for i, member in enumerate(block):
                saved = self.saved(member)
                sessions.append(self.member_session(group, member, fresh[i], saved, held))
                if saved is not None:
                    restored[i] = sessions[-1].state
            if restored:
                slot_states = [restored.get(i, fresh[i]) for i in range(k)]
                states = run.topology.put(group.stack(jax.device_get(slot_states)))
            self.save_state()
            data = {**group.shared_data, "shuffle_key": keys}
            active = list(range(len(block)))
            self.notify(
                "on_block",
                {
                    "group": group.index,
                    "members": [m.index for m in block],
                    "parallel": k,
                    "total_steps": run.plan.total_steps,
                    "start_step": sessions[0].loop.step,
                },
            )
            try:
                while active:
                    states = self.chunk(group, block, sessions, active, hyper, states, data, stop)
            except BaseException as exc:
                for i in active:  # never leave a member that looks healthy after a crash
                    with contextlib.suppress(Exception):
                        self.conclude(block[i], sessions[i], "failed", f"crashed: {one_line(exc)}", alone=True)
                raise
            finally:
                self.save_state()

    def chunk(self, group: Group, block: list, sessions: list, active: list, hyper, states, data, stop):
        """One chunk of the block's active members; each logs, evaluates and checkpoints its slice."""
        lead = sessions[active[0]]
        start, end = lead.loop.step, lead.next_end()
        tick = time.perf_counter()
        states, metrics = group.chunk(hyper, states, data, np.int32(end - start))
        members = group.unstack(states)
        metrics = jax.device_get(metrics)
        spent = time.perf_counter() - tick
        windows = lead.grown_windows(spent, start, end)
        for i in list(active):
            session = sessions[i]
            session.state, session.windows = members[i], windows
            session.loop.train_time_s += spent
            rule = session.absorb(start, end, group.member(metrics, i), stop)
            if rule is not None:
                self.conclude(block[i], session, rule.status, rule.reason)
                active.remove(i)
        self.notify(
            "on_chunk",
            max((sessions[i].loop.step for i in active), default=end),
            group.run.plan.total_steps,
            len(active),
        )
        return states

    def member_session(self, group: Group, member, state, saved: SavedRun | None, held) -> Session:
        run = dataclasses.replace(group.run, config=member.config, state=state)
        run_dir = self.member_dir(member)
        if saved is None:
            shutil.rmtree(run_dir.path, ignore_errors=True)  # this sweep's own, stopped before its first checkpoint
            run_dir.path.mkdir(parents=True)
            held.enter_context(run_dir.locked())
            session = Session.start(run, group.programs(member), run_dir, time.perf_counter(), None)
        else:
            held.enter_context(run_dir.locked())
            session, reproduced = continue_from(
                saved, run, group.programs(member), run_dir, time.perf_counter(), None, force=False
            )
            record_resume(session, saved, {}, reproduced)
        self.entry(member).update(status="running", run_dir=str(run_dir))
        return session

    def trained(self, group: Group, member) -> bool:
        """True for a member whose newest checkpoint says it finished training: its summary counts when it has one
        (``gradfit train --resume`` may have finished it), else its outputs are written now from that checkpoint,
        as ``gradfit train --resume`` would (a kill between the final checkpoint and summary.json)."""
        saved, run_dir = self.saved(member), self.member_dir(member)
        if saved is None or not saved.finished:
            return False
        if run_dir.outputs_complete(saved.loop.step):
            summary = run_dir.summary()
            assert summary is not None  # outputs_complete read it
            self.record(member, summary)
        else:
            run, programs = dataclasses.replace(group.run, config=member.config), group.programs(member)
            with run_dir.locked():
                session, _ = continue_from(saved, run, programs, run_dir, time.perf_counter(), None, force=False)
                self.entry(member)["run_dir"] = str(run_dir)
                self.conclude(member, session, "completed", saved.finished)
        self.save_state()
        return True

    def conclude(self, member, session: Session, status: Status, reason: str, alone: bool = False) -> None:
        self.record(member, session.finish(status, reason, alone=alone))

    def record(self, member, summary: rundir.Summary) -> None:
        entry = self.entry(member)
        entry.update(
            status=summary.status,
            stop_reason=summary.stop_reason,
            steps=summary.steps,
            final=summary.final,
            objective=summary.objective,
            best_step=summary.params_step,
            wall_time_s=summary.wall_time_s,
        )
        self.notify("on_member", {**entry, "label": member.label})

    def save_state(self) -> None:
        self.state["ranking"] = sweeps.rank(self.state["members"], self.state["metric"])
        self.state["wall_time_s"] = self.state.get("wall_time_s_before", 0.0) + time.perf_counter() - self.started
        rundir.write_json(
            self.sweep_dir / STATE_FILE, {k: v for k, v in self.state.items() if k != "wall_time_s_before"}
        )

    def settle(self, crash: str | None = None) -> None:
        """Write sweep.json with the sweep's status: completed (every member finished, one at least completed),
        failed (every member failed, or ``crash``: what stopped the sweep) or interrupted."""
        statuses = [m["status"] for m in self.state["members"]]
        done = all(s in DONE for s in statuses)
        self.state["status"] = (
            "completed" if done and "completed" in statuses else "failed" if done or crash else "interrupted"
        )
        self.state["stop_reason"] = crash
        self.save_state()

    def raise_unless_completed(self, signal_name: str | None) -> None:
        if self.state["status"] == "interrupted":
            raise Interrupted(
                f"{signal_name or 'stopped'}: every member in training was checkpointed. Resume with: "
                f"gradfit sweep --resume {self.sweep_dir}",
                self.state,
            )
        if self.state["status"] == "failed":
            raise TrainingFailed(f"no member of the sweep completed; see {self.sweep_dir / STATE_FILE}", self.state)
