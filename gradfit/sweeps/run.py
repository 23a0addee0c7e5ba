"""Training a sweep: many members in one compiled program (``jax.vmap``), each written as a normal run directory.

Members that compile alike (``sweeps.program_key``) form a group. A group compiles its programs once: the
initial state and the chunk of ``gradfit.training.programs``, built by ``training_functions`` from the config with the
group's varying values (learning rate, l2, ...) as traced arrays and vmapped over the members, and the
evaluation, with the member's values as arguments. The data are shared. Members train in blocks of
``parallel`` side by side (the last block padded, so one program serves every block). Each member has its own
``loop.Session``: it logs, evaluates, stops early, checkpoints and writes its run directory as ``gradfit train``
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import jax
import numpy as np
import yaml

from gradfit import files
from gradfit.runs import checkpoints
from gradfit.core import precision
from gradfit.runtime import resources
from gradfit.runs import rundir
from gradfit.sweeps import plan as sweeps
from gradfit.config.load import GradfitConfig, resolve_config, to_yaml
from gradfit.errors import ConfigError, GradfitError, Interrupted, RunDirError, TrainingFailed
from gradfit.training.loop import (EarlyStopping, LoopState, Session, StopRule, StopRequests, config_header,
                          next_windows, one_line, timestamp)
from gradfit.training.resume import SavedRun, replay
from gradfit.training.programs import (Prepared, Programs, TrainState, block_rows, cache_events, cache_outcome, eval_parts,
                           make_evaluate, prepare, training_functions)

MAX_PARALLEL = 1024  # members per block
PLAN_FILE, STATE_FILE, MEMBERS = "sweep.yaml", "sweep.json", rundir.MEMBERS_DIR
# the initial state runs once a block: compiled without XLA's optimizations, as train.prepare does
ONCE = [{"xla_backend_optimization_level": 0}]


class SweepCallbacks:
    """Progress hooks of a sweep; the engine prints nothing itself."""

    def on_stage(self, message: str) -> None: ...

    def on_block(self, info: dict) -> None: ...

    def on_chunk(self, step: int, total_steps: int, active: int) -> None: ...

    def on_member(self, result: dict) -> None: ...


def with_values(config: GradfitConfig, values: dict) -> GradfitConfig:
    """``config`` with dotted keys set to ``values``, unchecked: traced arrays stand in for numbers."""

    def replace(section, path, value):
        if len(path) == 1:
            return section.model_copy(update={path[0]: value})
        return section.model_copy(update={path[0]: replace(getattr(section, path[0]), path[1:], value)})

    for key, value in values.items():
        config = replace(config, key.split("."), value)
    return config


@dataclasses.dataclass
class Group:
    """Members that share one compiled program, and that program."""

    index: int
    members: list  # sweeps.Member
    run: Prepared  # the first member's: data, model, plan and device, shared by all
    traced: tuple  # value keys that differ between the members (the seed is always per member)
    parallel: int
    init: Callable = None  # (hyper, seeds, data) -> (states, shuffle keys), vmapped
    chunk: Callable = None  # (hyper, states, data, num_steps) -> (states, metrics), vmapped; states donated
    evaluate: Callable = None  # (hyper of one member, params, data, parts) -> metrics
    unstack: Callable = None  # states -> [each member's state], on the device
    trace_time_s: float = 0.0
    compile_time_s: float = 0.0
    cache: str = "off"

    def hyper(self, members: list) -> dict:
        dtype = self.run.precision.param_dtype
        return {key: np.array([m.config_value(key) for m in members], dtype) for key in self.traced}

    def compile(self) -> None:
        """Trace and compile the group's programs once, for blocks of ``parallel`` members."""
        tick = time.perf_counter()
        run, k = self.run, self.parallel
        placed = dict(in_shardings=run.topology.replicated, out_shardings=run.topology.replicated)

        def functions(hyper):
            config = with_values(run.config, hyper)
            return training_functions(config, run.model, run.plan, len(run.dataset.train), run.topology), config

        hidden = tuple(run.config.model.hidden) if run.config.model.kind == "mlp" else ()
        eval_rows = block_rows(run.dataset.n_features, hidden)

        def evaluate(hyper, params, data, parts):
            l2 = functions(hyper)[1].model.l2
            return make_evaluate(run.model, l2, eval_rows, run.topology.shard_rows)(params, data, parts)

        # the step count is one for the whole block (members step together), so the chunk's loops and their
        # conditions stay scalar: a batched condition would make XLA run both sides of every lax.cond. Only a
        # full-batch run with tol, whose members stop at their own steps, counts per member.
        step = 0 if self.own_steps else None
        states_axes = TrainState(0, 0, step, 0)
        member_init = jax.vmap(lambda h, seed, data: functions(h)[0].initial_state(seed, data), (0, 0, None),
                               (states_axes, 0))
        metrics_axes = {"windows": 0, "step": step, "finite": 0, **({"end": 0} if run.plan.full_batch else {})}
        member_chunk = jax.vmap(lambda h, state, data, n: functions(h)[0].chunk(state, data, n),
                                (0, states_axes, {"x": None, "y": None, "shuffle_key": 0}, None),
                                (states_axes, metrics_axes))
        hyper, seeds, shared = self.hyper(self.members[:1] * k), np.zeros(k, np.uint32), self.shared_data
        init = jax.jit(member_init, **placed).trace(hyper, seeds, shared)
        states, keys = init.out_info
        lowered = [init.lower(),
                   jax.jit(member_chunk, donate_argnums=1, **placed).trace(
                       hyper, states, {**shared, "shuffle_key": keys}, np.int32(0)).lower(),
                   jax.jit(evaluate, **placed).trace({key: v[0] for key, v in hyper.items()}, run.state.params,
                                                     run.data, eval_parts()).lower()]
        traced = time.perf_counter()
        with cache_events() as events, ThreadPoolExecutor(2) as pool:  # XLA compiles without the GIL
            self.init, self.chunk, self.evaluate = pool.map(
                lambda program, options: program.compile(compiler_options=options), lowered, ONCE + [{}, {}])
        take = jax.jit(self.member)  # one small program for every member: the index is traced
        self.unstack = lambda states: [take(states, np.int32(i)) for i in range(k)]
        self.trace_time_s, self.compile_time_s = traced - tick, time.perf_counter() - traced
        self.cache = cache_outcome(events)

    @property
    def own_steps(self) -> bool:
        """Members count their own steps (only a full-batch run with tol: each stops at its own step)."""
        return self.run.plan.full_batch and self.run.config.train.tol is not None

    def member(self, tree, i: int):
        """Member ``i``'s slice of the block's states or chunk metrics (a shared step count is everyone's)."""
        if isinstance(tree, TrainState):
            cut = jax.tree_util.tree_map(lambda a: a[i], tree._replace(step=None))
            return cut._replace(step=tree.step if not self.own_steps else tree.step[i])
        return {key: value if key == "step" and not self.own_steps else value[i] for key, value in tree.items()}

    def stack(self, states: list):
        """The block's states from its members' (``member``'s inverse)."""
        stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *[s._replace(step=None) for s in states])
        steps = np.stack([s.step for s in states])
        return stacked._replace(step=steps if self.own_steps else steps[0])

    @property
    def shared_data(self) -> dict:
        return {key: self.run.data[key] for key in ("x", "y")}

    def programs(self, member) -> Programs:
        """A member's view of the group's programs: the Session evaluates through it."""
        hyper = {key: np.asarray(member.config_value(key), self.run.precision.param_dtype) for key in self.traced}
        evaluate = self.evaluate
        return Programs(None, lambda params, data, parts: evaluate(hyper, params, data, parts), self.trace_time_s,
                        self.compile_time_s, self.cache)


