"""Heads over words (NER): the loss and accuracy of a token-level head on word embeddings, and the
class id it gives every word. An IO head classifies each word over O and the episode's types; a
decomposed head (`llm_meta.meta.spans`) detects spans, then types them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_meta.meta.heads import head_logits
from llm_meta.meta.spans import decomposed_loss, is_decomposed, word_classes
from llm_meta.modeling.body import Body, Params
from llm_meta.modeling.forward import by_tokens, folded_pass
from llm_meta.modeling.words import AlignedBatch, _warn_dropped, align_groups, align_words, word_embeddings, word_labels


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
    [M]: one cross-entropy over O and the types (IO head), or detection + typing (`llm_meta.meta.spans`)."""
    if is_decomposed(params):
        return decomposed_loss(params, emb, labels, scale)
    logits = head_logits(params, emb, scale)
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()


@torch.no_grad()
def tag_words(body: Body, params: Params, sentences: list[list[str]], scale: float, batch_size: int = 64) -> list[list[int]]:
    """The head's class id for every word (0 = O); words past max_length get O (align_words warns).
    A decomposed head (`llm_meta.meta.spans`) tags detected spans, each with one type."""
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


def entity_counts(predicted: list[str], reference: list[str]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one sentence's BIO tags: entities
    (type, first, last) as seqeval extracts them; summed over sentences they give micro F1."""
    from seqeval.metrics.sequence_labeling import get_entities

    pred, ref = set(get_entities(predicted)), set(get_entities(reference))
    tp = len(pred & ref)
    return tp, len(pred) - tp, len(ref) - tp
