"""gradfit.runs.plot: training curves drawn from synthetic metrics records (no training), checked in the pixels."""

import json
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402 (matplotlib depends on pillow)

from gradfit.errors import GradfitError  # noqa: E402
from gradfit.runs import plot  # noqa: E402
from gradfit.runs.plot import plot_curves  # noqa: E402

TAB10 = np.array(matplotlib.colormaps["tab10"].colors) * 255


def records(scale: float, steps: int = 20, **extra) -> list[dict]:
    """A decreasing objective curve as metrics.jsonl holds it (val_loss only every 5th step, None elsewhere)."""
    return [
        {
            "step": s,
            "epoch": s / 10,
            "elapsed_s": 0.1 * s,
            "objective": scale / (1 + s),
            "val_loss": scale / (1 + s) + 0.1 if s % 5 == 0 else None,
            **extra,
        }
        for s in range(0, steps * 10, 10)
    ]


def pixels(path) -> np.ndarray:
    """The image's RGB values as (height, width, 3) ints."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=int)


def colour_count(rgb: np.ndarray, run: int, tolerance: int = 10) -> int:
    """How many pixels have (nearly) the tab10 colour of the ``run``-th run."""
    return int((np.abs(rgb - TAB10[run]).max(axis=-1) <= tolerance).sum())


@pytest.mark.parametrize("size", [(640, 360), (201, 151)])  # 201/100*100 truncates to 200 in naive float arithmetic
def test_png_has_the_requested_size_and_one_colour_per_run(tmp_path, size):
    out = tmp_path / "curves.png"
    plot_curves([("a", records(1.0)), ("b", records(2.0)), ("c", records(3.0))], ["objective"], out, size=size)
    rgb = pixels(out)
    assert rgb.shape == (size[1], size[0], 3)
    assert all(colour_count(rgb, run) > 50 for run in range(3)), [colour_count(rgb, run) for run in range(4)]
    assert colour_count(rgb, 3) == 0  # no fourth run drawn


def test_a_run_without_a_metric_has_no_line_in_that_panel(tmp_path):
    out = tmp_path / "curves.png"
    lacking = [{k: v for k, v in r.items() if k != "val_loss"} for r in records(2.0)]
    plot_curves([("with", records(1.0)), ("without", lacking)], ["objective", "val_loss"], out, size=(800, 300))
    rgb = pixels(out)
    left, right = rgb[:, :400], rgb[:, 400:]
    assert colour_count(left, 0) > 50 and colour_count(left, 1) > 50
    assert colour_count(right, 0) > 50 and colour_count(right, 1) == 0


def test_a_single_point_is_visible_and_log_y_draws(tmp_path):
    out = tmp_path / "curves.png"
    plot_curves([("long", records(1.0)), ("one", records(5.0, steps=1))], ["objective", "val_loss"], out, log_y=True)
    right = pixels(out)[:, 500:]  # the val_loss panel: no legend there, whose entries carry the colours too
    assert colour_count(right, 0) > 50 and colour_count(right, 1) > 20  # the single point's marker


@pytest.mark.parametrize(
    "suffix, magic", [(".svg", (b"<?xml", b"<svg")), (".pdf", (b"%PDF",)), (".PNG", (b"\x89PNG",))]
)
def test_the_format_follows_the_suffix(tmp_path, suffix, magic):
    out = tmp_path / f"curves{suffix}"
    plot_curves([("a", records(1.0)), ("b", records(2.0))], ["objective", "val_loss"], out)
    assert out.read_bytes().startswith(magic)


def test_an_existing_file_is_replaced_by_a_complete_image(tmp_path):
    out = tmp_path / "curves.png"
    out.write_bytes(b"an older, unrelated file")
    plot_curves([("a", records(1.0))], ["objective"], out, size=(300, 200))
    assert Image.open(out).size == (300, 200)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]  # no temporary file left behind


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("curves.jpg", {}, "'.jpg'; name the file with one of .png, .svg, .pdf"),
        ("curves", {}, "'(none)'"),
        (
            "curves.png",
            {"metrics": ["val_accuracy"]},
            "no run has val_accuracy values; they have: objective, val_loss; pick with --metric",
        ),
        (
            "curves.png",
            {"log_y": True, "curves": [("a", records(1.0)), ("flat", records(0.0))]},
            "objective of run 'flat' is 0 at step 0, which a log scale cannot show; drop --log-y",
        ),
        ("curves.png", {"size": (199, 400)}, "plot size 199x400 pixels is out of range"),
        ("curves.png", {"size": (1000, 10001)}, "from 200x150 to 10000x10000"),
        ("curves.png", {"curves": []}, "nothing to plot"),
    ],
)
def test_mistakes_are_refused_and_write_nothing(tmp_path, name, kwargs, message):
    arguments = {"curves": [("a", records(1.0))], "metrics": ["objective"], **kwargs}
    with pytest.raises(GradfitError) as caught:
        plot_curves(arguments.pop("curves"), arguments.pop("metrics"), tmp_path / name, **arguments)
    assert message in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(GradfitError, match=r"pip install 'gradfit\[plot\]'"):
        plot_curves([("a", records(1.0))], ["objective"], tmp_path / "curves.png")
    assert list(tmp_path.iterdir()) == []


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, gradfit.runs.plot; assert 'matplotlib' not in sys.modules and 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_log_y_leaves_accuracies_on_a_linear_axis(tmp_path):
    """An accuracy of 0 has no logarithm: under --log-y the losses go on a log axis, the accuracies stay linear."""
    out = tmp_path / "curves.png"
    runs = [("a", records(1.0, val_accuracy=0.0)), ("b", records(2.0, val_accuracy=0.5))]
    plot_curves(runs, ["objective", "val_accuracy"], out, log_y=True)
    assert pixels(out).shape[:2] == (400, 1200)
    with pytest.raises(GradfitError, match="drop --log-y"):
        plot_curves([("a", records(1.0, val_loss_floor=0.0))], ["val_loss_floor"], tmp_path / "x.png", log_y=True)


def test_records_are_read_once_as_a_stream(tmp_path):
    """A run's records may be a generator (gradfit plot streams metrics.jsonl): every panel gets its points."""
    out = tmp_path / "curves.png"
    plot_curves([("a", iter(records(1.0))), ("b", iter(records(2.0)))], ["objective", "val_loss"], out, size=(800, 300))
    right = pixels(out)[:, 400:]
    assert colour_count(right, 0) > 50 and colour_count(right, 1) > 50


