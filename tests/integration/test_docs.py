"""The docs stay true: the site builds strictly, every config key and command is in the reference, the set-up
commands match CI, the Python names the pages mention exist, and the shell examples marked for it run."""

from __future__ import annotations

import html
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from gradfit.config.load import describe_keys

README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

SETUP_COMMAND = "pip install -e . && gradfit train configs/logreg.yaml"
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -q'
RUN_MARKER = "<!-- test: run -->"


def marked_commands() -> list[tuple[str, str]]:
    """(page, command) for every line of a fenced block right after the run marker, comments dropped."""
    found: list[tuple[str, str]] = []
    for page in [ROOT / "README.md", *PAGES]:
        lines = page.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            if line.strip() != RUN_MARKER:
                continue
            assert lines[index + 1].startswith("```"), f"{page}: the run marker must stand right above a fence"
            for command in lines[index + 2 :]:
                if command.startswith("```"):
                    break
                command = command.split(" # ", 1)[0].strip()
                if command and command not in {known for _, known in found}:
                    found.append((str(page.relative_to(ROOT)), command))
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as a reader would build it (no network), with every warning an error."""
    folder = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # no end-of-life banner in the captured output
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    result = subprocess.run(
        [*command, "--site-dir", str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return folder


def test_site_builds_strictly_with_every_page(site):
    for page in PAGES:
        relative = page.relative_to(DOCS).with_suffix("")
        folder = relative.parent if relative.name == "index" else relative
        assert (site / folder / "index.html").is_file(), f"{page} was not built"


def test_config_reference_lists_exactly_the_schema_keys(site):
    page = (site / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    documented = set(re.findall(r"<tr>\s*<td><code>([a-z_.0-9]+)</code></td>", page))
    schema = {".".join(info.key) for info in describe_keys()}
    assert schema - documented == set(), "keys missing from the config reference"
    assert documented - schema == set(), "the config reference lists keys that do not exist"


def test_cli_reference_has_the_help_of_every_command(site):
    import typer

    from gradfit.cli.app import app

    page = html.unescape((site / "reference" / "cli" / "index.html").read_text(encoding="utf-8"))

    def paths(command, prefix):
        context = typer.Context(command, info_name="gradfit")
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            yield [*prefix, name]
            if hasattr(sub, "list_commands"):
                yield from paths(sub, [*prefix, name])

    commands = list(paths(typer.main.get_command(app), []))
    assert ["train"] in commands and ["config", "show"] in commands
    for path in commands:
        assert f"Usage: gradfit {' '.join(path)} " in page, f"gradfit {' '.join(path)} is not in the CLI reference"


def test_api_reference_renders_the_public_functions(site):
    page = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("fit", "resume", "load_run", "Run"):
        assert f'id="gradfit.api.{name}"' in page


def test_setup_commands_and_ci_agree():
    assert SETUP_COMMAND in README
    assert TEST_COMMAND in README
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    getting_started = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    assert SETUP_COMMAND in getting_started and TEST_COMMAND in getting_started


def test_readme_is_a_front_page_that_links_only_inside_the_repository():
    assert len(README.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)\s]+)\)", README):
        if re.match(r"https?://", target) or target.startswith("#"):
            continue
        path = (ROOT / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"README links outside the repository: {target}"
        assert path.exists(), f"README links to a missing file: {target}"


def _resolves(dotted: str) -> bool:
    """Whether ``gradfit.a.b.c`` names a module, or an attribute of the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def test_python_names_in_the_docs_exist():
    top_level = {path.stem for path in (ROOT / "gradfit").iterdir() if not path.name.startswith("_")}
    top_level |= {"fit", "load_run"}
    names = set()
    for page in [ROOT / "README.md", *PAGES]:
        text = page.read_text(encoding="utf-8")
        for dotted in re.findall(r"\bgradfit(?:\.[A-Za-z_]\w*)+", text):
            if dotted.split(".")[1] in top_level:
                names.add(dotted)
        for module, imported in re.findall(r"^from (gradfit[\w.]*) import ([\w, ]+)$", text, flags=re.MULTILINE):
            names.update(f"{module}.{name.strip()}" for name in imported.split(","))
    assert "gradfit.api" in names
    missing = sorted(name for name in names if not _resolves(name))
    assert missing == [], f"the docs name Python objects that do not exist: {missing}"


COMMANDS = marked_commands()


def test_the_cheap_examples_are_marked():
    commands = {command for _, command in COMMANDS}
    for expected in (
        "gradfit --help",
        "gradfit config show configs/logreg.yaml",
        "gradfit config validate configs/*.yaml",
        "gradfit data describe data/breast_cancer.csv",
    ):
        assert expected in commands


@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[command for _, command in COMMANDS])
def test_marked_shell_example_runs(page, command):
    assert shlex.split(command)[0] == "gradfit", f"{page}: only gradfit commands are marked to run: {command}"
    result = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{page}: `{command}` exited with {result.returncode}:\n{result.stderr[-2000:]}"


PYTHON_MARKER = "<!-- test: run python -->"


def marked_python() -> list[tuple[str, str]]:
    """(page and line, code) of every Python block right after the Python run marker."""
    found = []
    for page in [ROOT / "README.md", *PAGES]:
        lines = page.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            if line.strip() != PYTHON_MARKER:
                continue
            assert lines[index + 1].strip() == "```python", f"{page}: the marker must stand right above a python fence"
            end = next(i for i in range(index + 2, len(lines)) if lines[i].startswith("```"))
            found.append((f"{page.relative_to(ROOT)}:{index + 2}", "\n".join(lines[index + 2 : end])))
    return found


PYTHON_EXAMPLES = marked_python()


def test_the_python_guides_have_examples_that_run():
    pages = {where.split(":")[0] for where, _ in PYTHON_EXAMPLES}
    assert {"docs/guides/sklearn.md", "docs/guides/export.md", "docs/guides/mlflow.md"} <= pages


@pytest.mark.parametrize(("where", "code"), PYTHON_EXAMPLES, ids=[where for where, _ in PYTHON_EXAMPLES])
def test_marked_python_example_runs(where, code, tmp_path):
    """Each marked block runs as printed, in a fresh process, from a folder holding the repository's configs and
    data (what it writes stays there)."""
    for shipped in ("configs", "data"):
        (tmp_path / shipped).symlink_to(ROOT / shipped)
    env = {**os.environ, "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri()}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{where}: the example failed:\n{result.stderr[-3000:]}"
