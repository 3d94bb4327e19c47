"""The quality suite's table (benchmarks/quality.py, quoted in docs/quality-suite.md) was
made with a recorded `adapt` configuration: a later change of a default must rerun the suite, not
quietly move away from the numbers the docs quote."""

import json
from pathlib import Path

import pytest

from llm_meta.classifier import AdaptConfig
from llm_meta.config import to_dict
from llm_meta.tagger import TaggerConfig

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "quality.json"


@pytest.mark.parametrize("key, config", [("default", AdaptConfig), ("ner_default", TaggerConfig)])
def test_the_default_adapt_config_is_the_one_the_quality_table_was_made_with(key, config):
    recorded = json.loads(RESULTS.read_text(encoding="utf-8"))["configs"][key]
    assert recorded == json.loads(json.dumps(to_dict(config()))), (
        f"{config.__name__}'s defaults changed since the quality suite ran: rerun "
        "`python benchmarks/quality.py` (see docs/quality-suite.md) and commit its JSON and table")
