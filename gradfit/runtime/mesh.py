"""Where a run computes: the device platform, the mesh over its devices, and this process's part (JAX's engine,
nothing home-made).

``select_device`` picks the platform (``runtime.device``: the first GPU when JAX sees one, else the CPU) and
``describe_device`` names a device as every report shows it.

A run trains data-parallel on a one-axis ``Mesh`` named ``data``: the parameters, the optimizer state and the
training split are replicated on every device, and each compiled program shards the rows it works on (the
minibatch, a full batch, an evaluation block) along ``data`` with a sharding constraint, so that each device
gathers and computes only its share and XLA inserts the all-reduce of the gradient. Rows that do not divide
evenly are padded and masked by XLA itself. With one device no constraint is added: the programs are the ones an
unsharded run compiles.

Several processes (``jax.distributed``) form one global mesh; every process loads the same data and derives the
same split from the seed, so its replicated arrays are its local data (``jax.make_array_from_process_local_data``).
Every process runs every program; only process 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gradfit.errors import ConfigError, DeviceError, DistributedError, first_line

AXIS = "data"
GPU_INSTALL_HINT = 'install JAX with CUDA support: pip install -U "jax[cuda13]" (see the JAX install guide)'


def select_device(requested: str):
    """'cpu', 'gpu' or 'auto' (the first GPU when JAX sees one, else the CPU) -> a jax.Device."""
    if requested == "cpu":
        return jax.devices("cpu")[0]
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if gpus:
        return gpus[0]
    if requested == "gpu":
        raise DeviceError(
            f"runtime.device is 'gpu' but JAX sees no GPU (backend: {jax.default_backend()}); "
            f"{GPU_INSTALL_HINT}, or use --device cpu"
        )
    return jax.devices("cpu")[0]


def describe_device(device) -> str:
    """'cpu:0 (cpu)' or 'gpu:0 (NVIDIA H100 80GB HBM3)'."""
    return f"{device.platform}:{device.id} ({device.device_kind})"


@dataclasses.dataclass(frozen=True)
class Topology:
    """The mesh of a run and this process's place in it."""

    mesh: Mesh

    @property
    def devices(self) -> tuple:
        return tuple(self.mesh.devices.flat)

    @property
    def size(self) -> int:
        return self.mesh.devices.size

    @property
    def process_index(self) -> int:
        return jax.process_index()

    @property
    def process_count(self) -> int:
        return jax.process_count()

    @property
    def name(self) -> str:
        """'cpu:0 (cpu)' for one device; '4 x gpu (NVIDIA H200), 2 processes' for several."""
        first = self.devices[0]
        if self.size == 1:
            return describe_device(first)
        processes = f", {self.process_count} processes" if self.process_count > 1 else ""
        return f"{self.size} x {first.platform} ({first.device_kind}){processes}"

    @property
    def writes(self) -> bool:
        """Only process 0 writes the run directory, metrics, checkpoints and the summary."""
        return writes()

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def shard_rows(self, array: jax.Array) -> jax.Array:
        """Inside a program: ``array`` split by rows (axis 0) across the mesh; unchanged on one device."""
        if self.size == 1:
            return array
        return jax.lax.with_sharding_constraint(array, NamedSharding(self.mesh, PartitionSpec(AXIS)))

    def put(self, tree: Any) -> Any:
        """Host values, equal on every process, as arrays replicated on every device of the mesh."""
        if self.process_count == 1:
            return jax.device_put(tree, self.replicated)
        return jax.tree_util.tree_map(
            lambda leaf: jax.make_array_from_process_local_data(self.replicated, np.asarray(leaf)), tree
        )

    def agree(self, stop: bool, windows: int) -> tuple[bool, int]:
        """What every process does next: stop if any process was asked to, with the fewest log windows any
        proposes (chunk sizes come from each process's clock, and every process must run the same steps)."""
        if self.process_count == 1:
            return stop, windows
        from jax.experimental import multihost_utils

        votes = np.asarray(multihost_utils.process_allgather(np.array([int(stop), windows], np.int32)))
        return bool(votes[:, 0].any()), int(votes[:, 1].min())

    def check_same_everywhere(self, what: Callable[[], str]) -> None:
        """Every process must run the same programs on the same data, or the collectives pair up wrongly and
        wait forever: compare a fingerprint of ``what()`` (the config and the data) before anything else is
        computed."""
        if self.process_count == 1:
            return
        mine = np.frombuffer(hashlib.sha256(what().encode()).digest()[:16], np.int32)
        everyone = _gather(mine)
        different = [p for p in range(self.process_count) if not np.array_equal(everyone[p], everyone[0])]
        if different:
            _refuse_together(
                f"process{'es' if len(different) > 1 else ''} {', '.join(map(str, different))} of "
                f"{self.process_count} {'were' if len(different) > 1 else 'was'} given another config or other "
                "data than process 0 (their fingerprints differ); start every process with the same config file, "
                "--set overrides and data file"
            )

    def describe(self) -> dict:
        """What summary.json, config.yaml and the run header record."""
        return {
            "devices": [describe_device(d) for d in self.devices],
            "processes": self.process_count,
            "mesh": {AXIS: self.size},
        }

    def check_batch(self, batch_size: int | None) -> None:
        """The global minibatch must split evenly: each device computes an equal share of every step."""
        if batch_size is None or batch_size % self.size == 0:
            return
        lower = batch_size // self.size * self.size
        nearest = [n for n in (lower, lower + self.size) if n > 0]
        raise ConfigError(
            f"train.batch_size={batch_size} does not divide by the {self.size} devices of the mesh "
            f"(each takes an equal share of every minibatch); nearest valid sizes: "
            f"{' or '.join(map(str, nearest))}, or set runtime.devices"
        )


