"""The benchmark's evaluation episodes and scores: episodes generated once per (protocol, task, K),
hashed and cached; each method's per-query outcomes on them, scored from its start (or, for
`+select`, the start chosen per episode as `llm-meta adapt` chooses it) and cached under the key of
everything they depend on, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from llm_meta.bench.config import EpisodicConfig, FullwayConfig, NerProtocolConfig
from llm_meta.config import to_dict
from llm_meta.data.episodes import Episode, EpisodeSampler, Examples, whole_split_episode
from llm_meta.data.ner import NerEpisodeSampler, split_ner
from llm_meta.data.tasks import Task
from llm_meta.eval.evaluation import episode_outcomes, score_outcomes
from llm_meta.io.atomic import write_atomic
from llm_meta.meta.adaptation import choose_start, in_family
from llm_meta.meta.core import InnerConfig, interpolate
from llm_meta.modeling.body import Body, Params


def ner_episodes(nc: NerProtocolConfig, k: int) -> list[Episode]:
    split, _ = split_ner(nc.split)
    types = sorted(nc.split.held_out_types)
    sampler = NerEpisodeSampler(split["test"], types, min(nc.n_way, len(types)), k, k, seed=nc.seed,
                                name=Path(nc.split.data).stem)
    return sampler.episodes(nc.episodes)


def episodic_episodes(ec: EpisodicConfig, task: Task, k: int) -> list[Episode]:
    n_way = min(ec.n_way, len(task.label_names))
    return EpisodeSampler([task], n_way, k, ec.q_query, split=ec.split, seed=ec.seed).episodes(ec.episodes)


def fullway_episodes(fc: FullwayConfig, task: Task, k: int) -> list[Episode]:
    """One 'episode' per support seed: K per class from train, every test text as the query."""
    return [whole_split_episode(task, k, "train", "test", seed) for seed in fc.seeds]


def protocol_key(protocol_cfg) -> str:
    """A short hash of what generates a protocol's episodes, minus the lists of tasks and K (each
    (task, K) has its own file): another episode count, seed or way is another cache file."""
    fields = {k: v for k, v in to_dict(protocol_cfg).items() if k not in ("tasks", "shots")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def cached_episodes(out: Path, name: str, spec: str, make: Callable[[], list[Episode]],
                    examples_type: type[Examples] = Examples) -> dict:
    """Episodes from the cache file of this (setting, generating config) if present, else generated
    and written; with their hash. `examples_type`: the examples' type (`WordExamples` for NER episodes)."""
    path = out / "episodes" / f"{name}-{spec}.json"
    try:
        episodes = [Episode(examples_type(**e["support"]), examples_type(**e["query"]), e["label_names"], e["task"])
                    for e in json.loads(path.read_text())]
    except FileNotFoundError:
        episodes = None
    except (ValueError, KeyError, TypeError) as err:  # unreadable: regenerate (same seed, same episodes)
        tqdm.write(f"warning: episode cache {path} is unreadable ({err}); generating it again", file=sys.stderr)
        episodes = None
    if episodes is None:
        episodes = make()
        write_atomic(path, json.dumps([dataclasses.asdict(e) for e in episodes], ensure_ascii=False))
    return {"episodes": episodes, "hash": episodes_hash(episodes)}


def start_candidates(starts: dict, start: str, seed: int, select: bool) -> dict[str, Params]:
    """The start(s) one method adapts from at one meta-seed: its own, or for `+select` the
    candidates `llm-meta adapt` chooses among (the untrained start first: it wins ties)."""
    if not select:
        return {start: starts[(start, seed)]}
    untrained, trained = starts[("untrained", seed)], starts[(start, seed)]
    return {"untrained": untrained, start: trained, f"{start} at α=0.5": interpolate(untrained, trained, 0.5)}


def score_candidates(body: Body, candidates: dict[str, Params], own: str, episodes: list[Episode], inner: InnerConfig,
                     shared: InnerConfig, family: list[str] | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Per-query outcomes of every episode and the start each one adapted from: the only
    candidate (adapted with `inner`), or, as `llm-meta adapt` chooses (`select_start=auto`): the
    method's own start (candidate `own`) adapted with `inner` on an episode whose class names are
    among its `family`'s (`in_family`), else the candidate `choose_start` picks on the episode's
    support set, adapted with `shared`."""
    if len(candidates) == 1:
        return score_outcomes(body, next(iter(candidates.values())), episodes, inner), []
    fam = [in_family(ep.label_names, family) for ep in episodes]
    picks = [own if f else choose_start(body, candidates, ep.support, ep.n_way, shared, ep.label_names)[0]
             for f, ep in zip(fam, episodes)]
    # Recorded apart from a chosen `own`, so that a report tells the label rule from the choice.
    return [episode_outcomes(body, candidates[c], ep, inner if f else shared, seed=i)
            for i, (c, f, ep) in enumerate(zip(picks, fam, episodes))], \
        [family_pick(c) if f else c for c, f in zip(picks, fam)]


def family_pick(own: str) -> str:
    """How a `+select` episode routed to its start by the family's class names is recorded."""
    return f"{own} (family labels)"


def candidate_ids(fingerprints: dict, start: str, seed: int, select: bool) -> list[str]:
    """What identifies `start_candidates(...)` in a score's key, known without the tensors."""
    if not select:
        return [fingerprints[(start, seed)]]
    untrained, trained = fingerprints[("untrained", seed)], fingerprints[(start, seed)]
    return [untrained, trained, f"α=0.5 between {untrained} and {trained}"]


def score_file(out: Path, key: list) -> Path:
    """out/scores/<hash of `key`>: `key` holds everything the outcomes depend on, namely the code,
    the model, the adaptation, the episodes and the fingerprints of the starts' tensors."""
    return out / "scores" / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]}.json"


def read_scores(path: Path) -> tuple[list[np.ndarray], float, list[str]] | None:
    """(per-query outcomes of each episode, seconds, starts chosen) cached at `path`, or None
    when it is absent or unreadable (then it is scored again)."""
    try:
        saved = json.loads(path.read_text())
        return ([np.array(rows, dtype=np.float64) for rows in saved["outcomes"]], float(saved["seconds"]),
                saved.get("chosen", []))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as err:
        tqdm.write(f"warning: score cache {path} is unreadable ({err}); scoring again", file=sys.stderr)
        return None


def load_or_score(path: Path, score: Callable[[], tuple[list[np.ndarray], list[str]]],
                  saved: tuple[list[np.ndarray], float, list[str]] | None
            ) -> tuple[list[np.ndarray], float, bool, list[str]]:
    """(per-query outcomes of each episode, seconds, whether read from the cache, the start each
    episode adapted from when it was chosen) of one method on one episode set: `saved`, what
    `read_scores(path)` read, if anything, else computed and written whole to `path`."""
    if saved is not None:
        return saved[0], saved[1], True, saved[2]
    began = time.perf_counter()
    values, picks = score()
    took = time.perf_counter() - began
    write_atomic(path, json.dumps({"outcomes": [v.tolist() for v in values], "seconds": took, "chosen": picks}))
    return values, took, False, picks


def episodes_hash(episodes: list[Episode]) -> str:
    return hashlib.sha256("".join(e.fingerprint() for e in episodes).encode()).hexdigest()[:16]
