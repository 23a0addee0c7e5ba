"""The README stays true: every config key documented, the set-up commands match CI."""

from __future__ import annotations

import re

from conftest import ROOT
from gradfit.config.load import describe_keys

README = (ROOT / "README.md").read_text(encoding="utf-8")

TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -q'


def test_reference_table_lists_exactly_the_schema_keys():
    reference = README.split("### Reference", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_.0-9]+)` \|", reference, flags=re.MULTILINE))
    schema = {".".join(info.key) for info in describe_keys()}
    assert schema - documented == set(), "keys missing from the README reference"
    assert documented - schema == set(), "README documents keys that do not exist"


def test_setup_commands_and_ci_agree():
    assert "pip install -e . && gradfit train configs/logreg.yaml" in README
    assert TEST_COMMAND in README
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
