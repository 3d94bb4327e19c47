"""Intervals on the right unit: a crossed (pigeonhole) bootstrap over meta-seeds, episodes and test
texts, and Holm's step-down adjustment for the many verdicts of one report.

Why not a t-interval over episodes: episodes are drawn from small pools, so the same test texts
recur in dozens of episodes (MCID's test split has 331 texts), and a start's meta-seed is a
source of variance of its own. Meta-seeds, episodes (or full-way support draws) and test texts are
*crossed* factors here: every meta-seed is scored on every episode, and a text can sit in many
episodes. No exact bootstrap exists for crossed designs (McCullagh 2000); Owen's pigeonhole
bootstrap (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat.) resamples each factor
independently with replacement and is mildly conservative, which is the safe side for a claim
that meta-learning wins.

Data layout (`Outcomes`): for one start and one episode set, `values[s][e]` is a [Q_e, m] array of
per-query outcomes of meta-seed s on episode e — m = 1 (1.0 correct / 0.0 wrong) for accuracy,
m = 3 (true positives, false positives, false negatives) for entity F1 — and `text_ids[e]` names
the query texts of episode e (a recurring text has one id everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATISTICS = ("accuracy", "episode_f1", "micro_f1")
UNIT = ("95% percentile interval of a crossed (pigeonhole) bootstrap that resamples meta-seeds, "
        "episodes (support draws for full-way rows) and test texts independently (Owen 2007)")


@dataclass
class Outcomes:
    """Per-query outcomes of one start on one episode set (see the module doc for the layout)."""

    values: list[list[np.ndarray]]  # [meta-seed][episode] -> [Q_e, m]
    text_ids: list[np.ndarray]  # [episode] -> [Q_e] integer ids of the query texts
    n_texts: int


@dataclass
class Estimate:
    """A point estimate with a bootstrap interval [low, high]; `p` is the two-sided bootstrap
    p-value of "the true value is 0" (meaningful for differences)."""

    mean: float
    low: float
    high: float
    p: float = 1.0

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"

    @property
    def half_width(self) -> float:
        return max(self.mean - self.low, self.high - self.mean)


def text_index(episode_texts: list[list]) -> tuple[list[np.ndarray], int]:
    """Integer ids for the query texts of every episode (equal texts share an id), and how many."""
    ids: dict[str, int] = {}
    out = []
    for texts in episode_texts:
        out.append(np.array([ids.setdefault(t if isinstance(t, str) else "\x1f".join(t), len(ids)) for t in texts],
                            dtype=np.int64))
    return out, len(ids)


def _sums(outcomes: Outcomes) -> tuple[np.ndarray, np.ndarray]:
    """(K [S, m, E, T], N [E, T]): outcome sums and query counts per (episode, text)."""
    seeds, episodes = len(outcomes.values), len(outcomes.text_ids)
    m = outcomes.values[0][0].shape[1]
    sums = np.zeros((seeds, m, episodes, outcomes.n_texts))
    counts = np.zeros((episodes, outcomes.n_texts))
    for e, ids in enumerate(outcomes.text_ids):
        np.add.at(counts[e], ids, 1.0)
        for s in range(seeds):
            for c in range(m):
                np.add.at(sums[s, c, e], ids, outcomes.values[s][e][:, c])
    return sums, counts


def _statistic(sums: np.ndarray, counts: np.ndarray, w_seed: np.ndarray, w_episode: np.ndarray,
               w_text: np.ndarray, statistic: str) -> np.ndarray:
    """The statistic under B sets of resampling weights: w_seed [B, S], w_episode [B, E], w_text [B, T] -> [B]."""
    per = np.einsum("bt,scet->bsce", w_text, sums)  # [B, S, m, E]: weighted outcome sums per episode
    n = w_text @ counts.T  # [B, E]: weighted query count per episode
    if statistic == "accuracy":  # mean over episodes of the episode's query accuracy
        score = np.divide(per[:, :, 0], n[:, None], out=np.zeros_like(per[:, :, 0]), where=n[:, None] > 0)
    elif statistic == "episode_f1":  # mean over episodes of the episode's entity F1
        tp, fp, fn = per[:, :, 0], per[:, :, 1], per[:, :, 2]
        score = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    elif statistic == "micro_f1":  # Few-NERD: counts summed over every query of every episode, per meta-seed
        totals = np.einsum("be,bsce->bsc", w_episode, per)
        tp, fp, fn = totals[..., 0], totals[..., 1], totals[..., 2]
        f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
        return (w_seed * f1).sum(1) / w_seed.sum(1)
    else:
        raise ValueError(f"unknown statistic {statistic!r} (valid: {', '.join(STATISTICS)})")
    weight = w_episode * (n > 0)  # an episode whose resampled texts all drew weight 0 drops out
    per_seed = (score * weight[:, None]).sum(2) / np.maximum(weight.sum(1), 1e-12)[:, None]
    return (w_seed * per_seed).sum(1) / w_seed.sum(1)


def _draws(rng: np.random.Generator, n_boot: int, size: int) -> np.ndarray:
    """Bootstrap multiplicities [n_boot, size]: how often each unit is drawn when drawing `size` with replacement."""
    return rng.multinomial(size, np.full(size, 1.0 / size), size=n_boot).astype(float)


def crossed_bootstrap(outcomes: Outcomes, reference: Outcomes | None = None, statistic: str = "accuracy",
                      n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """The statistic of `outcomes` (or its difference from `reference` on the same episodes) with a
    crossed-bootstrap percentile interval.

    Episodes and texts are resampled once per replicate and shared by both sides of a difference
    (a paired design: the same queries); meta-seeds are resampled separately for each side, since
    two starts' seed s are unrelated training runs. A side with one meta-seed (a start that does
    not train) contributes no seed variance.

    Raises:
        ValueError: the two sides do not have the same episodes, or an unknown statistic.
    """
    return crossed_bootstrap_mean([(outcomes, reference)], statistic, n_boot, confidence, seed)


def crossed_bootstrap_mean(tasks: list[tuple[Outcomes, Outcomes | None]], statistic: str = "accuracy",
                           n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """`crossed_bootstrap` of the unweighted mean over tasks: each pair is one task's outcomes and
    its reference (None: the statistic itself). Episodes and texts are resampled per task; a side's
    meta-seeds once for every task, since its seed s is one trained start scored on all of them
    (each task must have the same meta-seeds on a side). One task: `crossed_bootstrap`, draw for draw.

    Raises:
        ValueError: a pair without the same episodes on both sides, tasks with different meta-seed
            counts on a side, or an unknown statistic.
    """
    for outcomes, reference in tasks:
        if reference is not None and [len(i) for i in reference.text_ids] != [len(i) for i in outcomes.text_ids]:
            raise ValueError("a paired difference needs the same episodes and queries on both sides")
    paired = tasks[0][1] is not None
    if len({len(o.values) for o, _ in tasks}) > 1 or (paired and len({len(r.values) for _, r in tasks}) > 1):
        raise ValueError("every task needs the same meta-seeds on a side")
    rng = np.random.default_rng(seed)
    sums = [(_sums(o), _sums(r)[0] if r is not None else None) for o, r in tasks]
    units = [(_draws(rng, n_boot, c.shape[0]), _draws(rng, n_boot, c.shape[1])) for (_, c), _ in sums]
    w_seed = _draws(rng, n_boot, sums[0][0][0].shape[0])
    w_ref = _draws(rng, n_boot, sums[0][1].shape[0]) if paired else None
    point, boot = 0.0, np.zeros(n_boot)
    for ((s, counts), ref), (w_episode, w_text) in zip(sums, units):
        ones = (np.ones((1, counts.shape[0])), np.ones((1, counts.shape[1])))
        point += _statistic(s, counts, np.ones((1, s.shape[0])), *ones, statistic)[0]
        boot += _statistic(s, counts, w_seed, w_episode, w_text, statistic)
        if ref is not None:
            point -= _statistic(ref, counts, np.ones((1, ref.shape[0])), *ones, statistic)[0]
            boot -= _statistic(ref, counts, w_ref, w_episode, w_text, statistic)
    point, boot = point / len(tasks), boot / len(tasks)
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    # Two-sided bootstrap p-value of 0, with the +1 that keeps it above 0 for a finite number of replicates.
    p = min(1.0, 2 * min((np.sum(boot <= 0) + 1) / (n_boot + 1), (np.sum(boot >= 0) + 1) / (n_boot + 1)))
    return Estimate(float(point), float(low), float(high), float(p))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order: the i-th smallest of m
    p-values is multiplied by (m - i + 1), then made monotone; a verdict at level α holds when its
    adjusted p-value is below α, controlling the family-wise error rate."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def replicates_for(comparisons: int, alpha: float = 0.05, margin: int = 4) -> int:
    """Bootstrap replicates B that let `comparisons` Holm-adjusted verdicts reach level `alpha`.

    A bootstrap p-value cannot be smaller than 2 / (B + 1), so after Holm the smallest adjusted
    p-value is at least 2m / (B + 1): with B = 2000 and m = 111 comparisons that floor is 0.111 and
    no verdict can ever be a win. This returns the smallest B whose floor is `margin` times below
    `alpha` (B + 1 >= 2 m margin / alpha), so a clear difference shows as one.
    """
    return max(1, int(np.ceil(2 * comparisons * margin / alpha)) - 1)


def verdict(estimate: Estimate, p_adjusted: float, alpha: float = 0.05) -> str:
    """win / loss when the (adjusted) p-value is below α, else tie."""
    if p_adjusted >= alpha:
        return "tie"
    return "win" if estimate.mean > 0 else "loss"
