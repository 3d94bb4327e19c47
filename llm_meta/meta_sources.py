"""Where meta-training's episodes come from: the training tasks (labelled tasks by class role,
families, local files, SMLMT tasks from unlabelled text, NER corpora) mixed into one sampler,
the refusal of any held-out task a training source reads, and the validation and test episodes.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections import Counter
from typing import Any

from tqdm import tqdm

from llm_meta.data.conll import entity_type, sentences_fingerprint
from llm_meta.data.episodes import Episode, EpisodeSampler, MixtureSampler, StagedSampler, whole_split_episode
from llm_meta.data.ner import NerConfig, NerEpisodeSampler, extra_corpora, split_ner
from llm_meta.data.smlmt import SmlmtSampler, corpus_key, load_corpus
from llm_meta.data.tasks import load_task, shares_texts, task_fingerprint
from llm_meta.meta.training import RunLog
from llm_meta.meta_config import Config, EvalConfig, TaskSource
from llm_meta.modeling.words import report_cut

log = logging.getLogger("llm_meta.meta_train")


def training_sampler(cfg: Config, body) -> tuple[Any, dict[str, str]]:
    """The meta-training sampler (staged when there is a way/shot curriculum) and data hashes."""
    e = cfg.episodes
    sampler, hashes = source_sampler(cfg, body, e.n_way, e.k_shot)
    if not e.curriculum:
        return sampler, hashes
    stages = [(0, sampler)]
    for stage in sorted(e.curriculum, key=lambda st: st.from_step):  # episode indices: step × meta_batch
        stages.append((stage.from_step * cfg.outer.meta_batch, source_sampler(cfg, body, stage.n_way, stage.k_shot)[0]))
    return StagedSampler(stages), hashes


def family_labels(cfg: Config) -> list[str]:
    """The class names the labelled meta-training tasks are drawn with (their `meta_train` classes;
    every label of a user's file), sorted: recorded in every saved adapter, so that `llm-meta adapt`
    can tell a task of the family by its labels (`llm_meta.meta.adaptation.in_family`). SMLMT corpora and
    NER sources contribute none (no fixed names). Raises TaskError for a task that cannot be loaded."""
    entries = [] if ner_only(cfg) else [TaskSource(name=t) if isinstance(t, str) else t for t in cfg.tasks]
    return sorted({label for t in entries if t.name
                   for label in load_task(t.name, t.text_column, t.label_column).classes("meta_train")})


def training_sources(cfg: Config) -> dict[str, str]:
    """Every dataset meta-training or selection reads, with where the config names it: labelled
    tasks, each part of every SMLMT corpus, and the validation tasks."""
    used = {}
    for entry in cfg.tasks:
        entry = TaskSource(name=entry) if isinstance(entry, str) else entry
        if entry.name:
            used[entry.name] = "tasks"
        for part in (entry.smlmt or "").split(","):
            if part.strip():
                used.setdefault(part.strip(), "an SMLMT corpus in tasks")
    for part in (cfg.smlmt.data or "").split(","):
        if part.strip():
            used.setdefault(part.strip(), "smlmt.data")
    for task in cfg.validation.tasks:
        used.setdefault(task, "validation.tasks")
    return used


def check_held_out(cfg: Config, held_out: list[str], what: str) -> None:
    """Refuse a held-out task that meta-training or selection would also read (its test texts
    would no longer be unseen).

    Raises:
        ValueError: naming the task and where the config uses it.
    """
    used = training_sources(cfg)
    leaked = [t for t in held_out if t in used]
    if leaked:
        raise ValueError(f"held-out task '{leaked[0]}' ({what}) is also read by meta-training or selection "
                         f"({used[leaked[0]]}): a held-out task must be unseen; remove it from one of them")
    for task in held_out:  # another name for the same texts: tweet_sentiment holds every tweets_* domain
        for other, where in used.items():
            if shares_texts(task, other):
                raise ValueError(f"held-out task '{task}' ({what}) shares its texts with '{other}', which meta-"
                                 f"training or selection reads ({where}): a held-out task must be unseen")


def source_sampler(cfg: Config, body, n_way: int, k_shot: int) -> tuple[Any, dict[str, str]]:
    """The episode sampler over the configured sources, and a hash of each source's data (for provenance).

    `ner.data` without a `{ner: true}` tasks entry: NER episodes only. Labelled tasks alone: the
    plain multi-task sampler (per-task weights if any are given). SMLMT corpora (`{smlmt: ...}`
    entries or `smlmt.data`) and `{ner: true}` make it a weighted mixture in which each source
    draws its own episodes.
    """
    e = dataclasses.replace(cfg.episodes, n_way=n_way, k_shot=k_shot)
    entries = [TaskSource(name=t) if isinstance(t, str) else t for t in cfg.tasks]
    if any(sum(map(bool, (t.name, t.smlmt, t.ner))) != 1 for t in entries):
        raise ValueError("each tasks entry needs exactly one of name (a labelled task), smlmt (a corpus) or "
                         "ner: true (the ner section's task)")
    if cfg.smlmt.data:
        entries.append(TaskSource(smlmt=cfg.smlmt.data, weight=cfg.smlmt.weight))
    if cfg.ner.data and not any(t.ner for t in entries):  # the ner_*.yaml configs: NER alone
        if cfg.smlmt.data:
            raise ValueError("ner.data with smlmt.data: add {ner: true} to tasks to mix NER with other sources")
        entries = [TaskSource(ner=True)]
    unlabelled = any(t.smlmt for t in entries) or (len(entries) > 1 and any(t.ner for t in entries))
    if cfg.algorithm == "transfer" and unlabelled:
        raise ValueError("algorithm transfer trains one head per labelled dataset; SMLMT and mixed NER "
                         "sources have no fixed label set: use a meta-learning algorithm with them")
    sources, hashes = [], {}
    labelled = [t for t in entries if t.name]
    if labelled:
        tasks = [load_task(t.name, t.text_column, t.label_column) for t in labelled]
        explicit = any(t.weight != 1.0 for t in labelled)  # else cfg.episodes.weighting decides
        sampler = EpisodeSampler(tasks, e.n_way, e.k_shot, e.q_query, class_role="meta_train",
                                 weighting=e.weighting, seed=cfg.seed,
                                 task_weights=[t.weight for t in labelled] if explicit else None,
                                 cap_way=e.cap_way)
        sources.append((sampler, sum(sampler.weights) if explicit else len(tasks)))
        hashes.update({t.name: task_fingerprint(t) for t in tasks})
    for c in (t for t in entries if t.smlmt):
        sentences = load_corpus(c.smlmt, cfg.smlmt.text_column, cfg.smlmt.split, cfg.smlmt.class_role)
        sampler = SmlmtSampler.build(sentences, c.smlmt, body.tokenizer, e.n_way, e.k_shot, e.q_query,
                                     seed=cfg.seed, min_sentences=cfg.smlmt.min_sentences)
        sources.append((sampler, c.weight))
        hashes[sampler.name] = corpus_key(sentences)
    for t in (t for t in entries if t.ner):
        if not cfg.ner.data:
            raise ValueError("a {ner: true} tasks entry needs the ner section (ner.data, ner.held_out_types)")
        ner_split, ner_types = split_ner(cfg.ner)
        names = ["O", *ner_types]
        report_cut(body, [s.tokens for s in ner_split["train"]],
                   [[names.index(entity_type(tag)) if entity_type(tag) in names else 0 for tag in s.tags]
                    for s in ner_split["train"]], names, role="train")
        n_way = e.n_way if len(entries) == 1 else min(e.n_way, len(ner_types))  # alone: too many is an error
        sampler = NerEpisodeSampler(ner_split["train"], ner_types, n_way, e.k_shot, e.q_query, seed=cfg.seed,
                                    name=cfg.ner.data)
        sources.append((sampler, t.weight))
        hashes[cfg.ner.data] = sentences_fingerprint([s for part in ner_split.values() for s in part])
        for name, sentences, types in extra_corpora(cfg.ner):  # e.g. the silver corpus: training only
            sources.append((NerEpisodeSampler(sentences, types, min(n_way, len(types)), e.k_shot, e.q_query,
                                              seed=cfg.seed, name=name), t.weight * cfg.ner.extra_weight))
            hashes[name] = sentences_fingerprint(sentences)
    if not sources:
        raise ValueError("no meta-training tasks: set tasks, smlmt.data or ner.data")
    return (sources[0][0] if len(sources) == 1 else MixtureSampler(sources, seed=cfg.seed)), hashes


def ner_only(cfg: Config) -> bool:
    """An NER run (validated and tested on NER episodes), not a mixture that includes NER."""
    return bool(cfg.ner.data) and not any(isinstance(t, TaskSource) and t.ner for t in cfg.tasks)


def log_sources(sampler: Any, episodes: int, run_log: RunLog) -> None:
    """How many of the first `episodes` meta-training episodes each source supplied."""
    counts = dict(sorted(Counter(sampler.source_of(i) for i in range(episodes)).items()))
    run_log.write("sources", episodes=episodes, counts=counts)
    if len(counts) > 1:
        tqdm.write(f"episodes per source so far: {', '.join(f'{k} {v}' for k, v in counts.items())}", file=sys.stderr)


def file_columns(cfg: Config) -> dict[str, tuple[str, str]]:
    """(text column, label column) of each labelled task in `cfg.tasks` that names them: a
    validation or test task reading the same file reads it with the same columns."""
    return {t.name: (t.text_column, t.label_column) for t in cfg.tasks if isinstance(t, TaskSource) and t.name}


def eval_episodes(ec: EvalConfig, ner: NerConfig | None = None, role: str = "validation",
                  columns: dict[str, tuple[str, str]] | None = None) -> list[Episode]:
    """Fixed evaluation episodes: `ec.episodes` per task, the same for every start and every run.

    With `ner.data` set: NER episodes over the meta-training types on validation sentences
    (role "validation"), or over the held-out types on their sentences (role "test").
    """
    if ner is not None and ner.data:
        split, train_types = split_ner(ner)
        types = train_types if role == "validation" else sorted(ner.held_out_types)
        sampler = NerEpisodeSampler(split[role], types, min(ec.n_way, len(types)), ec.k_shot, ec.q_query,
                                    seed=ec.seed, name=f"{ner.data}-{role}")
        return sampler.episodes(ec.episodes)
    episodes = []
    for task in (load_task(name, *(columns or {}).get(name, ("text", "label"))) for name in ec.tasks):
        if ec.q_query == 0:
            episodes += [whole_split_episode(task, ec.k_shot, "train", ec.split, seed=ec.seed * 1000 + i)
                         for i in range(ec.episodes)]
            continue
        n_way = min(ec.n_way, len(task.classes(ec.class_role)))  # tweet sentiment has 3 classes
        sampler = EpisodeSampler([task], n_way, ec.k_shot, ec.q_query, split=ec.split, class_role=ec.class_role,
                                 seed=ec.seed)
        episodes += sampler.episodes(ec.episodes)
    return episodes
