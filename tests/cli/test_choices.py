"""The command line's choice options offer exactly the values their owners accept.

gradfit.cli.options spells each set itself (importing the owners would slow ``gradfit --help``); these tests
keep the two spellings equal.
"""

from __future__ import annotations

from typing import get_args

from gradfit.cli import options
from gradfit.config.schema import ModelConfig, RuntimeConfig
from gradfit.runs import catalog
from gradfit.sweeps.plan import SweepSection


def test_config_choices_are_the_schemas():
    assert get_args(options.Device) == get_args(RuntimeConfig.model_fields["device"].annotation)
    assert get_args(options.Precision) == get_args(RuntimeConfig.model_fields["precision"].annotation)
    assert get_args(options.TemplateModel) == get_args(ModelConfig.model_fields["kind"].annotation)
    assert get_args(options.SweepMetric) == get_args(SweepSection.model_fields["metric"].annotation)


def test_run_listing_choices_are_the_catalogs():
    assert get_args(options.RunSort) == catalog.SORT_KEYS
    assert get_args(options.RunStatus) == catalog.STATUSES


def test_engine_choices_are_the_engines():
    from gradfit.bench import engine
    from gradfit.gradients import trace

    assert get_args(options.Study) == engine.STUDIES
    assert get_args(options.TraceMode) == trace.MODES
