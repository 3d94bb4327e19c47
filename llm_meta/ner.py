"""Token-level tasks (NER): the held-out type split, Few-NERD episodes, word-to-subword alignment.

Token episodes reuse the sequence machinery: a `WordExamples` holds word lists with per-word
class ids (0 = O, i = the episode's i-th entity type, IO scheme as in Few-NERD), so `adapt`,
FOMAML, Reptile and the prototype heads run as they are; `llm_meta.losses` scores its words
instead of its texts because the examples say they are token-level.

Files are read by `llm_meta.conll` (its names are importable from here too).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_meta import conll
from llm_meta.conll import (BUNDLED_NER, Sentence, entity_type, entity_types, read_conll,  # noqa: F401
                            repair_bio, sentences_fingerprint, to_bio)
from llm_meta.episodes import Episode, WordExamples
from llm_meta.heads import head_logits
from llm_meta.models import Body, Params, by_tokens, embed_tokens, folded_pass, position_limit, token_counts
from llm_meta.silver import silver_corpus
from llm_meta.spans import decomposed_loss, is_decomposed, word_classes
from llm_meta.tasks import TaskError

log = logging.getLogger(__name__)


@dataclass
class NerConfig:
    """A token task for meta-training / benchmarking: entity types split into trained and held out."""

    data: str | None = None  # wnut16 | a CoNLL file | a .jsonl/.parquet with tokens/ner_tags | hf:<id>; None: off
    held_out_types: list[str] = field(default_factory=list)  # test types: never seen in meta-training
    validation_fraction: float = 0.15  # of the sentences without held-out types, kept for selection
    split_seed: int = 0
    # More NER corpora for meta-training only (never validation or test), each sampled as a source
    # of its own with its own types, e.g. [silver] (spaCy-tagged bundled sentences, llm_meta.silver).
    extra_train: list[str] = field(default_factory=list)
    extra_weight: float = 1.0  # each extra corpus's share of episodes, against 1 for data's train split
    # Sentences of the extra corpora that mention these types are left out, e.g. the OntoNotes types
    # whose meaning overlaps the held-out ones (silver.OVERLAPPING_WNUT_HELD_OUT), so those stay unseen.
    drop_types: list[str] = field(default_factory=list)


def load_ner(spec: str, tokens_column: str = "tokens", tags_column: str = "ner_tags") -> list[Sentence]:
    """`llm_meta.conll.load_ner`, plus `silver`: the spaCy-tagged corpus of the bundled texts
    (`llm_meta.silver`, built once and cached), which only meta-training reads."""
    if spec == "silver":
        return silver_corpus()
    return conll.load_ner(spec, tokens_column, tags_column)


def extra_corpora(cfg: NerConfig) -> list[tuple[str, list[Sentence], list[str]]]:
    """(name, sentences, types) of each `cfg.extra_train` corpus, without `cfg.drop_types`.

    Raises:
        TaskError: a corpus that names a held-out type (it would leak into meta-training), or one
            left with fewer than two types.
    """
    from llm_meta.silver import without_types

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


# --- Few-NERD episodes ----------------------------------------------------------------------------

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


# --- word-to-subword alignment ---------------------------------------------------------------------

@dataclass
class AlignedBatch:
    """A tokenised batch of word lists and where each kept word's first sub-token is."""

    batch: dict[str, Tensor]
    rows: Tensor  # [M] batch row of each kept word
    positions: Tensor  # [M] token position of its first sub-token
    words: list[tuple[int, int]]  # (sentence, word index) of each kept word, same order
    dropped: int  # words that got no token (cut by max_length)


