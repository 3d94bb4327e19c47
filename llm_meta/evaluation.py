"""Scoring episodes and summarising scores honestly: mean ± 95% CI and paired differences."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats
from tqdm import tqdm

from llm_meta.algorithms import InnerConfig, adapt, episode_accuracy
from llm_meta.episodes import Episode
from llm_meta.metrics import entity_metrics
from llm_meta.models import Body, Params
from llm_meta.ner import io_to_bio, is_token_level, tag_words


@dataclass
class Interval:
    """A mean with the half-width of its 95% confidence interval (Student t over n values)."""

    mean: float
    half_width: float
    n: int

    def __str__(self) -> str:
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
    bar = tqdm(episodes, desc=desc, leave=False, disable=not progress or None)
    # NER episodes are scored by entity F1, everything else by query accuracy.
    return [(episode_entity_f1 if is_token_level(ep.query.texts) else episode_accuracy)(body, params, ep, cfg, seed=i)
            for i, ep in enumerate(bar)]


def episode_entity_f1(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> float:
    """Entity F1 on an NER episode's query sentences after adapting on its support sentences.

    Words the tokenizer cut (past max_length) count as predicted O, so they cost recall.
    """
    fast = adapt(body, params, episode.support, episode.n_way, cfg, seed, label_names=episode.label_names)
    predicted = tag_words(body, fast, episode.query.texts, cfg.scale)
    names = episode.label_names
    return entity_metrics([io_to_bio(p, names) for p in predicted],
                          [io_to_bio(r, names) for r in episode.query.labels])["f1"]
