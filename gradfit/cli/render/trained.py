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
    """Overview, per-class precision/recall/F1, and the confusion matrix (rows: true, columns: predicted)."""
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
            escape(str(row["class"])), fmt(row["precision"]), fmt(row["recall"]), fmt(row["f1"]), f"{row['support']:,}"
        )
    confusion = titled_table("Confusion matrix (rows: true class, columns: predicted)", title_justify="left")
    confusion.add_column("true \\ predicted", style="bold")
    for c in metrics["classes"]:
        confusion.add_column(escape(str(c)), justify="right")
    for c, counts in zip(metrics["classes"], metrics["confusion_matrix"]):
        confusion.add_row(escape(str(c)), *(f"{v:,}" for v in counts))
    return [overview, per_class, confusion]


def inference_tables(result: Inference, positive: Any, negative: Any) -> list[Table]:
    """The fit's summary and the coefficient table of a logistic-regression inference result."""
    return [_fit_table(result, positive, negative), _coefficient_table(result)]


def _fit_table(result: Inference, positive: Any, negative: Any) -> Table:
    fit = titled_table(
        f"{'Multinomial logistic' if positive == 'each class' else 'Logistic'} regression: log-odds of "
        f"{escape(str(positive))} vs {escape(str(negative))}",
        show_header=False,
        title_justify="left",
    )
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
        ("separation", separation),
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


def _coefficient_table(result: Inference) -> Table:
    level = f"{result.level:.0%}"
    table = titled_table("Coefficients", title_justify="left")
    for name in ("", "estimate", "std err", "z", "P>|z|", f"{level} CI low", f"{level} CI high"):
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
