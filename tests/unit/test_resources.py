"""Sizes: step counts bounded for int32, and runs that cannot fit in memory refused before anything is allocated.

The estimator is checked against the real models and optimizers (parameter and slot counts), the host-memory
reader against fake /proc and /sys trees, and the whole path through ``gradfit train``: each oversized config
must exit with code 2 and a one-line message naming the key and the sizes, before compilation, with no
traceback and no run directory. Available memory is monkeypatched where the outcome would depend on the machine.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from conftest import CONFIGS, make_config
from typer.testing import CliRunner

from gradfit import files
from gradfit.cli.app import app
from gradfit.config.section import INT32_MAX, MAX_STEPS
from gradfit.core import models
from gradfit.core.optim import make_optimizer
from gradfit.data import dataset as data
from gradfit.data import synthetic
from gradfit.errors import ConfigError
from gradfit.runtime import resources
from gradfit.training.evaluate import block_rows
from gradfit.training.plan import Plan
from gradfit.training.prepare import prepare

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # keep Rich from wrapping the message
GiB = 2**30


def estimate_for(config) -> resources.MemoryEstimate:
    """The estimate ``train._prepare`` makes, from the data's shape (synthetic data: from the config, ungenerated)."""
    if config.data.source == "synthetic":
        s = config.data.synthetic
        n_features, n_classes = s.n_features, s.n_classes
        n_val, n_test = round(s.n_samples * config.data.val_fraction), round(s.n_samples * config.data.test_fraction)
        rows = (s.n_samples - n_val - n_test, n_val, n_test)
    else:
        dataset = data.load_dataset(config)
        n_features, n_classes = dataset.n_features, dataset.n_classes
        rows = (len(dataset.train), len(dataset.val), len(dataset.test))
    plan = Plan.from_config(config, rows[0], rows[1])
    hidden = tuple(config.model.hidden) if config.model.kind == "mlp" else ()
    return resources.estimate_run(config, n_features, n_classes, rows, plan.batch_size, block_rows(n_features, hidden))


# ------------------------------------------------------------------------------------------ the estimator


@pytest.mark.parametrize(
    "kind, n_classes, hidden, expected",
    [
        ("logistic", 2, (), 31),  # d + 1
        ("mlp", 2, (8, 4), 30 * 8 + 8 + 8 * 4 + 4 + 4 * 1 + 1),  # binary: one output
        ("mlp", 5, (7,), 30 * 7 + 7 + 7 * 5 + 5),
    ],
)
def test_parameter_count_is_that_of_the_built_model(kind, n_classes, hidden, expected):
    config = make_config(f"model.kind={kind}", *([f"model.hidden={list(hidden)}"] if hidden else []))
    model = models.build_model(config.model, 30, n_classes)
    built = models.count_params(jax.eval_shape(model.init, jax.random.PRNGKey(0)))
    assert resources.parameter_count(kind, 30, n_classes, hidden) == built == expected


def test_parameter_count_stays_exact_for_absurd_sizes():
    # Python integers, never int32/int64: a layer of 10**6 x 10**6 is 10**12 weights, not a wrapped number
    assert resources.parameter_count("mlp", 10**9, 2, (10**6, 10**6)) == 10**15 + 10**6 + 10**12 + 10**6 + 10**6 + 1


@pytest.mark.parametrize(
    "name, extra, slots",
    [
        ("sgd", [], 0),
        ("momentum", [], 1),
        ("nesterov", [], 1),
        ("adam", [], 2),
        ("adamw", [], 2),
        ("rmsprop", [], 1),
        ("adagrad", [], 1),
        ("lbfgs", ["optimizer.memory_size=4"], 11),
    ],
)
def test_optimizer_slots_match_the_optax_state(name, extra, slots):
    config = make_config(f"optimizer.name={name}", *extra)
    optimizer, _ = make_optimizer(config.optimizer, total_steps=10)
    params = {"w": jnp.zeros((1000,)), "b": jnp.zeros(())}
    state_size = sum(leaf.size for leaf in jax.tree_util.tree_leaves(optimizer.init(params)))
    assert resources.optimizer_slots(config.optimizer) == slots == state_size // 1001  # scalars aside


