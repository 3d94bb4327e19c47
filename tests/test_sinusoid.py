"""The sinusoid check of the algorithm core (Finn et al., 2017), on a budget fit for the default suite."""

import pytest

from llm_meta.config import load_config
from recipes import sinusoid


def test_meta_learning_beats_joint_pretraining_on_new_sine_tasks(capsys):
    # A shortened run of the recipe (the full one and its numbers are in experiments/BENCHMARKS.md). Seeded:
    # the same tasks, the same initial MLP, the same outcome on every run.
    cfg = load_config(sinusoid.Config, None, ["meta_steps=500", "test_tasks=100",
                                               "methods=[maml, fomaml, metasgd, reptile, joint]"])
    table = sinusoid.main(cfg)
    joint = table["joint"]["mse"]["mean"]
    for method in ("maml", "fomaml", "metasgd", "reptile"):
        diff = table[method]["vs_joint"]
        assert diff["mean"] + diff["half_width"] < 0, f"{method} is not clearly better than joint pretraining"
        assert table[method]["mse"]["mean"] < 0.9 * joint
    printed = capsys.readouterr().out
    assert "| maml |" in printed and "| joint |" in printed


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown sinusoid method"):
        sinusoid.main(load_config(sinusoid.Config, None, ["methods=[mamll]"]))