def test_a_long_curve_is_drawn_from_a_bounded_number_of_points(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plot, "_render", lambda labels, metrics, points, *rest: drawn.append(points) or b"")
    count = 3 * plot.MAX_CURVE_POINTS + 17
    spike = {"step": 10 * 1234, "objective": 50.0}
    stream = ({"step": 10 * s, "objective": 1 / (1 + s)} if s != 1234 else spike for s in range(count))
    plot_curves([("long", stream)], ["objective"], tmp_path / "curves.png")
    ((steps, values),) = drawn[0][0]  # the one run's one panel
    assert len(steps) <= plot.MAX_CURVE_POINTS and steps[-1] == 10 * (count - 1) and steps[0] == 0
    assert max(values) == 50.0 and values[-1] == 1 / count


@pytest.mark.parametrize("size", ["²x400", "1200x４00", "1200", "x", "12.5x400", "-1x400"])
def test_a_size_with_anything_but_ascii_digits_is_a_one_line_error(tmp_path, size):
    from typer.testing import CliRunner

    from gradfit.cli.app import app

    run = tmp_path / "run"  # what gradfit plot reads of a run directory
    run.mkdir()
    (run / "config.yaml").write_text("name: run\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(1.0)))
    result = CliRunner().invoke(app, ["plot", str(run), "--size", size, "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 2, result.exception
    assert "--size" in result.output and "WIDTHxHEIGHT" in result.output
    assert result.output.strip().count("\n") == 0 and not (tmp_path / "c.png").exists()


def test_forty_runs_get_forty_different_lines():
    """tab10 has ten colours: from the eleventh run on, the colours repeat dashed, then dotted, then dash-dotted."""
    styles = [plot.line_style(run, 10) for run in range(40)]
    assert len(set(styles)) == 40 and styles[:10] == [(run, "-") for run in range(10)]
    assert styles[10] == (0, "--") and plot.line_style(40, 10) == styles[0]