DONE = ("completed", "failed")  # a member with this status is not trained again


def start(resolved, plan: sweeps.Sweep, out_dir: str | Path = "runs",
          callbacks: Optional[SweepCallbacks] = None) -> dict:
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
        rundir.write_atomic(sweep_dir / PLAN_FILE, to_yaml(base, _PLAN_HEADER) + yaml.safe_dump(
            {"sweep": section}, sort_keys=False, default_flow_style=None))
        (sweep_dir / MEMBERS).mkdir()
        state = {"sweep_dir": str(sweep_dir), "status": "running", "metric": plan.section.metric,
                 "swept": plan.swept, "settings": plan.settings, "groups": [], "resumes": [],
                 "members": [{"index": m.index, "setting": m.setting, "values": m.values, "folder": m.folder,
                              "status": "pending"} for m in plan.members]}
        rundir.write_json(sweep_dir / STATE_FILE, state)
    try:
        return _Driver(sweep_dir, plan, state, callbacks, started).run()
    except GradfitError as exc:  # bad data or settings found before any member started: leave nothing behind
        if not isinstance(exc, TrainingFailed) and all(m["status"] == "pending" for m in state["members"]):
            shutil.rmtree(sweep_dir, ignore_errors=True)
        raise


def resume(sweep_dir: str | Path, callbacks: Optional[SweepCallbacks] = None) -> dict:
    """Finish the unfinished members of a sweep: those interrupted continue from their checkpoints, bit for bit
    as if never stopped; those not started start."""
    started = time.perf_counter()
    sweep_dir = Path(sweep_dir)
    state = read_state(sweep_dir)
    plan = sweeps.plan_sweep(resolve_config(sweep_dir / PLAN_FILE, sweep=True))
    if [m.folder for m in plan.members] != [m["folder"] for m in state["members"]]:
        raise RunDirError(f"{sweep_dir / PLAN_FILE}: its members differ from those {STATE_FILE} lists; the sweep "
                          "was edited by hand")
    if all(m["status"] in DONE for m in state["members"]):
        raise RunDirError(f"{sweep_dir}: every member has finished; nothing to resume")
    state["resumes"].append({"unfinished": sum(m["status"] not in DONE for m in state["members"])})
    state["wall_time_s_before"] = state.get("wall_time_s") or 0.0
    return _Driver(sweep_dir, plan, state, callbacks, started).run()