def align_words(body: Body, sentences: list[list[str]], warn: bool = True) -> AlignedBatch:
    """Tokenise word lists and find each word's first sub-token through character offsets.

    Offsets work for WordPiece and byte-level BPE alike (a BPE token may carry the space before a
    word, so a token belongs to the word holding its last character). Words past max_length are
    dropped with a warning: they are counted, never silently lost.
    """
    texts = [" ".join(words) for words in sentences]
    enc = body.tokenizer(texts, padding=True, truncation=True, max_length=body.max_length,
                         return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping").tolist()
    rows, positions, words, dropped = [], [], [], 0
    for row, sentence in enumerate(sentences):
        owner: list[int] = []
        for w, word in enumerate(sentence):
            owner += [w] * len(word) + [-1]  # -1: the joining space
        first: dict[int, int] = {}
        for pos, (start, end) in enumerate(offsets[row]):
            if end > start and owner[end - 1] >= 0 and owner[end - 1] not in first:
                first[owner[end - 1]] = pos
        dropped += len(sentence) - len(first)
        for w in sorted(first):
            rows.append(row)
            positions.append(first[w])
            words.append((row, w))
    if dropped and warn:
        _warn_dropped(dropped, len(sentences), body.max_length)
    batch = {k: v.to(body.device) for k, v in enc.items()}
    return AlignedBatch(batch, torch.tensor(rows, device=body.device), torch.tensor(positions, device=body.device),
                        words, dropped)


def align_groups(body: Body, sentences: list[list[str]]) -> list[tuple[list[int], AlignedBatch]]:
    """`align_words` over at most two length groups: the sentences sorted by token count and cut
    once where the padded tokens are fewest (no cut when none saves any). Each group is its own
    forward pass; the words of all groups together are the same set, so a loss over them is the
    same. Why: entity-type names as support sentences (1-3 tokens) were padded to the longest tweet
    of the support set, ~1.5x the adaptation's compute (experiments/BENCHMARKS.md, "NER speed").

    Returns:
        (indices into `sentences`, their AlignedBatch) per group, shortest group first.
    """
    # Truncated counts: a batch pads to its longest row as cut at max_length.
    lengths = [min(n, body.max_length) for n in token_counts(body, [" ".join(words) for words in sentences])]
    order = sorted(range(len(sentences)), key=lengths.__getitem__)
    n = len(order)
    if n < 2:
        return [(order, align_words(body, sentences))]
    # Padded tokens when the first i sentences are one batch and the rest another (i = n: no cut).
    cut = min(range(1, n + 1), key=lambda i: i * lengths[order[i - 1]] + (n - i) * lengths[order[-1]])
    groups = [g for g in (order[:cut], order[cut:]) if g]
    aligned = [align_words(body, [sentences[i] for i in g], warn=False) for g in groups]
    _warn_dropped(sum(a.dropped for a in aligned), n, body.max_length)
    return list(zip(groups, aligned))


def word_embeddings(body: Body, params: Params, aligned: AlignedBatch, folded: Params | None = None) -> Tensor:
    """[M, hidden]: the (normalised) embedding of each kept word's first sub-token (`folded`:
    `models.folded_lora`, for passes without gradients)."""
    return embed_tokens(body, params, aligned.batch, folded)[aligned.rows, aligned.positions].float()


def word_labels(aligned: AlignedBatch, labels: list[list[int]], device: torch.device) -> Tensor:
    return torch.tensor([labels[s][w] for s, w in aligned.words], device=device)


def token_loss_and_accuracy(body: Body, params: Params, sentences: list[list[str]], labels: list[list[int]],
                            scale: float, groups: list[tuple[list[int], AlignedBatch]] | None = None
                            ) -> tuple[Tensor, Tensor]:
    """Cross-entropy and accuracy over every kept word (O included), with the head in `params`
    (`groups`: `align_groups(body, sentences)`, when the caller already has it)."""
    groups = groups if groups is not None else align_groups(body, sentences)
    emb = torch.cat([word_embeddings(body, params, aligned) for _, aligned in groups])
    ys = torch.cat([word_labels(aligned, [labels[i] for i in idx], emb.device) for idx, aligned in groups])
    return word_loss_and_accuracy(params, emb, ys, scale)


def word_loss_and_accuracy(params: Params, emb: Tensor, labels: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Loss and word accuracy of the head in `params` on word embeddings [M, hidden] with class ids
    [M]: one cross-entropy over O and the types (IO head), or detection + typing (`llm_meta.spans`)."""
    if is_decomposed(params):
        return decomposed_loss(params, emb, labels, scale)
    logits = head_logits(params, emb, scale)
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()


@torch.no_grad()
def embed_words(body: Body, params: Params, sentences: list[list[str]], labels: list[list[int]],
                batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """(embeddings [M, hidden], class ids [M]) of every kept word, without gradients."""
    embs, ys, dropped = [], [], 0
    with folded_pass(body, params) as folded:
        for start in range(0, len(sentences), batch_size):
            part = sentences[start : start + batch_size]
            aligned = align_words(body, part, warn=False)
            dropped += aligned.dropped
            embs.append(word_embeddings(body, params, aligned, folded))
            ys.append(word_labels(aligned, labels[start : start + batch_size], body.device))
    _warn_dropped(dropped, len(sentences), body.max_length)
    return torch.cat(embs), torch.cat(ys)


def _warn_dropped(dropped: int, sentences: int, max_length: int) -> None:
    """A debug line for a pass over many batches: what was cut is reported to the user once per
    command, in entity terms, by `report_cut` (the passes of one command would repeat it)."""
    if dropped:
        log.debug("%d word(s) of %d sentence(s) got no token (cut at max_length=%d tokens)", dropped, sentences,
                  max_length)


def words_read(body: Body, sentences: list[list[str]]) -> list[int]:
    """How many leading words of each sentence fall within `body.max_length` tokens (the words
    after them get no token: they are neither trained on, nor scored as found, nor tagged)."""
    read = []
    for start in range(0, len(sentences), 256):
        part = sentences[start : start + 256]
        enc = body.tokenizer([" ".join(words) for words in part], truncation=True, max_length=body.max_length,
                             return_offsets_mapping=True)
        for words, offsets in zip(part, enc["offset_mapping"]):
            reach = max((end for _, end in offsets), default=0)  # characters the kept tokens cover
            first, n = 0, 0
            for word in words:
                if first >= reach:
                    break
                n, first = n + 1, first + len(word) + 1
            read.append(n)
    return read


def _mention_starts(labels: list[int]) -> list[tuple[int, int]]:
    """(start word, class id) of each entity mention in per-word class ids (IO: a run of one id)."""
    return [(i, y) for i, y in enumerate(labels) if y and (i == 0 or labels[i - 1] != y)]


def report_cut(body: Body, sentences: list[list[str]], labels: list[list[int]] | None = None,
               names: list[str] | None = None, role: str = "tag", first_row: int = 1) -> int:
    """Warn, in entity terms, about sentences longer than `body.max_length` tokens; return how many.

    `role` says what the cut costs: "train" (support sentences: the mentions past the cut are not
    trained on, and a type left with none is named), "score" (gold mentions past the cut count as
    missed) or "tag" (texts to tag: which words of which row were not tagged; rows count from
    `first_row`). `labels` (per-word class ids, 0 = O) and `names` (class id -> type) give the
    mentions for "train" and "score".
    """
    read = words_read(body, sentences)
    cut = [i for i, (words, n) in enumerate(zip(sentences, read)) if n < len(words)]
    if not cut:
        return 0
    longer = f"{len(cut)} of {len(sentences)} sentence(s) are longer than model.max_length={body.max_length} tokens"
    limit = _position_limit(body)
    fix = f"set model.max_length higher (this model reads up to {limit} tokens)" if limit and limit > body.max_length \
        else "split the long sentences"
    if role == "tag":
        where = ", ".join(f"words {read[i]}-{len(sentences[i]) - 1} of row {first_row + i}" for i in cut[:3])
        log.warning("%s: %s%s were not tagged; %s", longer, where, " ..." if len(cut) > 3 else "", fix)
        return len(cut)
    lost = [(y, i) for i in cut for start, y in _mention_starts(labels[i]) if start >= read[i]]
    kept = {y for i, ys in enumerate(labels) for start, y in _mention_starts(ys) if start < read[i]}
    types = sorted({names[y] for y, _ in lost})
    if role == "train":
        gone = sorted({names[y] for y, _ in lost if y not in kept})
        log.warning("%s: %d entity mention(s) past the cut (%s) are not trained on%s; %s", longer, len(lost),
                    ", ".join(types) or "none", f"; {', '.join(gone)} has no mention left" if gone else "", fix)
    else:
        log.warning("%s: %d gold entity mention(s) past the cut (%s) cannot be found and count as missed; %s",
                    longer, len(lost), ", ".join(types) or "none", fix)
    return len(cut)


def _position_limit(body: Body) -> int | None:
    return position_limit(body.model.get_base_model(), body.tokenizer)


def io_to_bio(labels: list[int], names: list[str]) -> list[str]:
    """Per-word class ids (0 = O) to BIO tags: a run of one type is one entity (the IO convention)."""
    tags = []
    for i, y in enumerate(labels):
        tags.append("O" if y == 0 else ("I-" if i and labels[i - 1] == y else "B-") + names[y])
    return tags


@torch.no_grad()
def tag_words(body: Body, params: Params, sentences: list[list[str]], scale: float, batch_size: int = 64) -> list[list[int]]:
    """The head's class id for every word (0 = O); words past max_length get O (align_words warns).
    A decomposed head (`llm_meta.spans`) tags detected spans, each with one type."""
    out = [[0] * len(words) for words in sentences]
    if not sentences:
        return out
    dropped = 0
    # Batches of similar token count: padding to a batch's longest sentence is the waste.
    # An empty sentence has no word to tag: it stays [] (a batch of them would have no word to embed).
    order = [i for i in by_tokens(body, [" ".join(words) for words in sentences]) if sentences[i]]
    with folded_pass(body, params) as folded:  # no gradient: the LoRA folded into the base weights
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            aligned = align_words(body, [sentences[i] for i in idx], warn=False)
            dropped += aligned.dropped
            emb = word_embeddings(body, params, aligned, folded)
            ys = word_classes(params, emb, aligned.words, scale) if is_decomposed(params) \
                else head_logits(params, emb, scale).argmax(1).tolist()
            for (s, w), y in zip(aligned.words, ys):
                out[idx[s]][w] = y
    _warn_dropped(dropped, len(sentences), body.max_length)
    return out
