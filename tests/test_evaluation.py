import math

import pytest

from llm_meta.eval.evaluation import mean_ci, paired_difference


def test_mean_ci_on_known_numbers():
    # mean 3, sample sd sqrt(2.5), t(0.975, 4) = 2.7764: half-width 2.7764 * 1.5811 / sqrt(5) = 1.9632
    ci = mean_ci([1, 2, 3, 4, 5])
    assert ci.mean == 3 and ci.n == 5
    assert ci.half_width == pytest.approx(1.9632, abs=1e-4)
    assert mean_ci([0.5] * 10).half_width == 0
    assert math.isinf(mean_ci([0.7]).half_width)
    assert str(mean_ci([0.7])) == "70.0 (one value, no interval)"  # not "70.0 ± inf"
    # two episodes 0.2 and 0.9: t(0.975, 1) = 12.7 gives ± 445 points, wider than any accuracy's range
    assert str(mean_ci([0.2, 0.9])) == "55.0 (2 values, too few for a useful interval)"
    assert str(mean_ci([0.5, 0.6, 0.7])) == "60.0 ± 24.8"


def test_paired_difference():
    d = paired_difference([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])
    assert d.mean == pytest.approx(0.1) and d.half_width == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def test_entity_counts_and_micro_f1_against_hand_counted_spans():
    import numpy as np

    from llm_meta.eval.evaluation import episode_score
    from llm_meta.meta.token_heads import entity_counts
    from llm_meta.eval.metrics import entity_metrics

    pred = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-PER"]]
    ref = [["B-PER", "I-PER", "O", "B-ORG"], ["B-PER", "I-PER"]]
    # sentence 1: PER matches, LOC is spurious, ORG is missed; sentence 2: a PER with the wrong span
    assert entity_counts(pred[0], ref[0]) == (1, 1, 1) and entity_counts(pred[1], ref[1]) == (0, 1, 1)
    counts = np.array([entity_counts(p, r) for p, r in zip(pred, ref)], dtype=float)
    assert episode_score(counts) == pytest.approx(2 * 1 / (2 * 1 + 2 + 2))  # micro: tp 1, fp 2, fn 2
    assert episode_score(counts) == pytest.approx(entity_metrics(pred, ref)["f1"])  # what seqeval says