def test_estimate_counts_data_model_and_activations():
    config = make_config("model.kind=mlp", "model.hidden=[16, 8]", "optimizer.name=adam", "train.batch_size=32")
    estimate = resources.estimate_run(
        config, n_features=10, n_classes=3, rows=(100, 20, 30), batch_size=32, eval_rows=4096
    )
    assert estimate.data == 150 * (10 * 4 + 4)  # float32 features, int32 class ids
    assert estimate.parameters == 10 * 16 + 16 + 16 * 8 + 8 + 8 * 3 + 3
    assert estimate.copies == 1 + 2 + 2  # weights, adam's two moments, gradient, update
    assert estimate.model == estimate.parameters * 5 * 4
    assert estimate.activations == 32 * ((16 + 8 + 3) + 16) * 4 + 32 * 10 * 4  # layers and back; the gathered batch
    assert estimate.total == estimate.data + estimate.model + estimate.activations


def test_float64_doubles_and_full_batch_uses_every_training_row():
    base = ("model.kind=mlp", "model.hidden=[16]", "optimizer.name=sgd")
    single = resources.estimate_run(make_config(*base), 10, 2, (100, 0, 0), None, 4096)
    double = resources.estimate_run(make_config(*base, "runtime.precision=float64"), 10, 2, (100, 0, 0), None, 4096)
    assert double.total == 2 * single.total
    assert single.activations == 100 * ((16 + 1) + 16) * 4


def test_synthetic_host_bytes_count_the_features_and_their_split_copy():
    synthetic = make_config(
        "data.source=synthetic", "data.synthetic.n_samples=1000", "data.synthetic.n_features=50"
    ).data.synthetic
    assert resources.synthetic_host_bytes(synthetic) >= 2 * 1000 * 50 * 4


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")) + [None], ids=lambda p: p.name if p else "defaults")
def test_shipped_configs_and_the_defaults_fit_a_small_machine(path):
    config = make_config(path=path)
    # 2 GiB: far less than any machine these configs are meant for; the estimate must not refuse them
    resources.check_synthetic(config, 2 * GiB)
    estimate = estimate_for(config)
    assert estimate.total < GiB, estimate
    resources.check_run(config, estimate, GiB, "cpu:0")


def test_the_synthetic_estimate_is_at_most_what_loading_holds():
    """A lower bound: no more than twice the arrays load_dataset returns, plus the generator's own arrays (the
    true weights, the float32 logits and the float64 label noise)."""
    config = make_config(
        "data.source=synthetic",
        "data.synthetic.n_samples=500",
        "data.synthetic.n_features=40",
        "data.synthetic.n_classes=3",
        "model.kind=mlp",
    )
    dataset = data.load_dataset(config)
    held = sum(a.nbytes for split in (dataset.train, dataset.val, dataset.test) for a in (split.x, split.y))
    assert (
        resources.synthetic_host_bytes(config.data.synthetic)
        <= 2 * held + 40 * resources.NAME_BYTES + 500 * 8 + 40 * 3 * 8 + 500 * 3 * 4 + 500 * 3 * 8
    )


# ---------------------------------------------------------------------------------------- step counts


def test_every_step_key_is_bounded_so_the_int32_counter_never_wraps():
    # the compiled chunk computes the end of the last log window, ceil(total / log_every) * log_every, in int32
    for total in (1, 12345, MAX_STEPS):
        for log_every in (1, 7, 1000, MAX_STEPS):
            assert math.ceil(total / log_every) * log_every <= INT32_MAX


