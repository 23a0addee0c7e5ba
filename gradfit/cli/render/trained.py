"""Tables of ``gradfit eval`` (metrics, per class, confusion matrix) and ``gradfit inference`` (the fit and its
coefficients)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import JustifyMethod
from rich.markup import escape
from rich.table import Table

from gradfit.cli.render.common import fmt, titled_table

if TYPE_CHECKING:
    from gradfit.trained.wald import Inference


def eval_tables(metrics: dict, source: str) -> list[Table]:
    """Overview, per-class precision/recall/F1, and the confusion matrix (rows: true, columns: predicted); for a
    numeric target one table of RMSE, MAE and R^2."""
    if metrics.get("weighted_by"):
        source = f"{source}, every row weighted by its '{metrics['weighted_by']}'"
    if "rmse" in metrics:
        return [_regression_table(metrics, source)]
    overview = titled_table(f"Evaluation on {escape(source)}", show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column(justify="right")
    for key, value in (
        ("rows", f"{metrics['rows']:,}"),
        ("log loss", fmt(metrics["log_loss"], 5)),
        ("accuracy", fmt(metrics["accuracy"], 5)),
        ("ROC AUC", fmt(metrics["roc_auc"], 5)),
        ("macro precision", fmt(metrics["precision_macro"], 5)),
        ("macro recall", fmt(metrics["recall_macro"], 5)),
        ("macro F1", fmt(metrics["f1_macro"], 5)),
    ):
        if not (key == "ROC AUC" and metrics["roc_auc"] is None and len(metrics["classes"]) > 2):
            overview.add_row(key, value)
    per_class = titled_table("Per class", title_justify="left")
    for name in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(name, justify="left" if name == "class" else "right")
    for row in metrics["per_class"]:
        per_class.add_row(
            escape(str(row["class"])), fmt(row["precision"]), fmt(row["recall"]), fmt(row["f1"]), _count(row["support"])
        )
    confusion = titled_table("Confusion matrix (rows: true class, columns: predicted)", title_justify="left")
    confusion.add_column("true \\ predicted", style="bold")
    for c in metrics["classes"]:
        confusion.add_column(escape(str(c)), justify="right")
    for c, counts in zip(metrics["classes"], metrics["confusion_matrix"]):
        confusion.add_row(escape(str(c)), *(_count(v) for v in counts))
    return [overview, per_class, confusion]


def _count(value: float) -> str:
    """A row count, or a sum of row weights."""
    return f"{value:,}" if isinstance(value, int) else fmt(value, 6)


def _regression_table(metrics: dict, source: str) -> Table:
    table = titled_table(f"Evaluation on {escape(source)}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in (
        ("rows", f"{metrics['rows']:,}"),
        ("RMSE", fmt(metrics["rmse"], 6)),
        ("MAE", fmt(metrics["mae"], 6)),
        ("R^2", fmt(metrics["r2"], 6)),
        ("mean target", fmt(metrics["target_mean"], 6)),
    ):
        table.add_row(key, value)
    return table


def inference_tables(result: Inference, positive: Any, negative: Any, target: str | None = None) -> list[Table]:
    """The fit's summary and the coefficient table of an inference result: a logistic regression's, or with
    ``target`` (the numeric target's name) a linear regression's, whose statistic is t."""
    return [_fit_table(result, positive, negative, target), _coefficient_table(result, "z" if target is None else "t")]


def _fit_table(result: Inference, positive: Any, negative: Any, target: str | None) -> Table:
    if target is not None:
        title = f"Linear regression ({'ridge' if result.l2 else 'least squares'}) of {escape(target)}"
    else:
        title = (
            f"{'Multinomial logistic' if positive == 'each class' else 'Logistic'} regression: log-odds of "
            f"{escape(str(positive))} vs {escape(str(negative))}"
        )
    fit = titled_table(title, show_header=False, title_justify="left")
    fit.add_column(style="bold")
    fit.add_column()
    converged = {None: "unknown (standard errors withheld)", True: "yes", False: "no"}[result.converged]
    if not result.standardized_features:
        scale = "raw feature units (the run did not standardize its features)"
    elif result.scale == "original":
        scale = "original feature units"
    else:
        scale = "per standard deviation of each feature (standardized)"
    separation = (
        "none"
        if result.separation is None
        else {"not checked": "not checked (see the notes)"}.get(result.separation, result.separation)
    )
    for key, value in (
        ("observations", f"{result.n_obs:,} (the training split)"),
        ("log-likelihood", fmt(result.log_likelihood, 8)),
        ("AIC", fmt(result.aic, 8)),
        ("BIC", fmt(result.bic, 8)),
        ("parameters", f"{result.effective_parameters:.4g}" + (" effective" if result.l2 else "")),
        ("penalty", f"L2 = {result.l2:g}" if result.l2 else "none (maximum likelihood)"),
        *([] if target is not None else [("separation", separation)]),
        (
            "converged",
            f"{converged}; gradient norm {fmt(result.gradient_norm, 3)}, Newton step "
            f"{fmt(result.newton_offset, 3)} standard errors",
        ),
        ("Hessian condition number", f"{fmt(result.condition_number, 3)} (scaled to unit diagonal)"),
        ("coefficient scale", scale),
    ):
        fit.add_row(key, escape(value))
    return fit


def _coefficient_table(result: Inference, statistic: str) -> Table:
    level = f"{result.level:.0%}"
    table = titled_table("Coefficients", title_justify="left")
    for name in ("", "estimate", "std err", statistic, f"P>|{statistic}|", f"{level} CI low", f"{level} CI high"):
        justify: JustifyMethod = "left" if not name else "right"
        table.add_column(name, justify=justify)
    for c in result.coefficients:
        table.add_row(
            escape(c.name),
            fmt(c.estimate, 5),
            fmt(c.std_error, 4),
            fmt(c.z, 4),
            _p_value(c.p_value),
            fmt(c.ci_low, 5),
            fmt(c.ci_high, 5),
        )
    return table


def _p_value(p: float | None) -> str:
    if p is None:
        return "-"
    return "<1e-16" if p < 1e-16 else f"{p:.3g}"
