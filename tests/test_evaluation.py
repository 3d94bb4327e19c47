import math

import pytest

from llm_meta.evaluation import mean_ci, paired_difference


def test_mean_ci_on_known_numbers():
    # mean 3, sample sd sqrt(2.5), t(0.975, 4) = 2.7764: half-width 2.7764 * 1.5811 / sqrt(5) = 1.9632
    ci = mean_ci([1, 2, 3, 4, 5])
    assert ci.mean == 3 and ci.n == 5
    assert ci.half_width == pytest.approx(1.9632, abs=1e-4)
    assert mean_ci([0.5] * 10).half_width == 0
    assert math.isinf(mean_ci([0.7]).half_width)


def test_paired_difference():
    d = paired_difference([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])
    assert d.mean == pytest.approx(0.1) and d.half_width == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])
