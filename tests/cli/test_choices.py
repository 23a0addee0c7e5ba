"""The command line's choice options offer exactly the values their owners accept.

The config's sets live in gradfit.config.choices, which the schema types its keys with; gradfit.cli.options spells
the others itself (importing their owners would slow ``gradfit --help``). These tests keep each pair equal.
"""

from __future__ import annotations

from typing import get_args

from gradfit.cli import options
from gradfit.config import choices
from gradfit.config.schema import ModelConfig, RuntimeConfig
from gradfit.runs import catalog
from gradfit.sweeps.plan import SweepSection


def test_config_choices_are_the_schemas():
    assert get_args(choices.Device) == get_args(RuntimeConfig.model_fields["device"].annotation)
    assert get_args(choices.Precision) == get_args(RuntimeConfig.model_fields["precision"].annotation)
    assert get_args(choices.ModelKind) == get_args(ModelConfig.model_fields["kind"].annotation)
    assert get_args(choices.Metric) == get_args(get_args(SweepSection.model_fields["metric"].annotation)[0])


def test_run_listing_choices_are_the_catalogs():
    assert get_args(options.RunSort) == catalog.SORT_KEYS
    assert get_args(options.RunStatus) == catalog.STATUSES


def test_engine_choices_are_the_engines():
    from gradfit.bench import engine
    from gradfit.gradients import trace

    assert get_args(options.Study) == engine.STUDIES
    assert get_args(options.TraceMode) == trace.MODES