def writes() -> bool:
    """True in the process that writes files: the only one, or process 0 of a distributed run."""
    return jax.process_index() == 0


def select(device: str, devices: str | int | Sequence[int]) -> Topology:
    """The mesh for ``runtime.device`` (the platform) and ``runtime.devices`` (which of its devices).

    ``auto``: every device of the platform (with several processes, every process's); N: the first N of each
    process; a list: those device ids (as ``jax.devices()`` numbers them).
    """
    platform = select_device(device).platform
    local, everywhere = jax.local_devices(backend=platform), jax.devices(platform)
    processes = jax.process_count()
    if devices == "auto":
        chosen = everywhere
    elif isinstance(devices, int):
        if devices > len(local):
            raise DeviceError(
                f"runtime.devices={devices} but JAX sees {_count(local, platform)}"
                f"{' in this process' if processes > 1 else ''}; use at most {len(local)} "
                f"or 'auto'{_FORCE_HINT if platform == 'cpu' else ''}"
            )
        chosen = [d for p in range(processes) for d in [e for e in everywhere if e.process_index == p][:devices]]
    else:
        ids = {d.id: d for d in everywhere}
        missing = [i for i in devices if i not in ids]
        if missing:
            raise DeviceError(
                f"runtime.devices lists {missing}, which JAX does not see; its {platform} devices are {sorted(ids)}"
            )
        chosen = [ids[i] for i in devices]
        if processes > 1 and {d.process_index for d in chosen} != set(range(processes)):
            raise DeviceError("runtime.devices must include devices of every process of a distributed run")
    return Topology(Mesh(np.array(chosen), (AXIS,)))


_FORCE_HINT = (
    " (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N splits the host into N devices, "
    "which share its cores)"
)


def _count(devices: list, platform: str) -> str:
    return f"{len(devices)} {platform} device{'s' if len(devices) != 1 else ''}"


_CLUSTER_VARIABLES = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")  # what JAX's cluster detection reads
BIND_VARIABLE = "JAX_COORDINATOR_BIND_ADDRESS"  # jax.distributed's own setting, the default of --coordinator-bind


