"""The task kinds on the model: what differs between a sequence task and a token task (NER) when a
start is adapted and scored, one class per kind (`llm_meta.data.kinds` says what a kind is).

A sequence task (`Examples`: one label per text) is embedded by the mean-pooled text embedding, one
row per text; a token task (`WordExamples`: one label per word, NER) by each word's first
sub-token, one row per word the tokenizer kept. The head, the inner loop's loss, ProtoNet's loss and
the queries' scores follow from that. `kind_ops(examples or episode)` gives the kind's operations;
the module functions below (the episode losses the inner loop of `llm_meta.meta.core` minimises)
ask it, and so does every other module that needs the difference: none branches on the kind.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from llm_meta.data.episodes import Episode, Examples
from llm_meta.data.kinds import SEQUENCE, TOKEN, TaskKind
from llm_meta.data.ner import io_to_bio
from llm_meta.meta.core import InnerConfig, Loss
from llm_meta.meta.heads import head_logits, proto_head, protonet_loss, prototype_head, soft_kmeans
from llm_meta.meta.spans import decomposed_head, decomposed_protonet_loss
from llm_meta.meta.token_heads import entity_counts, tag_words, token_loss_and_accuracy, word_loss_and_accuracy
from llm_meta.modeling.body import Body, Params
from llm_meta.modeling.forward import embed, embed_texts, tokenize
from llm_meta.modeling.words import align_groups, align_words, embed_words, word_embeddings, word_labels

@torch.no_grad()
def predict_logits(body: Body, fast: Params, texts: list[str], scale: float, batch_size: int = 128,
                   progress: str | None = None, cache: bool = True, what: str | None = None) -> Tensor:
    """Logits [len(texts), N] of an adapted sequence model (LoRA + head in `fast`); `progress`: a
    bar's title; `cache`: keep the texts' frozen-layer states (top-layer LoRA) for a later pass over
    them; `what`: name the texts to warn how many were truncated (`embed_texts`)."""
    emb = embed_texts(body, fast, texts, batch_size, progress, cache, what)
    return head_logits(fast, emb, scale)


class SequenceOps:
    """A sequence task: one row per text, the mean-pooled embedding, a Proto-MAML head."""

    kind: TaskKind = SEQUENCE

    def check_batches(self, cfg: InnerConfig) -> None:
        """Raise ValueError for inner-loop batch settings this kind cannot take (none here)."""

    def check_head(self, cfg: InnerConfig) -> None:
        """Raise ValueError for head settings this kind cannot take (none here: `ner_head` is NER's)."""

    def rows(self, body: Body, examples: Examples) -> int:
        """How many rows `labelled_embeddings` gives for `examples` (tokenizing at most): one per text."""
        return len(examples)

    @torch.no_grad()
    def labelled_embeddings(self, body: Body, params: Params, examples: Examples) -> tuple[Tensor, Tensor]:
        return embed_texts(body, params, examples.texts), torch.tensor(examples.labels, device=body.device)

    def tokenize(self, body: Body, texts: list) -> object:
        """The tokenised batch `loss_and_accuracy` takes (kept across inner steps)."""
        return tokenize(body, texts)

    def loss_and_accuracy(self, body: Body, params: Params, examples: Examples, scale: float, batch=None
                          ) -> tuple[Tensor, Tensor]:
        batch = batch if batch is not None else tokenize(body, examples.texts)
        logits = head_logits(params, embed(body, params, batch).float(), scale)
        target = torch.tensor(examples.labels, device=logits.device)
        return F.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean()

    def head_loss(self, body: Body, params: Params, support: Examples, cfg: InnerConfig) -> Loss:
        """The inner-loop loss of the head alone, the body fixed: the support set embedded once."""
        emb = embed_texts(body, params, support.texts)
        labels = torch.tensor(support.labels, device=body.device)

        def loss(fast: Params, idx: list[int]) -> Tensor:
            return F.cross_entropy(head_logits(fast, emb[idx], cfg.scale), labels[idx])
        return loss

    def head(self, emb: Tensor, labels: Tensor, n_way: int, cfg: InnerConfig) -> Params:
        """The episode's starting head from labelled embeddings [M, hidden] and class ids [M]."""
        return proto_head(emb, labels, n_way)

    def protonet_loss(self, body: Body, live: Params, episode: Episode, cfg: InnerConfig) -> tuple[Tensor, Tensor]:
        """ProtoNet's query loss and accuracy, support and query embedded in one pass."""
        both = episode.support + episode.query
        emb = embed(body, live, tokenize(body, both.texts)).float()
        ys, s = torch.tensor(both.labels, device=emb.device), len(episode.support)
        return protonet_loss(emb[:s], ys[:s], emb[s:], ys[s:], episode.n_way, cfg.scale)

    def query_correct(self, body: Body, fast: Params, support: Examples, episode: Episode, cfg: InnerConfig) -> Tensor:
        """[Q] bool: each query text classified right by the adapted `fast`. With `cfg.transductive`,
        by prototypes of `support` (the adapted support set) refined with the queries themselves
        (soft k-means, Ren et al. 2018)."""
        if cfg.transductive:
            s_emb, s_labels = self.labelled_embeddings(body, fast, support)
            q_emb = embed_texts(body, fast, episode.query.texts)
            c = soft_kmeans(s_emb, s_labels, q_emb, episode.n_way, cfg.transductive, cfg.scale,
                            cfg.transductive_confidence)
            logits = head_logits(prototype_head(c), q_emb, cfg.scale)
        else:
            logits = predict_logits(body, fast, episode.query.texts, cfg.scale)
        return logits.argmax(1).cpu() == torch.tensor(episode.query.labels)

    def query_accuracy(self, body: Body, fast: Params, support: Examples, episode: Episode, cfg: InnerConfig) -> float:
        """The query set's accuracy (a fraction) under the adapted `fast`."""
        return self.query_correct(body, fast, support, episode, cfg).float().mean().item()

    def query_outcomes(self, body: Body, fast: Params, support: Examples, episode: Episode, cfg: InnerConfig
                       ) -> np.ndarray:
        """[Q, 1]: 1.0 / 0.0 for each query text classified right (what the bootstrap resamples)."""
        return self.query_correct(body, fast, support, episode, cfg).float().numpy()[:, None].astype(np.float64)


class TokenOps(SequenceOps):
    """A token task (NER): one row per word kept by the tokenizer, its first sub-token's embedding; an
    IO head over O and the types, or (`cfg.ner_head` = "decomposed") span detection + typing."""

    kind = TOKEN

    def check_batches(self, cfg: InnerConfig) -> None:
        if cfg.chunk:  # chunks are weighted by sentences, the loss by words
            raise ValueError("inner.chunk splits batches of texts: it is for sequence tasks, not NER (set it to 0)")

    def check_head(self, cfg: InnerConfig) -> None:
        if cfg.ner_head == "decomposed" and cfg.head_init != "proto":
            raise ValueError("ner_head=decomposed builds both heads from support prototypes: use head_init=proto")

    def rows(self, body: Body, examples: Examples) -> int:
        return len(align_words(body, examples.texts, warn=False).words)  # the words the tokenizer keeps

    def labelled_embeddings(self, body: Body, params: Params, examples: Examples) -> tuple[Tensor, Tensor]:
        return embed_words(body, params, examples.texts, examples.labels)

    def tokenize(self, body: Body, texts: list) -> object:
        return align_groups(body, texts)

    def loss_and_accuracy(self, body: Body, params: Params, examples: Examples, scale: float, batch=None
                          ) -> tuple[Tensor, Tensor]:
        return token_loss_and_accuracy(body, params, examples.texts, examples.labels, scale, batch)

    def head_loss(self, body: Body, params: Params, support: Examples, cfg: InnerConfig) -> Loss:
        # Rows are words; a batch of sentence indices selects theirs.
        aligned = align_words(body, support.texts)
        with torch.no_grad():
            emb = word_embeddings(body, params, aligned)
        labels = word_labels(aligned, support.labels, body.device)
        sentence = torch.tensor([s for s, _ in aligned.words], device=body.device)

        def loss(fast: Params, idx: list[int]) -> Tensor:
            rows = torch.isin(sentence, torch.tensor(idx, device=body.device))
            return word_loss_and_accuracy(fast, emb[rows], labels[rows], cfg.scale)[0]
        return loss

    def head(self, emb: Tensor, labels: Tensor, n_way: int, cfg: InnerConfig) -> Params:
        return decomposed_head(emb, labels, n_way) if cfg.ner_head == "decomposed" else proto_head(emb, labels, n_way)

    def protonet_loss(self, body: Body, live: Params, episode: Episode, cfg: InnerConfig) -> tuple[Tensor, Tensor]:
        """Every word is an example and O a class with its own prototype; with a decomposed head, the
        detection and typing losses of `decomposed_protonet_loss`."""
        both = episode.support + episode.query
        aligned = align_words(body, both.texts)
        emb, ys = word_embeddings(body, live, aligned), word_labels(aligned, both.labels, body.device)
        s = sum(1 for sentence, _ in aligned.words if sentence < len(episode.support))
        loss_fn = decomposed_protonet_loss if cfg.ner_head == "decomposed" else protonet_loss
        return loss_fn(emb[:s], ys[:s], emb[s:], ys[s:], episode.n_way, cfg.scale)

    def query_accuracy(self, body: Body, fast: Params, support: Examples, episode: Episode, cfg: InnerConfig) -> float:
        """Word accuracy (O included) of the query sentences; their entity F1 is `query_outcomes`."""
        emb, labels = self.labelled_embeddings(body, fast, episode.query)
        return word_loss_and_accuracy(fast, emb, labels, cfg.scale)[1].item()

    def query_outcomes(self, body: Body, fast: Params, support: Examples, episode: Episode, cfg: InnerConfig
                       ) -> np.ndarray:
        """[Q, 3]: entity counts (true positives, false positives, false negatives: exact span and
        type, as seqeval counts them) of each query sentence tagged by the adapted `fast`."""
        predicted = tag_words(body, fast, episode.query.texts, cfg.scale)
        return np.array([entity_counts(io_to_bio(p, episode.label_names), io_to_bio(r, episode.label_names))
                         for p, r in zip(predicted, episode.query.labels)], dtype=np.float64).reshape(-1, 3)


OPS = {SEQUENCE.name: SequenceOps(), TOKEN.name: TokenOps()}


def kind_ops(of: Examples | Episode) -> SequenceOps:
    """The operations of the kind of `of` (examples, or an episode: its support set's kind)."""
    return OPS[of.kind.name]


def labelled_embeddings(body: Body, params: Params, examples: Examples) -> tuple[Tensor, Tensor]:
    """(embeddings [M, hidden], class ids [M]) of every labelled unit, without gradients: M texts,
    or for a token task the M words the tokenizer kept."""
    return kind_ops(examples).labelled_embeddings(body, params, examples)


def loss_and_accuracy(body: Body, params: Params, examples: Examples, scale: float, batch=None
                      ) -> tuple[Tensor, Tensor]:
    """Cross-entropy and accuracy (scalars) of the head in `params` on `examples` (`batch`: their
    tokenisation, when the caller already has it); per word for a token task."""
    return kind_ops(examples).loss_and_accuracy(body, params, examples, scale, batch)


def support_loss_fn(body: Body, params: Params, support: Examples, cfg: InnerConfig) -> Loss:
    """The inner-loop loss `loss(fast, idx)` on a batch of support indices, for adapting from `params`.

    With `cfg.proximal` = λ it adds λ‖φ − θ‖² over the LoRA tensors, θ = `params` held constant
    (a first-order proximal pull; `algorithms.maml` refuses it with second-order gradients, where
    iMAML's term would need θ differentiable). `cfg.train_lora` False: the body is fixed, so the
    support set is embedded once and only the head's loss is computed per step.
    """
    ops = kind_ops(support)
    if not cfg.train_lora:
        return ops.head_loss(body, params, support, cfg)
    tokenized: dict[tuple[int, ...], object] = {}  # the same batch recurs at every step
    anchor = {k: v.detach() for k, v in params.items() if k in body.lora_names} if cfg.proximal else {}

    def loss(fast: Params, idx: list[int]) -> Tensor:
        batch = support.subset(idx)
        key = tuple(idx)
        if key not in tokenized:
            tokenized[key] = ops.tokenize(body, batch.texts)
        value = ops.loss_and_accuracy(body, fast, batch, cfg.scale, tokenized[key])[0]
        return value + cfg.proximal * sum(((fast[k] - a) ** 2).sum() for k, a in anchor.items()) if anchor \
            else value
    return loss


def text_lengths(examples: Examples) -> list[int]:
    """Characters (words, for a token task) of each example: the key of length-bucketed chunks."""
    return [len(t) for t in examples.texts]
