"""The ``data`` section of a config: where the rows come from, which columns are features, how categories and
missing cells become numbers, and how the rows are split. No jax and no file handling here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gradfit.config.choices import Missing, ReferenceCategory, Source, UnknownCategory
from gradfit.config.section import KeyProblem, Section, Size


class SyntheticConfig(Section):
    n_samples: Size = Field(10_000, ge=2, description="number of rows generated")
    n_features: Size = Field(20, ge=1, description="number of features")
    n_classes: Size = Field(2, ge=2, description="number of classes")
    separation: float = Field(2.0, ge=0, description="scale of the true weights: larger means easier to classify")
    noise: float = Field(
        1.0, ge=0, description="label noise: 1 samples labels from the logistic model, 0 makes them deterministic"
    )


class DataConfig(Section):
    source: Source = Field(
        "breast_cancer",
        description="built-in dataset, 'synthetic', 'file' (then set data.path), or 'memory': rows handed over in "
        "Python (gradfit.fit(config, X=..., y=...), the gradfit.sklearn estimators), which set it themselves",
    )
    path: str | None = Field(
        None,
        description="CSV (with a header), Parquet (.parquet), Arrow IPC / Feather (.arrow, .feather), .npz (arrays X, "
        "y) or a folder made by 'gradfit data convert'; relative to the config file",
    )
    target: str = Field(
        "target", description="name of the label column in a CSV, Parquet or Feather file (or in X, from Python)"
    )
    features: list[str] | None = Field(
        None, description="the feature columns, in order (null: every column but the target and data.drop)"
    )
    drop: list[str] = Field([], description="columns to ignore, such as ids")
    weight: str | None = Field(
        None,
        description="a column of sample weights (numbers >= 0), not a feature: the objective becomes "
        "mean(weight * loss), scikit-learn's sample_weight (null: every row weighs 1)",
    )
    categorical: Literal["auto"] | list[str] = Field(
        [],
        description="columns one-hot encoded with the training split's categories; auto: every column whose "
        "cells are not numbers",
    )
    max_categories: Size = Field(
        100, ge=2, description="refuse a categorical column with more categories in the training split (an id?)"
    )
    unknown_category: UnknownCategory = Field(
        "error", description="a category the training split did not hold: an error, or encoded as all zeros"
    )
    reference_category: ReferenceCategory = Field(
        "none",
        description="first: no column for each categorical column's first category, so that its coefficients "
        "are relative to it (what a coefficient table without an L2 penalty needs)",
    )
    missing: Missing = Field(
        "error",
        description="missing cells (empty or NA): an error, or filled with the training split's mean, median or "
        "most frequent value (categorical columns: the most frequent category)",
    )
    missing_indicator: bool = Field(
        False, description="add a 0/1 feature missing(COLUMN) for each column with missing training cells"
    )
    val_fraction: float = Field(0.2, ge=0, lt=1, description="fraction of rows held out for validation")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="fraction of rows held out for the final test")
    standardize: bool = Field(
        True, description="scale numeric features to mean 0, std 1 with training-split statistics (0/1 encodings stay)"
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description="seed of the split and of synthetic rows (null: the top-level seed); "
        "a sweep over seeds sets it, so that every member sees the same split",
    )
    synthetic: SyntheticConfig = Field(
        default_factory=SyntheticConfig, description="generator settings (source: synthetic)"
    )
    in_memory: Literal["auto"] | bool = Field(
        "auto",
        description="hold the data in memory (true), stream row blocks from disk (false: a folder made by "
        "'gradfit data convert', or synthetic), or stream when the training split would fill over half the device "
        "memory or a quarter of host RAM (auto)",
    )

    APPLIES_TO = {
        "path": {"file"},
        "target": {"file", "memory"},
        "synthetic": {"synthetic"},
        **{
            key: {"file", "memory", "breast_cancer", "digits", "diabetes"}
            for key in ("features", "drop", "categorical", "weight")
        },
    }
    SELECTOR = "source"

    @field_validator("in_memory", mode="plain")
    @classmethod
    def _auto_or_boolean(cls, value: Any):
        if value == "auto" or isinstance(value, bool):
            return value
        raise ValueError("expected auto, true or false")

    @field_validator("path")
    @classmethod
    def _no_nul(cls, value: str | None):
        if value is not None and "\0" in value:
            raise ValueError("a file path cannot contain a NUL character")
        return value

    @field_validator("features", "drop")
    @classmethod
    def _distinct(cls, value: list[str] | None):
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"names a column twice: {sorted(n for n in set(value) if value.count(n) > 1)}")
        if value is not None and any(not name.strip() for name in value):
            raise ValueError("a column name cannot be empty")
        return value

    @model_validator(mode="after")
    def _check(self):
        if self.features is not None and not self.features:
            raise KeyProblem(("features",), "names no column; list the feature columns, or null for all")
        if self.weight is not None and (
            self.weight in (self.features or ())
            or self.weight in self.drop
            or self.weight == self.target
            or (isinstance(self.categorical, list) and self.weight in self.categorical)
        ):
            raise KeyProblem(
                ("weight",),
                f"'{self.weight}' is also a feature, dropped, categorical or the target; the weight "
                "column is none of those",
            )
        both = set(self.features or ()) & set(self.drop)
        if both:
            raise KeyProblem(("drop",), f"{sorted(both)} also in data.features; a column is a feature or dropped")
        if isinstance(self.categorical, list) and self.features is not None:
            outside = [n for n in self.categorical if n not in self.features]
            if outside:
                raise KeyProblem(("categorical",), f"{outside} not in data.features; categorical columns are features")
        if self.source == "memory" and self.in_memory is False:
            raise KeyProblem(("in_memory",), "rows handed over in Python are in memory already; leave it auto")
        if self.source == "file" and not self.path:
            raise KeyProblem(("path",), "data.source is 'file' but data.path is not set")
        if self.val_fraction + self.test_fraction >= 1:
            raise KeyProblem(
                ("val_fraction",),
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} leaves no "
                "training rows; keep the sum below 1",
            )
        return self
