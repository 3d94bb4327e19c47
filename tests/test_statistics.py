"""The crossed bootstrap and Holm's adjustment on data whose answer is known."""

import numpy as np
import pytest

from llm_meta.eval.statistics import Outcomes, crossed_bootstrap, holm, replicates_for, text_index, verdict


def test_holm_on_a_hand_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([0.9, 0.8]) == [1.0, 1.0]


def test_enough_replicates_that_holm_over_many_comparisons_can_say_win():
    """A bootstrap p-value is at least 2 / (B + 1): with 2000 replicates and 111 comparisons the
    smallest Holm-adjusted p-value is 0.111, so no verdict could ever be a win (a family-study
    report found exactly that floor). replicates_for(m) lifts the floor well below 5%."""
    rng = np.random.default_rng(0)
    ids, n = text_index([[f"t{i}" for i in range(40)] for _ in range(5)])
    worse = Outcomes([[(rng.random((40, 1)) < 0.4).astype(float) for _ in range(5)]], ids, n)
    better = Outcomes([[np.ones((40, 1)) for _ in range(5)]], ids, n)  # right on every query: p at its floor
    m = 111
    few = crossed_bootstrap(better, worse, n_boot=2000)
    assert holm([few.p] + [1.0] * (m - 1))[0] > 0.05  # the floor: a certain win reads "tie"
    b = replicates_for(m)
    assert 2 * m / (b + 1) <= 0.05 / 4 < 2 * m / b
    enough = crossed_bootstrap(better, worse, n_boot=b)
    assert verdict(enough, holm([enough.p] + [1.0] * (m - 1))[0]) == "win"


def test_point_estimates_are_the_plain_means_and_micro_f1():
    ids, n = text_index([["a", "b"], ["b", "c", "c"]])
    assert [i.tolist() for i in ids] == [[0, 1], [1, 2, 2]] and n == 3
    acc = Outcomes([[np.array([[1.0], [0.0]]), np.array([[1.0], [1.0], [0.0]])]], ids, n)
    assert crossed_bootstrap(acc, n_boot=50).mean == pytest.approx((0.5 + 2 / 3) / 2)
    # entity counts (tp, fp, fn) per query sentence
    ner = Outcomes([[np.array([[1, 0, 1], [0, 1, 0]], float), np.array([[2, 0, 0], [0, 0, 1], [1, 1, 0]], float)]],
                   ids, n)
    tp, fp, fn = 4, 2, 2
    assert crossed_bootstrap(ner, statistic="micro_f1", n_boot=50).mean == pytest.approx(2 * tp / (2 * tp + fp + fn))
    f1s = [2 * 1 / (2 + 1 + 1), 2 * 3 / (6 + 1 + 1)]
    assert crossed_bootstrap(ner, statistic="episode_f1", n_boot=50).mean == pytest.approx(sum(f1s) / 2)


def test_a_start_against_itself_differs_by_exactly_zero_and_a_better_one_wins():
    rng = np.random.default_rng(0)
    ids, n = text_index([[f"t{rng.integers(40)}" for _ in range(10)] for _ in range(30)])
    worse = Outcomes([[(rng.random((10, 1)) < 0.6).astype(float) for _ in range(30)] for _ in range(2)], ids, n)
    better = Outcomes([[np.minimum(v + (rng.random(v.shape) < 0.5), 1.0) for v in seed] for seed in worse.values], ids, n)
    same = crossed_bootstrap(worse, worse, n_boot=200)
    assert same.mean == 0 and same.low <= 0 <= same.high
    diff = crossed_bootstrap(better, worse, n_boot=500)
    assert diff.low > 0 and diff.p < 0.01 and verdict(diff, diff.p) == "win"


def _simulate(rng, seeds=3, episodes=40, queries=10, pool=80, sd_seed=0.03, sd_episode=0.05, sd_text=0.15, noise=0.1):
    """Scores = mu + seed + episode + text effects + noise, on a pool of texts reused across episodes;
    the truth (mu) is the mean over the populations of seeds, episodes and texts."""
    seed_fx, ep_fx, text_fx = (rng.normal(0, s, size) for s, size in
                               ((sd_seed, seeds), (sd_episode, episodes), (sd_text, pool)))
    picks = [rng.choice(pool, queries, replace=False) for _ in range(episodes)]
    values = [[(0.7 + seed_fx[s] + ep_fx[e] + text_fx[picks[e]] + rng.normal(0, noise, queries))[:, None]
               for e in range(episodes)] for s in range(seeds)]
    return Outcomes(values, picks, pool)


def test_the_interval_covers_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    covered = [(e.low <= 0.7 <= e.high) for e in (crossed_bootstrap(_simulate(rng), n_boot=400, seed=i)
                                                  for i in range(150))]
    assert 0.88 <= np.mean(covered) <= 1.0, np.mean(covered)


def test_an_interval_over_episodes_alone_undercovers_when_texts_recur():
    """Why the text level matters: a t-interval over per-episode means ignores that the episodes
    share one small pool of texts, and misses the truth far more often than 5% of the time."""
    from llm_meta.eval.evaluation import mean_ci

    rng = np.random.default_rng(2)
    hits = []
    for _ in range(150):
        sim = _simulate(rng, seeds=1, sd_seed=0.0, pool=40)
        ci = mean_ci([float(v.mean()) for v in sim.values[0]])
        hits.append(ci.mean - ci.half_width <= 0.7 <= ci.mean + ci.half_width)
    assert np.mean(hits) < 0.85


def test_the_mean_over_tasks_is_the_mean_of_their_statistics_with_meta_seeds_shared():
    from llm_meta.eval.statistics import crossed_bootstrap_mean

    rng = np.random.default_rng(0)
    tasks = []
    for size in (20, 35):  # two tasks of different sizes: each weighs the same in the mean
        ids, n = text_index([[f"t{rng.integers(size)}" for _ in range(8)] for _ in range(5)])
        base = [[(rng.random((8, 1)) < 0.5).astype(float) for _ in range(5)] for _ in range(3)]
        tasks.append((Outcomes(base, ids, n), Outcomes([[np.zeros((8, 1)) for _ in range(5)]] * 2, ids, n)))
    one = [crossed_bootstrap(o, r, n_boot=300) for o, r in tasks]
    both = crossed_bootstrap_mean(tasks, n_boot=300)
    assert both.mean == pytest.approx((one[0].mean + one[1].mean) / 2) and both.low < both.mean < both.high
    assert crossed_bootstrap_mean(tasks[:1], n_boot=300) == one[0]  # one task: crossed_bootstrap, draw for draw
    fewer = (Outcomes(tasks[1][0].values[:2], tasks[1][0].text_ids, tasks[1][0].n_texts), tasks[1][1])
    with pytest.raises(ValueError, match="same meta-seeds"):  # a side's seed s is one start on every task
        crossed_bootstrap_mean([tasks[0], fewer])
