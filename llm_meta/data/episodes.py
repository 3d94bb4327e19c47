"""N-way K-shot episodes: seeded samplers over one or many tasks.

Episode `i` of a sampler depends only on (seed, i), never on which episodes were drawn before.
That makes resumed runs and multi-process meta-batches see exactly the episodes a single
uninterrupted process would, and lets evaluation episodes be regenerated and hashed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from typing import Any, ClassVar

from llm_meta.data.kinds import SEQUENCE, TOKEN, TaskKind
from llm_meta.data.tasks import Task, TaskError

log = logging.getLogger(__name__)


def label_name_text(name: str) -> str:
    """How a label name is read as text: `card_arrival` -> "card arrival"."""
    return " ".join(name.replace("_", " ").replace("-", " ").split())


@dataclass
class Examples:
    """Texts with integer labels in 0..N-1 (indices into the episode's `label_names`): a sequence
    task, one label per text. `WordExamples` is the token task; code that treats the two
    differently asks their `kind` (`llm_meta.meta.kinds.kind_ops`), never the type of a text."""

    texts: list[str]
    labels: list[int]
    kind: ClassVar[TaskKind] = SEQUENCE

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int] | range) -> Examples:
        """The examples at `idx`, in that order, of the same kind."""
        return type(self)([self.texts[i] for i in idx], [self.labels[i] for i in idx])

    def __add__(self, other: Examples) -> Examples:
        if type(other) is not type(self):
            raise TypeError(f"cannot join {type(self).__name__} and {type(other).__name__}")
        return type(self)(self.texts + other.texts, self.labels + other.labels)

    def relabelled(self, new_ids: list[int]) -> Examples:
        """The same examples with each class id `y` replaced by `new_ids[y]`."""
        return type(self)(self.texts, [new_ids[y] for y in self.labels])

    def with_label_names(self, label_names: list[str], times: int) -> Examples:
        """The examples plus each label name, read as text (`label_name_text`), `times` times,
        labelled with its class.

        Label names carry the task's semantics for free: the project's first prototype measured +4
        points on BANKING77 77-way 5-shot from adding each name twice before adaptation.
        """
        names = [label_name_text(n) for n in label_names]
        return type(self)(self.texts + [n for n in names for _ in range(times)],
                          self.labels + [y for y in range(len(names)) for _ in range(times)])


@dataclass
class WordExamples(Examples):
    """Sentences as word lists with one label per word (NER): `texts[i]` is a list of words and
    `labels[i]` a list of the same length, 0 for O and 1..N-1 for the episode's entity types."""

    texts: list[list[str]]  # type: ignore[assignment]
    labels: list[list[int]]  # type: ignore[assignment]
    kind: ClassVar[TaskKind] = TOKEN

    def relabelled(self, new_ids: list[int]) -> WordExamples:
        return type(self)(self.texts, [[new_ids[y] for y in ys] for ys in self.labels])

    def with_label_names(self, label_names: list[str], times: int) -> WordExamples:
        """Each entity-type name as a sentence of its words, every word of that type, so the name's
        words join the type's prototype; class 0 is O, which has no name to add."""
        named = [(label_name_text(n).split(), y) for y, n in enumerate(label_names) if y > 0 and label_name_text(n)]
        return type(self)(self.texts + [words for words, _ in named for _ in range(times)],
                          self.labels + [[y] * len(words) for words, y in named for _ in range(times)])


@dataclass
class Episode:
    """One few-shot task instance: a support set to adapt on and a disjoint query set to score."""

    support: Examples
    query: Examples
    label_names: list[str]
    task: str

    @property
    def n_way(self) -> int:
        return len(self.label_names)

    @property
    def kind(self) -> TaskKind:
        """The kind of task (`llm_meta.data.kinds`): its support set's."""
        return self.support.kind

    def fingerprint(self) -> str:
        """A hash of the episode's exact content (for checking that methods saw the same episodes)."""
        blob = json.dumps([self.task, self.label_names, self.support.texts, self.support.labels,
                           self.query.texts, self.query.labels], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class EpisodeSampler:
    """Seeded N-way K-shot Q-query episodes over one or many tasks.

    Args:
        tasks: the tasks to draw from.
        n_way, k_shot, q_query: classes per episode, support and query examples per class.
        split: which split of each task to draw texts from.
        class_role: restrict each task to its registry class split (meta_train / meta_val /
            meta_test); None uses every class.
        weighting: how to choose the task of an episode: "uniform", or "size" (proportional to
            the number of usable examples).
        seed: episodes are a pure function of (seed, index).
        task_weights: explicit relative weights, one per task (replace `weighting`).
        cap_way: a task with fewer usable classes than n_way gives full-way episodes (all its
            classes) instead of an error: how "up to the full label set" mixes datasets of any size.
    """

    def __init__(self, tasks: list[Task], n_way: int, k_shot: int, q_query: int, split: str = "train",
                 class_role: str | None = None, weighting: str = "uniform", seed: int = 0,
                 task_weights: list[float] | None = None, cap_way: bool = False) -> None:
        if n_way < 2 or k_shot < 1 or q_query < 0:
            raise ValueError(f"need n_way >= 2, k_shot >= 1, q_query >= 0; got {n_way}, {k_shot}, {q_query}")
        if weighting not in ("uniform", "size"):
            raise ValueError(f"weighting must be 'uniform' or 'size', got {weighting!r}")
        self.n_way, self.k_shot, self.q_query, self.seed, self.cap_way = n_way, k_shot, q_query, seed, cap_way
        self.pools: list[tuple[str, dict[str, list[str]]]] = []
        for task in tasks:
            self.pools.append((task.name, self._class_pool(task, split, class_role)))
        sizes = [sum(len(v) for v in pool.values()) for _, pool in self.pools]
        self.weights = [1.0] * len(self.pools) if weighting == "uniform" else [float(s) for s in sizes]
        if task_weights is not None:
            if len(task_weights) != len(tasks) or any(w <= 0 for w in task_weights):
                raise ValueError(f"task_weights needs one weight > 0 per task, got {task_weights} for {len(tasks)}")
            self.weights = [float(w) for w in task_weights]

    def _class_pool(self, task: Task, split: str, class_role: str | None) -> dict[str, list[str]]:
        """Texts per usable class; classes too small for K + Q are skipped with one warning."""
        wanted = set(task.classes(class_role))
        by_class: dict[str, list[str]] = {}
        for text, label in zip(*task.rows(split)):
            if label in wanted:
                by_class.setdefault(label, []).append(text)
        need = self.k_shot + self.q_query
        # Duplicate texts within a class would let one text land in both support and query.
        by_class = {c: list(dict.fromkeys(texts)) for c, texts in by_class.items()}
        small = sorted(c for c, texts in by_class.items() if len(texts) < need)
        if small:
            log.warning("task '%s' (%s split): skipping %d class(es) with fewer than K+Q=%d examples: %s",
                        task.name, split, len(small), need, ", ".join(small))
        pool = {c: texts for c, texts in sorted(by_class.items()) if len(texts) >= need}
        if len(pool) < (2 if self.cap_way else self.n_way):
            raise TaskError(
                f"task '{task.name}' ({split} split, classes: {class_role or 'all'}) has {len(pool)} class(es) "
                f"with at least K+Q={need} examples; {self.n_way}-way episodes need {self.n_way}"
            )
        return pool

    def source_of(self, index: int) -> str:
        """The task episode `index` is drawn from (without drawing the episode)."""
        return random.Random(f"{self.seed}:{index}").choices(self.pools, weights=self.weights)[0][0]

    def episode(self, index: int) -> Episode:
        """The episode at `index`: the same for the same (seed, index), whatever came before."""
        rng = random.Random(f"{self.seed}:{index}")  # str seeds hash with sha512: stable across runs
        name, pool = rng.choices(self.pools, weights=self.weights)[0]
        classes = rng.sample(sorted(pool), min(self.n_way, len(pool)))
        support, query = Examples([], []), Examples([], [])
        for label, cls in enumerate(classes):
            picked = rng.sample(pool[cls], self.k_shot + self.q_query)
            support.texts += picked[: self.k_shot]
            support.labels += [label] * self.k_shot
            query.texts += picked[self.k_shot :]
            query.labels += [label] * self.q_query
        return Episode(support=support, query=query, label_names=classes, task=name)

    def episodes(self, count: int, start: int = 0) -> list[Episode]:
        """Episodes start, ..., start + count - 1: each the same for the same (seed, index)."""
        return [self.episode(i) for i in range(start, start + count)]


class ChoosingSampler:
    """A sampler of samplers: episode `i` is the episode `i` of the sampler `sampler_for(i)` picks."""

    def sampler_for(self, index: int) -> Any:
        raise NotImplementedError

    def source_of(self, index: int) -> str:
        return self.sampler_for(index).source_of(index)

    def episode(self, index: int) -> Episode:
        return self.sampler_for(index).episode(index)

    def episodes(self, count: int, start: int = 0) -> list[Episode]:
        return [self.episode(i) for i in range(start, start + count)]


class StagedSampler(ChoosingSampler):
    """A way/shot curriculum over samplers: episode `i` comes from the last stage whose first
    episode is at or before `i`, and is that sampler's episode `i` (still a pure function of i)."""

    def __init__(self, stages: list[tuple[int, Any]]) -> None:
        if not stages or stages[0][0] != 0:
            raise ValueError("a curriculum needs a stage starting at episode 0")
        self.stages = sorted(stages, key=lambda s: s[0])

    def sampler_for(self, index: int) -> Any:
        return [sampler for first, sampler in self.stages if first <= index][-1]

    @property
    def pools(self) -> list:
        return self.stages[0][1].pools


class MixtureSampler(ChoosingSampler):
    """Episodes from several samplers: episode `i` comes from a source chosen by weight, seeded by
    (seed, i), and is that source's episode `i`; so mixtures are as reproducible as one sampler."""

    def __init__(self, sources: list[tuple[Any, float]], seed: int = 0) -> None:
        if not sources or any(w <= 0 for _, w in sources):
            raise ValueError(f"a task mixture needs at least one source, every weight > 0; got weights "
                             f"{[w for _, w in sources]}")
        self.samplers = [s for s, _ in sources]
        self.weights = [float(w) for _, w in sources]
        self.seed = seed

    def sampler_for(self, index: int) -> Any:
        return random.Random(f"mix:{self.seed}:{index}").choices(self.samplers, weights=self.weights)[0]

    @property
    def pools(self) -> list[tuple[str, dict[str, list[str]]]]:
        """The supervised class pools of the mixture (what the transfer baseline's heads need)."""
        return [pool for s in self.samplers for pool in getattr(s, "pools", [])]


def support_set(task: Task, shots: int, split: str = "train", seed: int = 0) -> tuple[Examples, list[str]]:
    """K examples of every class of `task` (seeded): K distinct texts, so a row repeated in the
    file is never a second shot.

    A class with fewer than K distinct texts joins with all it has, and a warning names it: dropping
    it would silently remove a class, and failing would refuse the imbalanced data users have.

    Raises:
        TaskError: K < 1.
    """
    if shots < 1:
        raise TaskError(f"K (--shots; Python: shots=) must be at least 1 example per class, got {shots}")
    by_class: dict[str, dict[str, None]] = {}
    for text, label in zip(*task.rows(split)):
        by_class.setdefault(label, {})[text] = None  # distinct texts, in file order
    small = {c: len(t) for c, t in sorted(by_class.items()) if len(t) < shots}
    if small:
        listed = ", ".join(f"'{c}' has {n}" for c, n in list(small.items())[:10])
        log.warning("task '%s' (%s): %d class(es) have fewer than K=%d distinct texts and join with all they have: "
                    "%s%s", task.name, split, len(small), shots, listed, " ..." if len(small) > 10 else "")
    rng = random.Random(f"support:{seed}")
    labels = sorted(by_class)
    support = Examples([], [])
    for y, label in enumerate(labels):
        picked = rng.sample(list(by_class[label]), min(shots, len(by_class[label])))
        support.texts += picked
        support.labels += [y] * len(picked)
    return support, labels


def whole_split_episode(task: Task, shots: int, support_split: str, query_split: str, seed: int = 0) -> Episode:
    """An episode of every class of `task`: K examples per class from `support_split` (as
    `support_set` draws them, seeded) and, as the query, every text of `query_split` that is not
    in the support: how a user's task is scored (all classes, the real class balance).

    Raises:
        TaskError: K < 1, or a query label that the support split does not have.
    """
    support, labels = support_set(task, shots, support_split, seed)
    index = {name: i for i, name in enumerate(labels)}
    chosen = set(support.texts)
    rows = [(t, y) for t, y in zip(*task.rows(query_split)) if t not in chosen]
    unknown = sorted({y for _, y in rows} - set(index))
    if unknown:
        raise TaskError(f"task '{task.name}': {query_split} labels {unknown[:5]} have no {support_split} examples")
    return Episode(support, Examples([t for t, _ in rows], [index[y] for _, y in rows]), labels, task.name)


WHOLE_FILE = "whole file"  # the split name a report gives a single file scored whole


def scored_split(task: Task) -> str:
    """The split to score when none is named: "test", or the only split of a single file (its rows
    are read as "train"; reports call it `WHOLE_FILE`).

    Raises:
        TaskError: several splits and none of them "test".
    """
    if "test" in task.splits:
        return "test"
    if len(task.splits) == 1:
        return next(iter(task.splits))
    raise TaskError(f"task '{task.name}' has no test split (it has: {', '.join(task.splits)}); name the split to score")