_PLAN_HEADER = "# A gradfit sweep: the base config and its sweep section. Resume with: gradfit sweep --resume <dir>\n"


def read_state(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / STATE_FILE
    if not path.is_file() or not (Path(sweep_dir) / PLAN_FILE).is_file():
        raise RunDirError(f"{sweep_dir}: not a gradfit sweep directory (no {STATE_FILE} or {PLAN_FILE}); pass a "
                          "folder made by gradfit sweep, e.g. runs/<name>-sweep-<timestamp>")
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
    callbacks: Optional[SweepCallbacks]
    started: float
    checkpoints: dict = dataclasses.field(default_factory=dict)  # member index -> its SavedRun or None

    def run(self) -> dict:
        groups: dict = {}
        for member in self.plan.members:
            groups.setdefault(sweeps.program_key(member.config), []).append(member)
        with rundir.locked(self.sweep_dir), StopRequests() as stop:
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
            raise ConfigError("data.in_memory: a sweep holds its data in memory (the members share them); set "
                              "data.in_memory: true, or sweep a smaller sample")
        if run.topology.process_count > 1:
            raise ConfigError("a sweep runs in one process; start it without --distributed")
        traced = tuple(key for key in sweeps.traced_keys(run.config)
                       if key != "seed" and len({repr(m.config_value(key)) for m in members}) > 1)
        recorded = next((g for g in self.state["groups"] if g["index"] == index), None)
        parallel = recorded["parallel"] if recorded else self.parallel(run, members)
        group = Group(index, members, run, traced, parallel)
        self.notify("on_stage", f"group {index + 1}: compiling for {parallel} members side by side")
        group.compile()
        if recorded is None:
            recorded = {"index": index, "members": [m.index for m in members], "traced": list(traced),
                        "parallel": parallel}
            self.state["groups"].append(recorded)
        recorded.update(trace_time_s=group.trace_time_s, compile_time_s=group.compile_time_s, cache=group.cache)
        unfinished = [m for m in members if self.entry(m)["status"] not in DONE and not self.finished_elsewhere(m)]
        for block in self.blocks(group, unfinished):
            if stop.signal_name:
                return
            self.train_block(group, block, stop)

    def parallel(self, run: Prepared, members: list) -> int:
        """Members per block: as asked, else as many as fit in the device memory (estimated before allocating),
        then evened out over the blocks."""
        asked = self.plan.section.parallel
        if asked == "auto":
            hidden = tuple(run.config.model.hidden) if run.config.model.kind == "mlp" else ()
            need = resources.estimate_run(run.config, run.dataset.n_features, run.dataset.n_classes,
                                          (len(run.dataset.train), len(run.dataset.val), len(run.dataset.test)),
                                          run.plan.batch_size, block_rows(run.dataset.n_features, hidden))
            available = resources.device_available_bytes(run.device)
            asked = MAX_PARALLEL if available is None else \
                max(1, (available - need.data) // max(need.model + need.activations, 1))
        k = max(1, min(asked, len(members), MAX_PARALLEL))
        return -(-len(members) // -(-len(members) // k))

    def blocks(self, group: Group, members: list) -> list:
        """Blocks of at most ``parallel`` members that start at the same step (their checkpoints')."""
        by_step: dict = {}
        for member in members:
            saved = self.saved(member)
            by_step.setdefault(0 if saved is None else saved.loop.step, []).append(member)
        k = group.parallel
        return [chunk[i:i + k] for _, chunk in sorted(by_step.items()) for i in range(0, len(chunk), k)]

    def member_dir(self, member) -> rundir.RunDir:
        return rundir.RunDir(self.sweep_dir / MEMBERS / member.folder)

    def saved(self, member) -> Optional[SavedRun]:
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
            self.notify("on_block", {"group": group.index, "members": [m.index for m in block], "parallel": k,
                                     "total_steps": run.plan.total_steps, "start_step": sessions[0].loop.step})
            try:
                while active:
                    states = self.chunk(group, block, sessions, active, hyper, states, data, stop)
            except BaseException as exc:
                for i in active:  # never leave a member that looks healthy after a crash
                    with contextlib.suppress(Exception):
                        self.conclude(block[i], sessions[i], StopRule("failed", f"crashed: {one_line(exc)}"),
                                      alone=True)
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
        windows = next_windows(spent, start, end, group.run.plan.log_every, lead.windows)
        for i in list(active):
            session = sessions[i]
            session.state, session.windows = members[i], windows
            session.loop.train_time_s += spent
            rule = session.absorb(start, end, group.member(metrics, i), stop)
            if rule is not None:
                self.conclude(block[i], session, rule)
                active.remove(i)
        self.notify("on_chunk", max((sessions[i].loop.step for i in active), default=end),
                    group.run.plan.total_steps, len(active))
        return states

    def member_session(self, group: Group, member, state, saved: Optional[SavedRun], held) -> Session:
        run = dataclasses.replace(group.run, config=member.config, state=state)
        run_dir = self.member_dir(member)
        if saved is None:
            shutil.rmtree(run_dir.path, ignore_errors=True)  # this sweep's own, stopped before its first checkpoint
            run_dir.path.mkdir(parents=True)
            held.enter_context(run_dir.locked())
            run_dir.begin(to_yaml(member.config, config_header(run.topology)), run.dataset.preprocessing())
            session = Session(run, group.programs(member), run_dir, time.perf_counter(), None, state,
                              LoopState(started=timestamp()), EarlyStopping.from_config(member.config))
        else:
            held.enter_context(run_dir.locked())
            state, loop, stopper, best = saved.restore(run, member.config)
            session = Session(run, group.programs(member), run_dir, time.perf_counter(), None, state, loop,
                              stopper, best=best, path=saved.path)
            replay(session, saved, force=False)
            session.loop.resumes.append({"from_step": saved.loop.step, "checkpoint": saved.path.name,
                                         "forced_changes": {}, "reproduced_checkpoint_metrics": True})
            session.restart_metrics(saved.loop.step)
        self.entry(member).update(status="running", run_dir=str(run_dir))
        return session

    def finished_elsewhere(self, member) -> bool:
        """True for a member that ``gradfit train --resume`` finished after the sweep stopped: its summary counts."""
        saved, run_dir = self.saved(member), self.member_dir(member)
        if saved is None or not saved.finished or not run_dir.outputs_complete(saved.loop.step):
            return False
        self.record(member, run_dir.summary())
        return True

    def conclude(self, member, session: Session, rule: StopRule, alone: bool = False) -> None:
        self.record(member, session.finish(rule.status, rule.reason, alone=alone))

    def record(self, member, summary: rundir.Summary) -> None:
        entry = self.entry(member)
        entry.update(status=summary.status, stop_reason=summary.stop_reason, steps=summary.steps,
                     final=summary.final, objective=summary.objective,
                     best_step=summary.params_step, wall_time_s=summary.wall_time_s)
        self.notify("on_member", {**entry, "label": member.label})

    def save_state(self) -> None:
        self.state["ranking"] = sweeps.rank(self.state["members"], self.state["metric"])
        self.state["wall_time_s"] = self.state.get("wall_time_s_before", 0.0) + time.perf_counter() - self.started
        rundir.write_json(self.sweep_dir / STATE_FILE, {k: v for k, v in self.state.items()
                                                      if k != "wall_time_s_before"})

    def settle(self, crash: Optional[str] = None) -> None:
        """Write sweep.json with the sweep's status: completed (every member finished, one at least completed),
        failed (every member failed, or ``crash``: what stopped the sweep) or interrupted."""
        statuses = [m["status"] for m in self.state["members"]]
        done = all(s in DONE for s in statuses)
        self.state["status"] = "completed" if done and "completed" in statuses else \
            "failed" if done or crash else "interrupted"
        self.state["stop_reason"] = crash
        self.save_state()

    def raise_unless_completed(self, signal_name: Optional[str]) -> None:
        if self.state["status"] == "interrupted":
            raise Interrupted(f"{signal_name or 'stopped'}: every member in training was checkpointed. Resume with: "
                              f"gradfit sweep --resume {self.sweep_dir}", self.state)
        if self.state["status"] == "failed":
            raise TrainingFailed(f"no member of the sweep completed; see {self.sweep_dir / STATE_FILE}", self.state)

