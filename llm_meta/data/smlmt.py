"""Self-supervised meta-training tasks from unlabelled text: Subset Masked Language Modelling
Tasks (SMLMT; Bansal et al., EMNLP 2020).

Any corpus becomes an unlimited supply of N-way K-shot classification episodes: pick N words,
take K + Q sentences containing each, replace the word by the mask token, and the label is which
word was masked. A word -> sentences inverted index is built once per (corpus, tokenizer) and
cached on disk; after that an episode costs a few dozen random draws and regex substitutions.

    sampler = SmlmtSampler.build(load_corpus("corpus.txt"), "corpus", tokenizer, n_way=5, k_shot=5, q_query=5)
    episode = sampler.episode(0)   # a pure function of (seed, 0), like every sampler here
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_meta.data.episodes import Episode, Examples
from llm_meta.data.files import load_raw, text_codec
from llm_meta.data.registry import load_registry
from llm_meta.data.tasks import TaskError, load_task
from llm_meta.io.atomic import write_atomic

log = logging.getLogger(__name__)

# A "word": letters only, at least 3 of them, standing alone. Numbers, tokens mixing letters and
# digits, and fragments such as the "s" of "it's" never qualify. Matching is on lower-cased text.
WORD = re.compile(r"\b[a-z]{3,}\b")
PLACEHOLDER = "___"  # for tokenizers without a mask token (decoders): neutral, one or two tokens
INDEX_VERSION = 1


@dataclass
class SmlmtConfig:
    """An SMLMT task source for meta-training (`data` unset: none)."""

    data: str | None = None  # .txt (one sentence per line), .jsonl/.csv/.tsv/.parquet, registry task, or hf:<id>
    text_column: str = "text"  # for tabular files and datasets (labels, if any, are ignored)
    split: str = "train"  # for registry tasks and datasets
    class_role: str | None = None  # registry tasks: only texts of these classes (meta_train keeps meta-val text out)
    weight: float = 1.0  # share of episodes against the other sources of the mixture
    min_sentences: int | None = None  # a word needs this many sentences (None: K + Q)


def load_corpus(spec: str, text_column: str = "text", split: str = "train", class_role: str | None = None) -> list[str]:
    """Sentences of a corpus, de-duplicated, in file order; labels, if any, are ignored.

    `spec`, comma-separated for several: a `.txt` file (one sentence per line), a tabular file or
    folder (`text_column`), a registry task (its `split`, restricted to `class_role` classes),
    the bundled `wnut16` tweets, or `hf:<dataset id>`.
    """
    sentences: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        sentences += _load_one(part, text_column, split, class_role)
    sentences = list(dict.fromkeys(s for s in (t.strip() for t in sentences) if s))
    if not sentences:
        raise TaskError(f"corpus '{spec}' has no non-empty sentences")
    return sentences


def _load_one(spec: str, text_column: str, split: str, class_role: str | None) -> list[str]:
    path = Path(spec)
    if path.suffix.lower() == ".txt" and path.is_file():
        # The readers' rules (llm_meta.data.tasks): encoding checked, BOM dropped, universal newlines only.
        with path.open(encoding=text_codec(path)) as f:
            return [line.removesuffix("\n") for line in f]
    if spec == "wnut16":
        from llm_meta.data.ner import load_ner

        return [" ".join(s.tokens) for s in load_ner(spec)]
    if spec in load_registry():
        task = load_task(spec)
        wanted = set(task.classes(class_role))
        return [t for t, y in zip(*task.rows(split)) if y in wanted]
    _, raw, _ = load_raw(spec, "not a .txt file, not a registry task, not wnut16")
    ds = raw[split] if split in raw else raw[next(iter(raw))]
    if text_column not in ds.column_names:
        raise TaskError(f"corpus '{spec}' has no column '{text_column}' (columns: {', '.join(ds.column_names)}); "
                        f"set smlmt.text_column")
    return [str(t) for t in ds[text_column] if t is not None]


def stop_words() -> frozenset[str]:
    # scikit-learn's English list, read from the installed package (not copied here).
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def build_index(sentences: list[str], min_sentences: int, single_token: Any = None) -> dict[str, list[int]]:
    """word -> indices of the sentences that contain it, for every eligible word.

    Eligible: matches WORD, not a stop word, in at least `min_sentences` sentences, and (when
    `single_token` is given) kept whole by the tokenizer, so the mask hides one token rather
    than leaving sub-word pieces of the word to read.
    """
    index: dict[str, list[int]] = {}
    for i, sentence in enumerate(sentences):
        for word in set(WORD.findall(sentence.lower())):
            index.setdefault(word, []).append(i)
    skip = stop_words()
    return {w: ids for w, ids in sorted(index.items())
            if len(ids) >= min_sentences and w not in skip and (single_token is None or single_token(w))}


def tokenizer_key(tokenizer: Any) -> str:
    """A short hash of what the index depends on in the tokenizer: its class and vocabulary."""
    if tokenizer is None:
        return "none"
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps([type(tokenizer).__name__, vocab]).encode()).hexdigest()[:12]


def single_token_check(tokenizer: Any):
    """A predicate: does the tokenizer keep this word as one token (as it would appear mid-sentence)?"""
    if tokenizer is None:
        return None
    return lambda word: len(tokenizer.tokenize(" " + word)) == 1


@functools.lru_cache(maxsize=65536)
def _word_pattern(word: str) -> re.Pattern:
    return re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)


def mask_word(sentence: str, word: str, mask: str) -> str:
    """Every whole-word, case-insensitive occurrence of `word` replaced by `mask`."""
    return _word_pattern(word).sub(mask, sentence)


class SmlmtSampler:
    """Seeded SMLMT episodes: N words, K support + Q query sentences each, the word masked.

    No sentence appears twice in an episode (so none is in both support and query); episode `i`
    is a pure function of (seed, i).
    """

    def __init__(self, sentences: list[str], index: dict[str, list[int]], name: str, mask: str,
                 n_way: int, k_shot: int, q_query: int, seed: int = 0) -> None:
        need = k_shot + q_query
        self.words = sorted(w for w, ids in index.items() if len(ids) >= need)
        if len(self.words) < n_way:
            raise TaskError(f"corpus '{name}' ({len(sentences)} sentences) has {len(self.words)} eligible word(s) "
                            f"(not stop words, kept whole by the tokenizer, in at least K+Q={need} sentences); "
                            f"{n_way}-way episodes need {n_way}. Use a larger corpus or smaller n_way/k_shot/q_query")
        self.sentences, self.index, self.name, self.mask = sentences, index, f"smlmt:{name}", mask
        self.n_way, self.k_shot, self.q_query, self.seed = n_way, k_shot, q_query, seed

    @classmethod
    def build(cls, sentences: list[str], name: str, tokenizer: Any, n_way: int, k_shot: int, q_query: int,
              seed: int = 0, min_sentences: int | None = None, cache: Path | None = None) -> "SmlmtSampler":
        """Index the corpus (or read the cached index) and make a sampler; the mask comes from the tokenizer."""
        mask = getattr(tokenizer, "mask_token", None) or PLACEHOLDER
        need = min_sentences or (k_shot + q_query)
        index = cached_index(sentences, need, tokenizer, cache)
        return cls(sentences, index, name, mask, n_way, k_shot, q_query, seed)

    def source_of(self, index: int) -> str:
        return self.name

    def episode(self, index: int) -> Episode:
        rng = random.Random(f"smlmt:{self.seed}:{index}")
        words: list[str] = []
        picks: list[list[int]] = []
        used: set[int] = set()
        for _ in range(50 * self.n_way):  # a word whose sentences the episode already took is skipped
            word = self.words[rng.randrange(len(self.words))]
            if word in words:
                continue
            picked = _distinct(rng, self.index[word], self.k_shot + self.q_query, used)
            if picked is not None:
                words.append(word)
                picks.append(picked)
                if len(words) == self.n_way:
                    break
        else:
            raise TaskError(f"corpus '{self.name}': could not find {self.n_way} words with K+Q = "
                            f"{self.k_shot + self.q_query} sentences not shared with each other; use a larger corpus")
        support, query = Examples([], []), Examples([], [])
        for label, (word, picked) in enumerate(zip(words, picks)):
            texts = [mask_word(self.sentences[i], word, self.mask) for i in picked]
            support.texts += texts[: self.k_shot]
            support.labels += [label] * self.k_shot
            query.texts += texts[self.k_shot :]
            query.labels += [label] * self.q_query
        return Episode(support=support, query=query, label_names=words, task=self.name)

    def episodes(self, count: int, start: int = 0) -> list[Episode]:
        return [self.episode(i) for i in range(start, start + count)]


def _distinct(rng: random.Random, ids: list[int], count: int, used: set[int]) -> list[int] | None:
    """`count` sentence ids from `ids` not in `used` (which they then join), or None (and `used`
    unchanged) if too few are left. Random probes suit frequent words (cheap); one shuffle when the
    probes keep hitting taken sentences."""
    picked: list[int] = []
    for _ in range(4 * count):
        i = ids[rng.randrange(len(ids))]
        if i not in used and i not in picked:
            picked.append(i)
            if len(picked) == count:
                break
    if len(picked) < count:
        rest = [i for i in ids if i not in used and i not in picked]
        if len(rest) < count - len(picked):
            return None
        picked += rng.sample(rest, count - len(picked))
    used.update(picked)
    return picked


def corpus_key(sentences: list[str]) -> str:
    digest = hashlib.sha256()
    for s in sentences:
        digest.update(s.encode("utf-8", "replace") + b"\n")
    return digest.hexdigest()[:16]


def cached_index(sentences: list[str], min_sentences: int, tokenizer: Any,
                 cache: Path | None = None) -> dict[str, list[int]]:
    """The inverted index from the disk cache (keyed by corpus hash, tokenizer and settings), else
    built and written atomically."""
    from llm_meta.io.atomic import cache_dir

    folder = cache or cache_dir() / "smlmt"
    path = folder / f"{corpus_key(sentences)}-{tokenizer_key(tokenizer)}-min{min_sentences}-v{INDEX_VERSION}.json"
    try:
        index = json.loads(path.read_text())
        log.info("SMLMT index read from %s (%d words)", path, len(index))
        return index
    except (FileNotFoundError, ValueError):
        pass
    started = time.perf_counter()
    index = build_index(sentences, min_sentences, single_token_check(tokenizer))
    write_atomic(path, json.dumps(index))
    log.info("SMLMT index of %d sentences built in %.1f s: %d eligible words; cached in %s", len(sentences),
             time.perf_counter() - started, len(index), path)
    return index