def test_a_run_of_the_largest_step_count_reaches_its_end_in_int32():
    """Steps 2**30 - 2 .. 2**30 with log_every = 2**30: the loop's counters at their bound stay exact."""
    config = make_config(
        "data.source=synthetic",
        "data.synthetic.n_samples=40",
        "data.synthetic.n_features=3",
        "optimizer.name=sgd",
        f"train.steps={MAX_STEPS}",
        f"train.log_every={MAX_STEPS}",
        "train.checkpoint_every=null",
    )
    run = prepare(config)
    with run.precision.scope():
        state = run.state._replace(step=jnp.int32(MAX_STEPS - 2))
        state, metrics = jax.jit(run.chunk)(state, run.train_data, jnp.int32(2))
    assert int(metrics["step"]) == MAX_STEPS
    assert bool(metrics["finite"])
    assert float(metrics["windows"][0, 0]) > 0  # the window's objective sum: the two steps ran


def test_total_steps_from_epochs_are_checked():
    config = make_config("train.epochs=1000000", "train.batch_size=2")
    resources.check_total_steps(config.train, 1000 * 1000, 1000)  # fits
    with pytest.raises(ConfigError) as raised:
        resources.check_total_steps(config.train, 5000 * 1000000, 5000)
    message = str(raised.value)
    assert "train.epochs=1,000,000 gives 5,000,000,000 steps (5,000 per epoch)" in message
    assert "at most 1,073,741,824" in message and "raise train.batch_size" in message


# ------------------------------------------------------------------------------------- memory available


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


MEMINFO = "MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n"


def test_host_memory_is_meminfo_without_a_cgroup_limit(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "proc/meminfo": MEMINFO,
            "proc/self/cgroup": "0::/\n",
            "sys/fs/cgroup/memory.max": "max\n",
            "sys/fs/cgroup/memory.current": "5\n",
        },
    )
    assert resources.host_available_bytes(root) == 20000000 * 1024


def test_host_memory_is_capped_by_a_cgroup_v2_limit_and_its_parents(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "proc/meminfo": MEMINFO,
            "proc/self/cgroup": "0::/jobs/me\n",
            "sys/fs/cgroup/jobs/me/memory.max": "max\n",
            "sys/fs/cgroup/jobs/me/memory.current": "100\n",
            "sys/fs/cgroup/jobs/memory.max": str(4 * GiB),
            "sys/fs/cgroup/jobs/memory.current": str(GiB),
            "sys/fs/cgroup/jobs/memory.stat": f"anon {GiB // 2}\nfile {GiB // 4}\n",
        },
    )
    assert resources.host_available_bytes(root) == 4 * GiB - GiB + GiB // 4  # the page cache can be reclaimed


def test_host_memory_is_capped_by_a_cgroup_v1_limit(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "proc/meminfo": MEMINFO,
            "proc/self/cgroup": "4:memory:/box\n1:cpu:/\n",
            "sys/fs/cgroup/memory/box/memory.limit_in_bytes": str(2**63 - 4096),  # unlimited itself...
            "sys/fs/cgroup/memory/box/memory.usage_in_bytes": str(GiB),
            "sys/fs/cgroup/memory/box/memory.stat":  # ...but not its ancestors
            f"hierarchical_memory_limit {3 * GiB}\ntotal_inactive_file 100\ntotal_active_file 20\n",
        },
    )
    assert resources.host_available_bytes(root) == 2 * GiB + 120


def test_host_memory_falls_back_to_sysconf(tmp_path):
    available = resources.host_available_bytes(tmp_path)  # nothing to read under tmp_path
    assert available is None or available > 0


class FakeDevice:
    def __init__(self, platform: str, stats):
        self.platform, self._stats = platform, stats

    def memory_stats(self):
        if isinstance(self._stats, Exception):
            raise self._stats
        return self._stats


