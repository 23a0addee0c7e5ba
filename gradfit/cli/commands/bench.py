"""``gradfit bench``: how fast training and gradients are, against the alternatives."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from gradfit.cli.options import FORCE_HELP, JSON_HELP, JSON_OUT_HELP, JsonOutput, Study, data_files
from gradfit.config.choices import Device
from gradfit.errors import ConfigError

if TYPE_CHECKING:
    from gradfit.config.schema import GradfitConfig


def bench(
    configs: list[Path] | None = typer.Argument(
        None, help="Configs to time; omit for the built-in suite (the logreg and mlp configs)."
    ),
    device: Device = typer.Option("auto", help="auto, cpu, or gpu (an error when JAX sees none)."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Only the side-by-side ratios: gradfit's whole training loop against a minimal JAX loop, PyTorch "
        "eager and scikit-learn, each a median with its spread; a third of the time of every section at small "
        "sizes, most of it compilation.",
    ),
    no_peers: bool = typer.Option(
        False, "--no-peers", help="Skip the comparisons (minimal JAX loop, PyTorch, scikit-learn, NumPy)."
    ),
    study: Study | None = typer.Option(
        None,
        "--study",
        help="Run one study alone: helmholtz, the gradient of a free energy by every method "
        "(reverse, forward, finite differences, by hand, SymPy) as n grows.",
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="Also print every table measured (throughput, per-size gradient methods, the Helmholtz study, "
        "peers, scaling), not only the summary.",
    ),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
    json_file: Path | None = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Measure speed: compile time, steps/s, the cost of a gradient, AD modes vs finite differences, and peers.

    Every time is a median over repeats after a warm-up call, with the device synchronized (block_until_ready); compile time is reported apart from steady-state speed.

    Prints a summary: the machine, gradfit's time against each peer's with the spreads, and a verdict. --verbose adds the table of every section measured; --json has every figure. --quick measures the summary's figures alone; without it, bench also times the Python loop and the fused chunk, one gradient against one loss, the gradient by method as the size grows, the Helmholtz study, a NumPy step and the scaling over devices (89 s on a quiet 2-core VM).

    [bold]Examples[/]

      gradfit bench --quick
      gradfit bench --device gpu
      gradfit bench configs/mlp.yaml --device cpu --json-out bench.json
      gradfit bench --quick --verbose
      gradfit bench --quick --json | jq .peers
      gradfit bench --study helmholtz
    """  # noqa: E501 (a paragraph of --help is one line: Rich wraps it to the terminal)
    if study is not None and configs:
        raise ConfigError(f"--study {study} runs one study on its own functions; drop the configs")
    chosen = _chosen_configs(configs)
    protected = [*(configs or []), *(f for c in (chosen or {}).values() for f in data_files(c))]
    output = JsonOutput.checked(json_flag, json_file, force, protected)
    from dataclasses import replace

    from gradfit.bench import engine
    from gradfit.cli.render.bench import bench_tables

    options = replace(engine.QUICK if quick else engine.FULL, peers=not no_peers)
    if "scaling" in options.sections and study is None:
        engine.split_cpu()  # before JAX starts: the scaling table compares 1, 2 and 4 devices

    console = output.console()
    with console.status("benchmarking") as status:

        def progress(section: str) -> None:
            status.update(f"benchmarking: {section}")

        if study is not None:
            result = engine.run_study(study, options, device, progress)
        else:
            result = engine.run_bench(chosen, options, device, progress)
    for table in bench_tables(result, verbose):
        console.print(table)
    output.emit(result)


def _chosen_configs(configs: list[Path] | None) -> dict[str, GradfitConfig] | None:
    """The configs to time by name (a repeated name by its path); None for the built-in suite."""
    if not configs:
        return None
    from gradfit.config.load import resolve_config

    chosen: dict[str, GradfitConfig] = {}
    for path in configs:
        config = resolve_config(path).config
        chosen[config.name if config.name not in chosen else str(path)] = config
    return chosen
