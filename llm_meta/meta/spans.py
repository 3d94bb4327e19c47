"""Decomposed few-shot NER: class-agnostic span detection, then typing of each detected span.

The IO head of `llm_meta.meta.token_heads` classifies every word over O and the N entity types at once, so one
"O" prototype has to stand for every word that is not one of this episode's types: function
words, verbs, and entities of other types alike. Decomposed NER (DecomposedMetaNER, Ma et al.
2022; ESD, Wang et al. 2022) splits the decision in two:

1. **detection**: is the word inside an entity of any of the episode's types? A 2-way head
   ("span.weight" [2, hidden], "span.bias" [2]; row 0 outside, row 1 inside) initialised from the
   prototypes of the support set's outside and inside words, so every mention of every type
   feeds the one "inside" prototype (N×K words, not K);
2. **typing**: each detected span (a maximal run of inside words) gets the entity type whose
   prototype its words are closest to, summed over the span's words, so a span has one type.
   The typing head is the usual head ("head.weight" [N, hidden], "head.bias" [N], row 0 = O,
   which typing never chooses), initialised from prototypes of each type's words.

Both heads are adapted together with the LoRA tensors by the same inner loop (the loss is the sum
of the detection and the typing cross-entropy). Whether an episode's head is decomposed is said by
its tensors (`is_decomposed`: a "span.weight" present), never by a flag passed around.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_meta.meta.heads import head_logits, proto_head, protonet_loss
from llm_meta.modeling.body import Params

SPAN_KEYS = ("span.weight", "span.bias")


def is_decomposed(params: Params) -> bool:
    """Whether `params` hold a decomposed NER head (detection + typing) rather than an IO head."""
    return SPAN_KEYS[0] in params


def decomposed_head(emb: Tensor, labels: Tensor, n_way: int) -> Params:
    """Detection and typing heads from support words: emb [M, hidden], labels [M] in 0..n_way-1
    (0 = O). Typing rows are the Proto-MAML rows of each class's words (row 0, O, is kept so class
    ids stay those of the IO head, but typing never picks it); detection rows are those of the
    outside and the inside words."""
    detect = proto_head(emb, (labels > 0).long(), 2)
    return {**proto_head(emb, labels, n_way), SPAN_KEYS[0]: detect["head.weight"], SPAN_KEYS[1]: detect["head.bias"]}


def detection_logits(params: Params, emb: Tensor, scale: float) -> Tensor:
    """[M, hidden] -> [M, 2]: outside / inside an entity."""
    return scale * (emb @ params[SPAN_KEYS[0]].T + params[SPAN_KEYS[1]])


def typing_log_probs(params: Params, emb: Tensor, scale: float) -> Tensor:
    """[M, hidden] -> [M, N - 1]: log-probabilities of the entity types (O excluded)."""
    return torch.log_softmax(head_logits(params, emb, scale)[:, 1:], dim=1)


def decomposed_loss(params: Params, emb: Tensor, labels: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Detection cross-entropy over every word plus typing cross-entropy over the entity words
    (scalars), and the word accuracy of `word_classes` read per word (a progress figure)."""
    inside = labels > 0
    detect = detection_logits(params, emb, scale)  # [M, 2], used by the loss and the accuracy
    loss = F.cross_entropy(detect, inside.long())
    typing = typing_log_probs(params, emb, scale)
    if inside.any():
        loss = loss + F.nll_loss(typing[inside], labels[inside] - 1)
    predicted = torch.where(detect.argmax(1).bool(), typing.argmax(1) + 1, 0)
    return loss, (predicted == labels).float().mean()


@torch.no_grad()
def word_classes(params: Params, emb: Tensor, words: list[tuple[int, int]], scale: float) -> list[int]:
    """Class id (0 = O) of each word: runs of detected words within a sentence are spans, each
    typed as a whole by its words' summed typing log-probabilities.

    Args:
        emb: [M, hidden] word embeddings, in the order of `words`.
        words: (sentence, word index) of each embedding, sentences in order and words ascending
            (as `ner.align_words` lists them); a gap in the word indices ends a span.
    """
    inside = detection_logits(params, emb, scale).argmax(1).tolist()
    typing = typing_log_probs(params, emb, scale)
    out = [0] * len(words)
    i = 0
    while i < len(words):
        if not inside[i]:
            i += 1
            continue
        j = i + 1
        while j < len(words) and inside[j] and words[j] == (words[j - 1][0], words[j - 1][1] + 1):
            j += 1
        out[i:j] = [int(typing[i:j].sum(0).argmax()) + 1] * (j - i)
        i = j
    return out


def decomposed_protonet_loss(support_emb: Tensor, support_labels: Tensor, query_emb: Tensor, query_labels: Tensor,
                             n_way: int, scale: float) -> tuple[Tensor, Tensor]:
    """ProtoNet over the two decisions of decomposed NER (`llm_meta.meta.spans`): inside vs outside an
    entity (prototypes of all entity words and of O words), plus the entity type of the query's
    entity words (prototypes of each type's support words). Word embeddings [S, H] and [Q, H],
    class ids [S] and [Q] (0 = O); the accuracy is the detection's."""
    loss, acc = protonet_loss(support_emb, (support_labels > 0).long(), query_emb, (query_labels > 0).long(), 2, scale)
    s_in, q_in = support_labels > 0, query_labels > 0
    if q_in.any():
        typing, _ = protonet_loss(support_emb[s_in], support_labels[s_in] - 1, query_emb[q_in], query_labels[q_in] - 1,
                                  n_way - 1, scale)
        loss = loss + typing
    return loss, acc