def test_device_memory_is_the_allocator_limit_less_what_is_in_use(monkeypatch):
    monkeypatch.setattr(resources, "host_available_bytes", lambda *a, **k: 123)
    assert (
        resources.device_available_bytes(FakeDevice("gpu", {"bytes_limit": 10 * GiB, "bytes_in_use": GiB})) == 9 * GiB
    )
    assert resources.device_available_bytes(FakeDevice("gpu", None)) is None  # unknown: nothing refused
    assert resources.device_available_bytes(FakeDevice("gpu", RuntimeError("no stats"))) is None
    assert resources.device_available_bytes(FakeDevice("cpu", None)) == 123  # the CPU's memory is the host's


def test_unknown_memory_refuses_nothing():
    config = make_config("model.kind=mlp", "model.hidden=[1000000, 1000000]")
    estimate = resources.estimate_run(config, 30, 2, (300, 100, 100), None, 256)
    resources.check_run(config, estimate, None, "gpu:0")
    with pytest.raises(ConfigError, match=r"on gpu:0 .* but 1\.0 GiB is available"):
        resources.check_run(config, estimate, GiB, "gpu:0")


def test_format_bytes():
    assert files.format_bytes(1000) == "1,000 bytes"
    assert files.format_bytes(3 * GiB // 2) == "1.5 GiB"
    assert files.format_bytes(5 * 2**40) == "5.0 TiB"
    assert files.format_bytes(10**30).endswith(" PiB")


# ------------------------------------------------------------------------------------- gradfit train


SMALL = "data: {source: synthetic, synthetic: {n_samples: 200, n_features: 5}}\n"


@pytest.fixture
def no_data_generation(monkeypatch):
    """Make generating data fail loudly: a check that lets it through would otherwise allocate gigabytes."""

    def refuse(*args, **kwargs):
        raise AssertionError("the synthetic data were generated before the size check")

    monkeypatch.setattr(synthetic, "make_synthetic", refuse)


@pytest.mark.parametrize(
    "config_text, expect",
    [
        pytest.param(
            "train: {steps: 1099511627776}\n",
            ("train.steps: at most 1,073,741,824", "int32", "1099511627776"),
            id="steps-2**40",
        ),
        pytest.param(
            "train: {steps: 20, log_every: 1099511627776}\n",
            ("train.log_every: at most 1,073,741,824", "1099511627776"),
            id="log-every-2**40",
        ),
        pytest.param(
            "train: {eval_every: 1099511627776}\n", ("train.eval_every: at most 1,073,741,824",), id="eval-every"
        ),
        pytest.param("train: {epochs: 1000000000000}\n", ("train.epochs: at most 1,073,741,824",), id="epochs-10**12"),
        pytest.param("train: {keep_checkpoints: 100000}\n", ("train.keep_checkpoints: at most 1,000",), id="keep"),
        pytest.param(
            "data: {source: synthetic, synthetic: {n_features: 1e10}}\n",
            ("data.synthetic.n_features: at most 2,147,483,647", "1e10"),
            id="n-features-1e10",
        ),
        pytest.param(
            "data: {source: synthetic, synthetic: {n_samples: 1000000000000}}\n",
            ("data.synthetic.n_samples: at most 2,147,483,647", "1000000000000"),
            id="n-samples-10**12",
        ),
        pytest.param(
            "model: {kind: mlp, hidden: [64, 3000000000]}\n",
            ("model.hidden.1: at most 2,147,483,647",),
            id="hidden-beyond-int32",
        ),
    ],
)
def test_counts_beyond_int32_are_refused_at_validation(tmp_path, no_data_generation, config_text, expect):
    refused = refuse(tmp_path, config_text)
    for fragment in expect:
        assert fragment in refused, refused


def test_epochs_times_batches_per_epoch_beyond_int32_are_refused_once_the_rows_are_known(tmp_path):
    refused = refuse(tmp_path, SMALL + "train: {epochs: 1000000000, batch_size: 10}\n")
    assert (
        "train.epochs=1,000,000,000 gives 12,000,000,000 steps (12 per epoch); a run takes at most 1,073,741,824"
    ) in refused, refused


@pytest.mark.parametrize(
    "config_text, expect",
    [
        pytest.param(
            "data: {source: synthetic, synthetic: {n_samples: 1000000000}}\n",
            (
                "data.synthetic: 1,000,000,000 rows x 20 features x 2 classes need at least 178.8 GiB of host memory",
                "but 1.0 GiB is available",
                "lower data.synthetic.n_samples (1,000,000,000)",
            ),
            id="n-samples-10**9",
        ),
        pytest.param(
            "data: {source: synthetic, synthetic: {n_features: 1000000000}}\n",
            (
                "10,000 rows x 1,000,000,000 features x 2 classes need at least 72.8 TiB of host memory",
                "data.synthetic.n_features (1,000,000,000)",
            ),
            id="n-features-10**9",
        ),
    ],
)
def test_synthetic_data_too_large_for_the_host_are_never_generated(
    tmp_path, monkeypatch, no_data_generation, config_text, expect
):
    monkeypatch.setattr(resources, "host_available_bytes", lambda *a, **k: GiB)
    refused = refuse(tmp_path, config_text)
    for fragment in expect:
        assert fragment in refused, refused


@pytest.mark.parametrize(
    "config_text, available, expect",
    [
        pytest.param(
            SMALL + "model: {kind: mlp, hidden: [1000000, 1000000]}\n",
            GiB,
            (
                "model.hidden=[1000000, 1000000]: the run needs at least 18.2 TiB",
                "1.0 GiB is available",
                "1,000,008,000,001 x 5 copies",
                "use smaller hidden layers",
            ),
            id="hidden-10**6-squared",
        ),
        pytest.param(
            SMALL + "model: {kind: mlp, hidden: [200000]}\ntrain: {batch_size: 100}\n",
            100 * 2**20,
            ("train.batch_size=100", "activations 152.6 MiB", "100.0 MiB is available", "lower train.batch_size"),
            id="batch",
        ),
        pytest.param(
            SMALL + "model: {kind: mlp, hidden: [200000]}\n",
            100 * 2**20,
            ("train.batch_size=null", "set train.batch_size to train on minibatches"),
            id="full-batch",
        ),
        pytest.param(
            SMALL + "model: {kind: mlp, hidden: [3000, 3000]}\noptimizer: {name: lbfgs, memory_size: 100}\n",
            GiB,
            ("model.hidden=[3000, 3000] with optimizer.memory_size=100", "lower optimizer.memory_size"),
            id="lbfgs-history",
        ),
    ],
)
def test_models_too_large_for_the_device_are_refused_before_allocation(
    tmp_path, monkeypatch, config_text, available, expect
):
    monkeypatch.setattr(resources, "host_available_bytes", lambda *a, **k: available)
    refused = refuse(tmp_path, config_text)
    for fragment in expect:
        assert fragment in refused, refused


def refuse(tmp_path: Path, config_text: str) -> str:
    """Run `gradfit train` on the config; assert it was refused cleanly and return the message."""
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    result = runner.invoke(app, ["train", str(config), "--out-dir", str(tmp_path / "runs")], env=WIDE)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) <= 2, message  # "N problem(s):" and the problem, or the one-line error
    assert not (tmp_path / "runs").exists(), "a refused run left a run directory"
    return " ".join(message.split())


def test_a_split_of_more_rows_than_int32_indexes_is_refused():
    config = make_config("data.source=file", "data.path=big.csv")
    estimate = resources.estimate_run(config, 1, 2, (2**31, 10, 10), None, 256)
    with pytest.raises(ConfigError, match=r"data.path=.*big.csv: a split of 2,147,483,648 rows; at most 2,147,483,647"):
        resources.check_run(config, estimate, None, "cpu:0")
