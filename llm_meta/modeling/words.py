"""Words on the model: word-to-subword alignment through character offsets, the embedding of each
word's first sub-token, and what a max_length cut costs in entity terms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from llm_meta.modeling.body import Body, Params, position_limit
from llm_meta.modeling.forward import embed_tokens, folded_pass, token_counts

log = logging.getLogger(__name__)


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
