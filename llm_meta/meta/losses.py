"""Episode losses of the language model: what the inner loop of `llm_meta.meta.core` minimises.

A sequence task (`Examples`: one label per text) is scored on the mean-pooled text embedding; a
token task (`WordExamples`: one label per word, NER) on each word's first sub-token. Which one is
said by the examples' type (`examples.token_level`), never guessed from the texts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_meta.meta.core import InnerConfig, Loss
from llm_meta.data.episodes import Examples
from llm_meta.meta.heads import head_logits
from llm_meta.modeling.models import Body, Params, embed, embed_texts, tokenize
from llm_meta.modeling.words import align_groups, align_words, embed_words, word_embeddings, word_labels
from llm_meta.meta.token_heads import token_loss_and_accuracy, word_loss_and_accuracy


@torch.no_grad()
def labelled_embeddings(body: Body, params: Params, examples: Examples) -> tuple[Tensor, Tensor]:
    """(embeddings [M, hidden], class ids [M]) of every labelled unit: M texts, or for a token task
    the M words the tokenizer kept."""
    if examples.token_level:
        return embed_words(body, params, examples.texts, examples.labels)
    return embed_texts(body, params, examples.texts), torch.tensor(examples.labels, device=body.device)


def loss_and_accuracy(body: Body, params: Params, examples: Examples, scale: float, batch=None
                      ) -> tuple[Tensor, Tensor]:
    """Cross-entropy and accuracy (scalars) of the head in `params` on `examples` (`batch`: their
    tokenisation, when the caller already has it); per word for a token task."""
    if examples.token_level:
        return token_loss_and_accuracy(body, params, examples.texts, examples.labels, scale, batch)
    batch = batch if batch is not None else tokenize(body, examples.texts)
    logits = head_logits(params, embed(body, params, batch).float(), scale)
    target = torch.tensor(examples.labels, device=logits.device)
    return F.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean()


def support_loss_fn(body: Body, params: Params, support: Examples, cfg: InnerConfig) -> Loss:
    """The inner-loop loss `loss(fast, idx)` on a batch of support indices, for adapting from `params`.

    With `cfg.proximal` = λ it adds λ‖φ − θ‖² over the LoRA tensors, θ = `params` held constant
    (a first-order proximal pull; `algorithms.maml` refuses it with second-order gradients, where
    iMAML's term would need θ differentiable). `cfg.train_lora` False: the body is fixed, so the
    support set is embedded once and only the head's loss is computed per step.
    """
    if cfg.train_lora:
        tokenized: dict[tuple[int, ...], object] = {}  # the same batch recurs at every step
        anchor = {k: v.detach() for k, v in params.items() if k in body.lora_names} if cfg.proximal else {}

        def loss(fast: Params, idx: list[int]) -> Tensor:
            batch = support.subset(idx)
            key = tuple(idx)
            if key not in tokenized:
                tokenized[key] = align_groups(body, batch.texts) if batch.token_level else tokenize(body, batch.texts)
            value = loss_and_accuracy(body, fast, batch, cfg.scale, tokenized[key])[0]
            return value + cfg.proximal * sum(((fast[k] - a) ** 2).sum() for k, a in anchor.items()) if anchor \
                else value
        return loss
    if support.token_level:  # rows are words; a batch of sentence indices selects theirs
        aligned = align_words(body, support.texts)
        with torch.no_grad():
            emb = word_embeddings(body, params, aligned)
        labels = word_labels(aligned, support.labels, body.device)
        sentence = torch.tensor([s for s, _ in aligned.words], device=body.device)

        def word_loss(fast: Params, idx: list[int]) -> Tensor:
            rows = torch.isin(sentence, torch.tensor(idx, device=body.device))
            return word_loss_and_accuracy(fast, emb[rows], labels[rows], cfg.scale)[0]
        return word_loss
    emb = embed_texts(body, params, support.texts)
    labels = torch.tensor(support.labels, device=body.device)

    def head_loss(fast: Params, idx: list[int]) -> Tensor:
        return F.cross_entropy(head_logits(fast, emb[idx], cfg.scale), labels[idx])
    return head_loss


def text_lengths(examples: Examples) -> list[int]:
    """Characters (words, for a token task) of each example: the key of length-bucketed chunks."""
    return [len(t) for t in examples.texts]
