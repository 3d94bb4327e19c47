"""The NER task for meta-training and benchmarks: entity types split into trained and held out, the
extra corpora (the silver corpus), and Few-NERD's N-way K~2K-shot episodes.

Token episodes reuse the sequence machinery: a `WordExamples` holds word lists with per-word
class ids (0 = O, i = the episode's i-th entity type, IO scheme as in Few-NERD). Files are read by
`llm_meta.data.conll`; the model side (word alignment) is `llm_meta.modeling.words`, the heads'
loss and tagging `llm_meta.meta.token_heads`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from llm_meta.data import conll
from llm_meta.data.conll import Sentence, entity_type, entity_types
from llm_meta.data.episodes import Episode, WordExamples
from llm_meta.data.silver import silver_corpus
from llm_meta.data.tasks import TaskError


@dataclass
class NerConfig:
    """A token task for meta-training / benchmarking: entity types split into trained and held out."""

    data: str | None = None  # wnut16 | a CoNLL file | a .jsonl/.parquet with tokens/ner_tags | hf:<id>; None: off
    held_out_types: list[str] = field(default_factory=list)  # test types: never seen in meta-training
    validation_fraction: float = 0.15  # of the sentences without held-out types, kept for selection
    split_seed: int = 0
    # More NER corpora for meta-training only (never validation or test), each sampled as a source
    # of its own with its own types, e.g. [silver] (spaCy-tagged bundled sentences, llm_meta.data.silver).
    extra_train: list[str] = field(default_factory=list)
    extra_weight: float = 1.0  # each extra corpus's share of episodes, against 1 for data's train split
    # Sentences of the extra corpora that mention these types are left out, e.g. the OntoNotes types
    # whose meaning overlaps the held-out ones (silver.OVERLAPPING_WNUT_HELD_OUT), so those stay unseen.
    drop_types: list[str] = field(default_factory=list)


def load_ner(spec: str, tokens_column: str = "tokens", tags_column: str = "ner_tags") -> list[Sentence]:
    """`llm_meta.data.conll.load_ner`, plus `silver`: the spaCy-tagged corpus of the bundled texts
    (`llm_meta.data.silver`, built once and cached), which only meta-training reads."""
    if spec == "silver":
        return silver_corpus()
    return conll.load_ner(spec, tokens_column, tags_column)


def extra_corpora(cfg: NerConfig) -> list[tuple[str, list[Sentence], list[str]]]:
    """(name, sentences, types) of each `cfg.extra_train` corpus, without `cfg.drop_types`.

    Raises:
        TaskError: a corpus that names a held-out type (it would leak into meta-training), or one
            left with fewer than two types.
    """
    from llm_meta.data.silver import without_types

    out = []
    for spec in cfg.extra_train:
        sentences = without_types(load_ner(spec), cfg.drop_types)
        types = entity_types(sentences)
        leaked = sorted(set(types) & set(cfg.held_out_types))
        if leaked:
            raise TaskError(f"ner.extra_train corpus '{spec}' has held-out types {leaked}: meta-training may not see them")
        if len(types) < 2:
            raise TaskError(f"ner.extra_train corpus '{spec}' has {len(types)} entity type(s) after ner.drop_types; "
                            f"NER episodes need at least 2")
        out.append((spec, sentences, types))
    return out


def split_ner(cfg: NerConfig) -> tuple[dict[str, list[Sentence]], list[str]]:
    """Sentences by role and the meta-training types.

    test: every sentence with a held-out entity type; the others are shuffled (split_seed) into
    validation and train. Meta-training and selection never see a held-out mention, even as O.
    """
    sentences = load_ner(cfg.data)
    types = entity_types(sentences)
    unknown = sorted(set(cfg.held_out_types) - set(types))
    if unknown or not cfg.held_out_types:
        raise TaskError(f"ner.held_out_types must name some of {cfg.data}'s entity types {types}"
                        + (f"; unknown: {unknown}" if unknown else ""))
    held = set(cfg.held_out_types)
    test = [s for s in sentences if {entity_type(t) for t in s.tags} & held]
    rest = [s for s in sentences if not {entity_type(t) for t in s.tags} & held]
    random.Random(cfg.split_seed).shuffle(rest)
    n_val = round(len(rest) * cfg.validation_fraction)
    return {"train": rest[n_val:], "validation": rest[:n_val], "test": test}, sorted(set(types) - held)


def _mentions(tags: list[str]) -> dict[str, int]:
    """Entity mentions per type in one sentence (a mention starts at B-X, or at X after another tag)."""
    counts: dict[str, int] = {}
    prev = "O"
    for tag in tags:
        kind = entity_type(tag)
        if kind != "O" and (tag.startswith("B-") or entity_type(prev) != kind):
            counts[kind] = counts.get(kind, 0) + 1
        prev = tag
    return counts


def word_examples(sentences: list[Sentence], types: list[str]) -> WordExamples:
    """Sentences as IO class ids per word: 0 for O and for any type not in `types`, i for types[i-1]."""
    index = {t: y for y, t in enumerate(types, start=1)}
    return WordExamples([list(s.tokens) for s in sentences],
                        [[index.get(entity_type(tag), 0) for tag in s.tags] for s in sentences])


class NerEpisodeSampler:
    """Few-NERD's greedy N-way K~2K-shot sampler (Ding et al., 2021), seeded per episode.

    For each set (support, then query): choose sentences in random order among those whose entity
    types are all among the episode's N, never a sentence whose text is already in the episode
    (support and query are disjoint by text, not only by index: corpora repeat sentences); reject
    one that would push a type past 2K mentions;
    accept it only if some of its types is still under K; stop when every type has K. Types
    outside `types` never appear in an episode. Labels are IO class ids: 0 = O, i = types[i-1].
    """

    def __init__(self, sentences: list[Sentence], types: list[str], n_way: int, k_shot: int, q_shot: int,
                 seed: int = 0, name: str = "ner") -> None:
        unknown = sorted(set(types) - set(entity_types(sentences)))
        if unknown:
            raise TaskError(f"entity type(s) {unknown} do not occur in '{name}' (it has: {entity_types(sentences)})")
        if not 1 <= n_way <= len(types):
            raise TaskError(f"'{name}': {n_way}-way NER episodes need {n_way} entity types; {len(types)} are allowed")
        self.types, self.n_way, self.k_shot, self.q_shot, self.seed, self.name = types, n_way, k_shot, q_shot, seed, name
        self.sentences = sentences
        self.mentions = [_mentions(s.tags) for s in sentences]
        self.texts = [tuple(s.tokens) for s in sentences]  # support and query are kept disjoint by text

    def source_of(self, index: int) -> str:
        return self.name

    def episode(self, index: int) -> Episode:
        rng = random.Random(f"ner:{self.seed}:{index}")
        chosen = sorted(rng.sample(sorted(self.types), self.n_way))
        allowed = set(chosen)
        candidates = [i for i, m in enumerate(self.mentions) if m and set(m) <= allowed]
        rng.shuffle(candidates)
        used: set[tuple[str, ...]] = set()  # by text: a corpus may hold one sentence twice
        support = self._fill(candidates, used, self.k_shot, chosen)
        query = self._fill(candidates, used, self.q_shot, chosen)
        return Episode(support=support, query=query, label_names=["O", *chosen], task=self.name)

    def _fill(self, candidates: list[int], used: set[tuple[str, ...]], k: int, types: list[str]) -> WordExamples:
        counts = dict.fromkeys(types, 0)
        picked: list[int] = []
        for i in candidates:
            if self.texts[i] in used:
                continue
            m = self.mentions[i]
            if any(counts[t] + c > 2 * k for t, c in m.items()) or all(counts[t] >= k for t in m):
                continue
            picked.append(i)
            used.add(self.texts[i])
            for t, c in m.items():
                counts[t] += c
            if all(c >= k for c in counts.values()):
                break
        short = {t: c for t, c in counts.items() if c < k}
        if short:
            raise TaskError(f"'{self.name}': not enough sentences for a {len(types)}-way {k}-shot set of types "
                            f"{types} (mentions found: {short}); lower K or N")
        return word_examples([self.sentences[i] for i in picked], types)

    def episodes(self, count: int, start: int = 0) -> list[Episode]:
        return [self.episode(i) for i in range(start, start + count)]


def io_to_bio(labels: list[int], names: list[str]) -> list[str]:
    """Per-word class ids (0 = O) to BIO tags: a run of one type is one entity (the IO convention)."""
    tags = []
    for i, y in enumerate(labels):
        tags.append("O" if y == 0 else ("I-" if i and labels[i - 1] == y else "B-") + names[y])
    return tags