def start_processes(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    init_timeout_s: int,
    heartbeat_timeout_s: int,
    bind: str | None = None,
) -> None:
    """Join the group of processes with ``jax.distributed.initialize`` (before any other use of JAX).

    Arguments left None come from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``,
    else from JAX's cluster detection (SLURM, Open MPI). A process that stops sending heartbeats for
    ``heartbeat_timeout_s`` makes JAX end every other process of the group. Process 0 runs JAX's coordinator
    service, which authenticates no one: it listens where ``coordinator_bind`` says (``bind``, else
    ``JAX_COORDINATOR_BIND_ADDRESS``, else the coordinator's own address), not on every interface.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES", 1)
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID", 0)
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    missing = [flag for flag, value in given.items() if value is None]
    if missing and not any(name in os.environ for name in _CLUSTER_VARIABLES):
        raise DistributedError(
            f"--distributed needs {', '.join(missing)} (or JAX_COORDINATOR_ADDRESS, "
            "JAX_NUM_PROCESSES, JAX_PROCESS_ID; under SLURM or Open MPI JAX finds them itself)"
        )
    if coordinator is not None and not _host_port(coordinator):
        raise DistributedError(f"--coordinator {coordinator!r}: expected HOST:PORT, e.g. 10.0.0.1:1234")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise DistributedError(
            f"--process-id {process_id} is outside 0..{num_processes - 1} (--num-processes {num_processes})"
        )
    coordinator, num_processes, process_id = _detect(coordinator, num_processes, process_id, init_timeout_s)
    listen = coordinator_bind(coordinator, bind or os.environ.get(BIND_VARIABLE))
    if process_id == 0:
        _check_can_listen(listen)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes reduce over TCP
    try:
        jax.distributed.initialize(
            coordinator,
            num_processes,
            process_id,
            initialization_timeout=init_timeout_s,
            heartbeat_timeout_seconds=heartbeat_timeout_s,
            coordinator_bind_address=listen,
        )
        jax.devices()  # the processes exchange their devices here: a missing one fails now, not mid-setup
    except Exception as exc:  # XlaRuntimeError (a timeout, a refused bind)
        raise DistributedError(
            f"could not join the {num_processes} processes at {coordinator} within {init_timeout_s} s "
            f"({first_line(exc)}); check that process 0 runs and that the address and port are reachable from here"
        ) from None
    _check_same_count(num_processes)


def coordinator_bind(coordinator: str, bind: str | None) -> str:
    """Where process 0's coordinator service listens (``coordinator_bind_address``): ``bind``, a HOST (the port is
    the coordinator's) or HOST:PORT, else the ``coordinator`` address itself. JAX's own default, every interface
    (``[::]:PORT``), would let any host that reaches the port join or disturb the group."""
    if bind is None:
        return coordinator
    if _host_port(bind):
        return bind
    if not bind or (":" in bind and not (bind.startswith("[") and bind.endswith("]"))):
        raise DistributedError(
            f"--coordinator-bind {bind!r}: expected an address (10.0.0.1, 0.0.0.0 or [::] for every interface) "
            "or HOST:PORT; an IPv6 address goes in brackets"
        )
    return f"{bind}:{coordinator.rpartition(':')[2]}"


def _check_can_listen(address: str) -> None:
    """Process 0 can open the coordinator's port on ``address`` (HOST:PORT), as JAX's service will (jaxlib fails
    there with no reason given, at times with a crash): one of the addresses the host resolves to must be free."""
    host, _, port = address.rpartition(":")
    problem = "no address"
    try:
        found = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        found, problem = [], str(exc.strerror or exc)
    for family, kind, protocol, _, where in found:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no obstacle
            try:
                probe.bind(where)
                return
            except OSError as exc:
                problem = str(exc.strerror or exc)
    raise DistributedError(
        f"process 0 cannot listen on {address} for the other processes ({problem}); choose a free port in "
        "--coordinator, or an address of this host with --coordinator-bind"
    )


def _detect(
    coordinator: str | None, num_processes: int | None, process_id: int | None, timeout_s: int
) -> tuple[str, int, int]:
    """The three settings, those not given found by JAX's cluster detection as ``jax.distributed.initialize`` would
    find them (run here first, so that the coordinator's address is known before its service starts)."""
    if coordinator is not None and num_processes is not None and process_id is not None:
        return coordinator, num_processes, process_id
    from jax._src import clusters  # JAX's detection (SLURM, Open MPI, ...): no public entry point

    found = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        coordinator, num_processes, process_id, None, None, timeout_s
    )[:3]
    if None in found:
        names = ", ".join(name for name in _CLUSTER_VARIABLES if name in os.environ)
        flags = ", ".join(
            flag for flag, value in zip(("--coordinator", "--num-processes", "--process-id"), found) if value is None
        )
        raise DistributedError(f"--distributed: JAX's cluster detection ({names} set) did not find {flags}; pass them")
    return found  # type: ignore[return-value]  # no None left, as checked


def _check_same_count(num_processes: int) -> None:
    """Every process must be given the same number of processes. JAX forms the group that process 0 asks for; a
    process given another number would otherwise train in it without a word, or wait for processes never coming."""
    counts = _gather(np.full(4, num_processes, np.int32))[:, 0]  # the fingerprint's shape: one compiled gather
    formed = jax.process_count()
    wrong = [p for p in range(len(counts)) if counts[p] != formed]
    if wrong:
        told = ", ".join(f"process {p} was given {counts[p]}" for p in wrong)
        _refuse_together(
            f"the processes were given different --num-processes: process 0 formed a group of {formed}, {told}; "
            "give every process the same --num-processes (or JAX_NUM_PROCESSES)"
        )


def _gather(row: np.ndarray) -> np.ndarray:
    """Every process's ``row``, one per line (an all-gather over the group)."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(row))


def _refuse_together(message: str) -> NoReturn:
    """Refuse to go on, in every process at once (each compared the same gathered values). The group is left
    first: process 0 runs the coordinator, and ending it would end the others before they have said why."""
    with contextlib.suppress(Exception):
        jax.distributed.shutdown()
    raise DistributedError(message)


def _env_int(name: str, least: int) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < least:
        raise DistributedError(f"{name}={value!r}: expected a whole number >= {least}")
    return number


def _host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isascii() and port.isdigit() and 0 < int(port) < 65536
