"""Scoring episodes and summarising scores honestly: mean ± 95% CI and paired differences."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from llm_meta.data.episodes import Episode
from llm_meta.meta.adaptation import episode_outcomes  # noqa: F401 (importable from here too)
from llm_meta.meta.core import InnerConfig
from llm_meta.modeling.body import Body, Params
from llm_meta.progress import progress_bar


@dataclass
class Interval:
    """A mean with the half-width of its 95% confidence interval (Student t over n values)."""

    mean: float
    half_width: float
    n: int

    def __str__(self) -> str:
        if math.isinf(self.half_width):  # one value: no interval to give (not "± inf")
            return f"{100 * self.mean:.1f} (one value, no interval)"
        if self.half_width > 1:  # wider than any score's whole range (2 values: t = 12.7), so it says nothing
            return f"{100 * self.mean:.1f} ({self.n} values, too few for a useful interval)"
        return f"{100 * self.mean:.1f} ± {100 * self.half_width:.1f}"


def mean_ci(values: list[float], confidence: float = 0.95) -> Interval:
    """Mean and t-based confidence half-width; a single value has an infinite interval."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, math.inf, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n), n)


def paired_difference(a: list[float], b: list[float]) -> Interval:
    """CI of mean(a - b) over paired scores (the same episodes for both methods)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b)])


def score_episodes(body: Body, params: Params, episodes: list[Episode], cfg: InnerConfig,
                   desc: str = "episodes", progress: bool = True) -> list[float]:
    """Query accuracy (entity F1 for NER) of each episode after adapting `params` on its support set.

    The inner-loop seed is the episode's position, so every start sees the same mini-batches.
    """
    bar = progress_bar(episodes, desc=desc, enabled=progress, leave=False)
    return [episode_score(episode_outcomes(body, params, ep, cfg, seed=i)) for i, ep in enumerate(bar)]


def episode_entity_f1(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> float:
    """Entity F1 on an NER episode's query sentences after adapting on its support sentences
    (micro over the sentences, as seqeval computes it; `tests/test_evaluation.py` checks the two agree).

    Words the tokenizer cut (past max_length) count as predicted O, so they cost recall.
    """
    return episode_score(episode_outcomes(body, params, episode, cfg, seed))


def score_outcomes(body: Body, params: Params, episodes: list[Episode], cfg: InnerConfig) -> list[np.ndarray]:
    """`episode_outcomes` of every episode, with the inner-loop seed of `score_episodes` (the
    episode's position), so the per-episode scores are exactly the same."""
    return [episode_outcomes(body, params, ep, cfg, seed=i) for i, ep in enumerate(episodes)]


def episode_score(outcomes: np.ndarray) -> float:
    """An episode's accuracy ([Q, 1] rows) or entity F1 ([Q, 3] rows) from its per-query outcomes."""
    if outcomes.shape[1] == 1:
        return float(outcomes.mean()) if len(outcomes) else 0.0
    tp, fp, fn = outcomes.sum(0)
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0
