"""Meta-learning algorithms as pure functions over parameter dicts.

`params` holds the LoRA tensors (the meta-parameters); an episode's fast parameters add the
per-episode head. Nothing here copies the model or writes to it: every forward pass is
`torch.func.functional_call` on a dict. Each algorithm maps (body, params, episode, cfg) to a
meta-gradient dict over the LoRA tensors, which the recipe averages over the meta-batch (and
across processes) before the outer optimiser step.

The core is written over loss closures (`support_loss(fast, idx)`, `query(fast)`), not over
the language model: `maml_gradient`, `reptile_gradient` and `inner_loop` run unchanged on the
sinusoid MLP of `recipes/sinusoid.py`, which checks the algorithms independently of NLP.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from llm_meta.episodes import Episode, Examples
from llm_meta.heads import (HEAD_KEYS, head_logits, proto_head, prototype_head, prototypes, soft_kmeans,
                            with_label_names, zero_head)
from llm_meta.hypernet import generated_params, has_hypernet
from llm_meta.models import Body, Params, embed, embed_texts, tokenize
from llm_meta.ner import (align_words, embed_words, entity_type, is_token_level, token_loss_and_accuracy,
                          word_embeddings, word_labels)


@dataclass
class InnerConfig:
    """The inner loop: used in meta-training, validation, adaptation and the benchmark alike."""

    steps: int = 5
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | sgd
    batch_size: int = 64  # support examples per inner step (the whole support set when smaller)
    head_init: str = "proto"  # proto (Proto-MAML) | zero | label_names (prototypes = embedded label names)
    label_examples: int = 0  # add each label name, as text, this many times to the support set
    scale: float = 10.0  # inverse temperature of the head's logits
    train_lora: bool = True  # False: adapt the head only (a linear probe on the frozen body)
    proximal: float = 0.0  # λ of λ‖φ − θ‖² on the LoRA: keeps the adapted φ near its start θ (iMAML)
    # Scoring only: after adaptation, classify queries by prototypes refined with the unlabelled
    # queries themselves (soft k-means iterations; 0: off, the adapted head decides).
    transductive: int = 0
    transductive_confidence: float = 0.0  # queries less sure than this stay out of the refinement
    second_order: bool = False  # metasgd only: differentiate through the inner gradients (maml always does)
    # Texts per forward pass (0: the whole batch in one). Each batch, and FOMAML's query set, is cut
    # shortest-first into chunks of at most this many texts whose gradients are summed: the same
    # gradient as one pass, but only one chunk's activations are alive at a time (full-way episodes
    # fit in memory) and short intents are never padded to the length of a long topic text.
    chunk: int = 0


@dataclass
class StepStats:
    """What one episode reports to the progress bar: loss and accuracy on its query set."""

    loss: float
    accuracy: float


def init_head(body: Body, params: Params, support: Examples, n_way: int, cfg: InnerConfig,
              label_names: list[str] | None = None) -> Params:
    """The episode's head at the start of the inner loop (a constant: no gradient flows into it)."""
    if cfg.head_init == "zero":
        return zero_head(body.hidden_size, n_way, body.device)
    if cfg.head_init == "label_names":
        support = with_label_names(Examples([], []), _need_names(label_names, cfg), 1)
    elif cfg.head_init != "proto":
        raise ValueError(f"head_init must be 'proto', 'zero' or 'label_names', got {cfg.head_init!r}")
    emb, labels = labelled_embeddings(body, params, support)
    return proto_head(emb, labels, n_way)


@torch.no_grad()
def labelled_embeddings(body: Body, params: Params, examples: Examples) -> tuple[Tensor, Tensor]:
    """(embeddings, class ids) of every labelled unit: each text, or each word of a token task."""
    if is_token_level(examples.texts):
        return embed_words(body, params, examples.texts, examples.labels)
    return embed_texts(body, params, examples.texts), torch.tensor(examples.labels, device=body.device)


def _need_names(label_names: list[str] | None, cfg: InnerConfig) -> list[str]:
    if label_names is None:
        raise ValueError(f"head_init={cfg.head_init!r} / label_examples={cfg.label_examples} need the label names")
    return label_names


def loss_and_accuracy(body: Body, params: Params, texts: list[str], labels: list[int], scale: float,
                      batch=None) -> tuple[Tensor, Tensor]:
    """Cross-entropy and accuracy of the head in `params` on a batch of texts (`batch`: their
    tokenisation, when the caller already has it). Token tasks: texts are word lists, labels per word."""
    if is_token_level(texts):
        return token_loss_and_accuracy(body, params, texts, labels, scale, batch)
    batch = batch if batch is not None else tokenize(body, texts)
    logits = head_logits(params, embed(body, params, batch).float(), scale)
    target = torch.tensor(labels, device=logits.device)
    return F.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean()


def _batches(n: int, batch_size: int, steps: int, seed: int, lengths: list[int] | None = None) -> list[list[int]]:
    """Example indices for each inner step: the full set when it fits, else seeded shuffled passes.
    With `lengths`, each batch is ordered shortest first, so its chunks (`_chunks`) are length buckets."""
    if n <= batch_size:
        batches = [list(range(n))] * steps
    else:
        g = torch.Generator().manual_seed(seed)
        order: list[int] = []
        while len(order) < steps * batch_size:
            order += torch.randperm(n, generator=g).tolist()
        batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]
    return batches if lengths is None else [sorted(b, key=lambda i: lengths[i]) for b in batches]


def _lengths(examples: Examples) -> list[int]:
    return [len(t) for t in examples.texts]


def _chunks(idx: list[int], size: int) -> list[list[int]]:
    """`idx` cut into consecutive pieces of at most `size` (0: one piece)."""
    return [idx] if size <= 0 or len(idx) <= size else [idx[i : i + size] for i in range(0, len(idx), size)]


def summed_grad(losses: Iterable[tuple[Tensor, float]], wrt: list[Tensor], create_graph: bool = False
                ) -> tuple[Tensor, ...]:
    """Σ w·∇loss over (loss, w) pairs, one backward each. `losses` is consumed lazily, so a chunk's
    forward runs only after the previous chunk's graph is freed: with w = chunk size / batch size
    this is the gradient of the batch's mean loss at the memory of one chunk."""
    total: tuple[Tensor, ...] | None = None
    for value, weight in losses:
        g = torch.autograd.grad(value * weight, wrt, create_graph=create_graph)
        total = g if total is None else tuple(a + b for a, b in zip(total, g))
    assert total is not None, "summed_grad needs at least one loss"
    return total


def support_loss_fn(body: Body, params: Params, support: Examples, cfg: InnerConfig) -> Loss:
    """The inner-loop loss on a batch of support indices, for adapting from `params`."""
    if cfg.train_lora:
        tokenized: dict[tuple[int, ...], object] = {}  # the same batch recurs at every step

        anchor = {k: v.detach() for k, v in params.items() if k in body.lora_names} if cfg.proximal else {}

        def loss(fast: Params, idx: list[int]) -> Tensor:
            texts, labels = [support.texts[i] for i in idx], [support.labels[i] for i in idx]
            key = tuple(idx)
            if key not in tokenized:
                tokenized[key] = align_words(body, texts) if is_token_level(texts) else tokenize(body, texts)
            value = loss_and_accuracy(body, fast, texts, labels, cfg.scale, tokenized[key])[0]
            return value + cfg.proximal * sum(((fast[k] - a) ** 2).sum() for k, a in anchor.items()) if anchor \
                else value
        return loss
    # Head only: the body is fixed, so embed the support set once instead of at every step.
    if is_token_level(support.texts):  # rows are words; a batch of sentence indices selects theirs
        aligned = align_words(body, support.texts)
        with torch.no_grad():
            emb = word_embeddings(body, params, aligned)
        labels = word_labels(aligned, support.labels, body.device)
        sentence = torch.tensor([s for s, _ in aligned.words], device=body.device)

        def word_loss(fast: Params, idx: list[int]) -> Tensor:
            rows = torch.isin(sentence, torch.tensor(idx, device=body.device))
            return F.cross_entropy(head_logits(fast, emb[rows], cfg.scale), labels[rows])
        return word_loss
    emb = embed_texts(body, params, support.texts)
    labels = torch.tensor(support.labels, device=body.device)

    def head_loss(fast: Params, idx: list[int]) -> Tensor:
        return F.cross_entropy(head_logits(fast, emb[idx], cfg.scale), labels[idx])
    return head_loss


def _episode_start(body: Body, params: Params, support: Examples, n_way: int, cfg: InnerConfig,
                   label_names: list[str] | None, head: Params | None = None) -> tuple[Examples, Params]:
    """The support set the inner loop trains on (label names added if asked) and the fresh head."""
    if cfg.chunk and is_token_level(support.texts):  # chunks are weighted by sentences, the loss by words
        raise ValueError("inner.chunk splits batches of texts: it is for sequence tasks, not NER (set it to 0)")
    if cfg.label_examples:
        if is_token_level(support.texts):
            raise ValueError("inner.label_examples adds label names as texts: it is for sequence tasks, not NER")
        support = with_label_names(support, _need_names(label_names, cfg), cfg.label_examples)
    weights = {k: v.detach() for k, v in params.items() if not k.startswith(LR_PREFIX)}
    return support, head if head is not None else init_head(body, weights, support, n_way, cfg, label_names)


def adapt(body: Body, params: Params, support: Examples, n_way: int, cfg: InnerConfig, seed: int = 0,
          head: Params | None = None, label_names: list[str] | None = None) -> Params:
    """The inner loop: `cfg.steps` optimiser steps on the support set from `params` (+ a fresh head).

    Returns detached fast parameters (LoRA + head). First-order: the graph of each step is
    dropped, so memory does not grow with the number of steps. `params` is not modified. Meta-SGD
    learning rates in `params` (keys `LR_PREFIX + name`) replace `cfg.lr` tensor by tensor. A
    hypernetwork in `params` first writes the starting LoRA from the support set (zero steps: the
    generated adapter with a prototype head).
    """
    if has_hypernet(params):
        with torch.no_grad():
            params = generated_params(body, params, support, n_way, label_names)
    support, head = _episode_start(body, params, support, n_way, cfg, label_names, head)
    weights, lrs = split_rates(params)
    trainable = [k for k in weights if cfg.train_lora] + list(HEAD_KEYS)
    fast = inner_loop({**weights, **head}, trainable, support_loss_fn(body, weights, support, cfg),
                      _batches(len(support), cfg.batch_size, cfg.steps, seed, _lengths(support)), cfg, lrs=lrs)
    return {k: t.detach() for k, t in fast.items()}


def interpolate(start: Params, trained: Params, alpha: float) -> Params:
    """The start moved a fraction α of the way to `trained` (WiSE-FT-style interpolation), in the
    weight change LoRA makes: ΔW(α) = ΔW0 + α(ΔW − ΔW0), not in its factors.

    LoRA's ΔW = BA is a product, so interpolating A and B both would move ΔW by about α², not α.
    Here B is interpolated, B0 + α(B − B0), and A is the trained one: ΔW(α) = B0·A + α(B − B0)·A,
    which is exactly ΔW0 + α(ΔW − ΔW0) when the start's B0 is zero (every untrained LoRA: ΔW0 = 0)
    or A did not move. Every other tensor (head, learned rates) is (1 − α)θ0 + αθ. α = 0 gives the
    start and α = 1 the trained tensors exactly, bit for bit; tensors `start` lacks are kept.
    """
    if alpha == 0:
        return {k: start.get(k, v) for k, v in trained.items()}
    if alpha == 1:
        return dict(trained)
    return {k: v if k not in start or "lora_A" in k else (1 - alpha) * start[k] + alpha * v
            for k, v in trained.items()}


def outer_lr(base: float, step: int, total: int, warmup: int = 0, schedule: str = "constant") -> float:
    """The outer learning rate at `step` (0-based): linear warm-up over `warmup` steps, then
    constant or cosine decay to 0 at `total`. A pure function of the step, so resuming needs no state."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"outer.schedule must be constant or cosine, got {schedule!r}")
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


LR_PREFIX = "lr."  # Meta-SGD: params["lr." + name] is the learned inner learning rate of tensor `name`
Loss = Callable[[Params, list[int]], Tensor]


def split_rates(params: Params) -> tuple[Params, Params | None]:
    """(weights, Meta-SGD learning rates keyed by the weight they apply to, or None when absent)."""
    lrs = {k[len(LR_PREFIX):]: v for k, v in params.items() if k.startswith(LR_PREFIX)}
    return {k: v for k, v in params.items() if not k.startswith(LR_PREFIX)}, lrs or None


def inner_loop(start: Params, trainable: list[str], loss: Loss, batches: list[list[int]], cfg: InnerConfig,
               lrs: Params | None = None, second_order: bool = False) -> Params:
    """One optimiser step (cfg.optimizer, cfg.lr) on the `trainable` tensors per batch of indices.

    A hand-written Adam/SGD over plain tensors: torch.optim would need leaf parameters and
    in-place updates, which the functional, dict-based inner loop avoids.

    - Plain (no `lrs`, first order): every step is detached; memory is constant in the steps.
    - `lrs` (Meta-SGD): step k uses rate lrs[k]; the fast weights stay a function of `start`
      and the rates, so a query loss can be differentiated back to both. The updates themselves
      are constants (first order) unless `second_order`.
    - `second_order` (MAML): the inner gradients are differentiated too (create_graph), so the
      graph, and memory, grows with every step.
    Tensors of `start` that require grad are used as they are (graph kept to the meta-parameters).
    """
    if cfg.optimizer not in ("adam", "sgd"):
        raise ValueError(f"inner.optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")
    graph = second_order or lrs is not None
    fast = {k: v if graph and v.requires_grad else v.detach().clone().requires_grad_(k in trainable)
            for k, v in start.items()}
    m = {k: torch.zeros_like(fast[k]) for k in trainable}
    v = {k: torch.zeros_like(fast[k]) for k in trainable}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t, idx in enumerate(batches, start=1):
        grads = summed_grad(((loss(fast, part), len(part) / len(idx)) for part in _chunks(idx, cfg.chunk)),
                            [fast[k] for k in trainable], create_graph=second_order)
        with torch.set_grad_enabled(second_order):
            for k, g in zip(trainable, grads):
                if cfg.optimizer == "sgd":
                    update = g
                else:  # out of place, so the second-order graph through the moments stays valid
                    m[k] = beta1 * m[k] + (1 - beta1) * g
                    v[k] = beta2 * v[k] + (1 - beta2) * g * g
                    v_hat = v[k] / (1 - beta2**t)
                    # sqrt'(0) is infinite: a tensor entry with zero gradient would make the
                    # second-order graph NaN, so take the root only where v > 0 (same values).
                    root = torch.where(v_hat > 0, v_hat, 1.0).sqrt() * (v_hat > 0) if second_order else v_hat.sqrt()
                    update = (m[k] / (1 - beta1**t)) / (root + eps)
                if lrs is not None and k in lrs:
                    with torch.enable_grad():  # the rate stays differentiable even for a constant update
                        fast[k] = fast[k] - lrs[k] * update
                elif graph:
                    with torch.enable_grad():
                        fast[k] = fast[k] - cfg.lr * update
                else:
                    fast[k] = (fast[k] - cfg.lr * update).requires_grad_(True)
    return fast


def maml_gradient(params: Params, head: Params, trainable: list[str], support_loss: Loss,
                  query: Callable[..., tuple[Tensor, Tensor]], batches: list[list[int]], cfg: InnerConfig,
                  second_order: bool = False, query_parts: list[list[int]] | None = None
                  ) -> tuple[Params, Tensor, Tensor]:
    """MAML's meta-gradient of the query loss after the inner loop, w.r.t. every tensor in `params`.

    `params` are the meta-parameters (weights, plus Meta-SGD rates under LR_PREFIX); `head` holds
    per-episode tensors the inner loop trains but that get no meta-gradient. `query(fast)` returns
    (loss, metric). First order without rates: the gradient at the adapted weights (FOMAML); with
    `query_parts` (query indices in chunks) it is summed chunk by chunk from `query(fast, part)`.
    Returns (gradients, query loss, query metric), both detached.
    """
    weights, lrs = split_rates(params)
    if second_order or lrs is not None:
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        weights, lrs = split_rates(leaves)
        fast = inner_loop({**weights, **head}, trainable, support_loss, batches, cfg, lrs, second_order)
        loss, metric = query(fast)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        grads = {k: g if g is not None else torch.zeros_like(leaves[k]) for k, g in zip(leaves, grads)}
    else:
        fast = inner_loop({**weights, **head}, trainable, support_loss, batches, cfg)
        fast = {k: t.detach().requires_grad_(k in weights) for k, t in fast.items()}
        wrt = [fast[k] for k in weights]
        if query_parts:  # one backward per chunk of queries: the same gradient, one chunk's memory
            n, seen = sum(map(len, query_parts)), []

            def chunk_losses() -> Iterable[tuple[Tensor, float]]:
                for part in query_parts:
                    value, part_metric = query(fast, part)
                    seen.append((value.detach() * len(part) / n, part_metric.detach() * len(part) / n))
                    yield value, len(part) / n
            grads = dict(zip(weights, summed_grad(chunk_losses(), wrt)))
            loss, metric = sum(v for v, _ in seen), sum(m for _, m in seen)
        else:
            loss, metric = query(fast)
            grads = dict(zip(weights, torch.autograd.grad(loss, wrt)))
    return grads, loss.detach(), metric.detach()


def reptile_gradient(params: Params, head: Params, trainable: list[str], loss: Loss, batches: list[list[int]],
                     cfg: InnerConfig) -> tuple[Params, Params]:
    """Reptile's meta-gradient θ - θ' after the inner loop on `loss`, and the adapted tensors θ'."""
    fast = inner_loop({**params, **head}, trainable, loss, batches, cfg)
    return {k: params[k].detach() - fast[k].detach() for k in params}, fast


def _maml(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int,
          second_order: bool) -> tuple[Params, StepStats]:
    support, head = _episode_start(body, params, episode.support, episode.n_way, cfg, episode.label_names)
    weights, _ = split_rates(params)
    trainable = [k for k in weights if cfg.train_lora] + list(HEAD_KEYS)

    q = episode.query

    def query(fast: Params, idx: list[int] | None = None) -> tuple[Tensor, Tensor]:
        idx = range(len(q)) if idx is None else idx
        return loss_and_accuracy(body, fast, [q.texts[i] for i in idx], [q.labels[i] for i in idx], cfg.scale)
    parts = _chunks(sorted(range(len(q)), key=_lengths(q).__getitem__), cfg.chunk)
    # Fused attention kernels have no double backward; the math kernel computes the same values.
    with sdpa_kernel(SDPBackend.MATH) if second_order else contextlib.nullcontext():
        grads, loss, acc = maml_gradient(params, head, trainable, support_loss_fn(body, weights, support, cfg), query,
                                         _batches(len(support), cfg.batch_size, cfg.steps, seed, _lengths(support)),
                                         cfg, second_order, query_parts=parts if len(parts) > 1 else None)
    return grads, StepStats(loss.item(), acc.item())


def fomaml(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """First-order MAML: the meta-gradient is the query-loss gradient at the adapted parameters."""
    return _maml(body, params, episode, cfg, seed, second_order=False)


def maml(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """Second-order MAML: the query loss differentiated through every inner step (memory grows with steps)."""
    return _maml(body, params, episode, cfg, seed, second_order=True)


def metasgd(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """Meta-SGD: MAML whose `params` also hold one learned inner learning rate per tensor
    (`meta_sgd_rates`); first order unless `cfg.second_order`."""
    if split_rates(params)[1] is None:
        raise ValueError("metasgd needs learned rates in params (see meta_sgd_rates)")
    return _maml(body, params, episode, cfg, seed, second_order=cfg.second_order)


def meta_sgd_rates(weights: Params, lr: float) -> Params:
    """Meta-SGD's initial rates: one scalar per LoRA tensor and per head tensor, all `lr`."""
    device = next(iter(weights.values())).device
    return {LR_PREFIX + k: torch.tensor(float(lr), device=device) for k in [*weights, *HEAD_KEYS]}


def reptile(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """Reptile: adapt on all the episode's examples; the meta-gradient is θ - θ'.

    An outer SGD step with learning rate ε then gives exactly θ + ε(θ' - θ); any other outer
    optimiser treats θ - θ' as a gradient. The reported loss/accuracy are measured on the query
    part after adaptation; Reptile trained on it, so they are optimistic, training-set figures.
    """
    both = Examples(episode.support.texts + episode.query.texts, episode.support.labels + episode.query.labels)
    both, head = _episode_start(body, params, both, episode.n_way, cfg, episode.label_names)
    trainable = [k for k in params if cfg.train_lora] + list(HEAD_KEYS)
    grads, fast = reptile_gradient(params, head, trainable, support_loss_fn(body, params, both, cfg),
                                   _batches(len(both), cfg.batch_size, cfg.steps, seed, _lengths(both)), cfg)
    with torch.no_grad():
        loss, acc = loss_and_accuracy(body, fast, episode.query.texts, episode.query.labels, cfg.scale)
    return grads, StepStats(loss.item(), acc.item())


def protonet_loss(support_emb: Tensor, support_labels: Tensor, query_emb: Tensor, query_labels: Tensor, n_way: int,
                  scale: float) -> tuple[Tensor, Tensor]:
    """Prototypical networks: cross-entropy of -scale·‖q - c_k‖² over the support prototypes c_k."""
    c = prototypes(support_emb, support_labels, n_way)
    logits = -scale * ((query_emb.unsqueeze(1) - c.unsqueeze(0)) ** 2).sum(-1)
    return F.cross_entropy(logits, query_labels), (logits.argmax(1) == query_labels).float().mean()


def protonet(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """ProtoNet meta-training: no inner loop; the gradient flows through the prototypes and the queries."""
    live = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    texts = episode.support.texts + episode.query.texts
    labels = episode.support.labels + episode.query.labels
    if is_token_level(texts):  # every word is an example; O is a class with its own prototype
        aligned = align_words(body, texts)
        emb, ys = word_embeddings(body, live, aligned), word_labels(aligned, labels, body.device)
        s = sum(1 for sentence, _ in aligned.words if sentence < len(episode.support))
    else:
        emb = embed(body, live, tokenize(body, texts)).float()
        ys, s = torch.tensor(labels, device=emb.device), len(episode.support)
    loss, acc = protonet_loss(emb[:s], ys[:s], emb[s:], ys[s:], episode.n_way, cfg.scale)
    grads = dict(zip(live, torch.autograd.grad(loss, list(live.values()))))
    return grads, StepStats(loss.item(), acc.item())


TRANSFER_PREFIX = "transfer."


def transfer_head_key(task: str, label: str) -> str:
    """Key of one class's row ([hidden + 1]: weight and bias) in the transfer baseline's heads."""
    return f"{TRANSFER_PREFIX}{task}.{label}"


def transfer(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """Multi-task supervised training (the transfer baseline), no inner loop.

    Every example of the episode is classified over *all* meta-train classes of its dataset by a
    persistent per-dataset head kept in `params` (one row per class, see `transfer_head_key`);
    the gradient covers LoRA and that head. Same episodes as meta-learning, so same data.
    """
    prefix = f"{TRANSFER_PREFIX}{episode.task}."
    rows = sorted(k for k in params if k.startswith(prefix))
    keys = [k for k in params if not k.startswith(TRANSFER_PREFIX)] + rows
    live = {k: params[k].detach().requires_grad_(True) for k in keys}
    table = torch.stack([live[k] for k in rows])  # [classes, hidden + 1]
    head = {"head.weight": table[:, :-1], "head.bias": table[:, -1]}
    to_row = [rows.index(prefix + name) for name in episode.label_names]
    texts = episode.support.texts + episode.query.texts
    labels = [[to_row[y] for y in ys] if isinstance(ys, list) else to_row[ys]  # per word for NER
              for ys in episode.support.labels + episode.query.labels]
    loss, acc = loss_and_accuracy(body, {**live, **head}, texts, labels, cfg.scale)
    grads = dict(zip(keys, torch.autograd.grad(loss, [live[k] for k in keys])))
    return {k: grads.get(k, torch.zeros_like(v)) for k, v in params.items()}, StepStats(loss.item(), acc.item())


@torch.no_grad()
def transfer_heads(body: Body, params: Params, task: str, pool: dict[str, list[str]], per_class: int = 16) -> Params:
    """Initial transfer-baseline heads for one dataset: Proto-MAML rows from up to `per_class`
    texts per class, the same head initialisation every other method gets."""
    labels = sorted(pool)
    texts = [t for label in labels for t in pool[label][:per_class]]
    ys = torch.tensor([y for y, label in enumerate(labels) for _ in pool[label][:per_class]], device=body.device)
    head = proto_head(embed_texts(body, params, texts), ys, len(labels))
    return {transfer_head_key(task, label): torch.cat([head["head.weight"][y], head["head.bias"][y : y + 1]])
            for y, label in enumerate(labels)}


@torch.no_grad()
def ner_transfer_heads(body: Body, params: Params, task: str, sentences: list, types: list[str],
                       max_sentences: int = 200) -> Params:
    """The transfer baseline's NER head: one Proto-MAML row per class (O and every meta-training
    type) from the words of up to `max_sentences` training sentences."""
    names = ["O", *types]
    index = {t: y for y, t in enumerate(names)}
    part = sentences[:max_sentences]
    emb, ys = embed_words(body, params, [s.tokens for s in part],
                          [[index.get(entity_type(t), 0) for t in s.tags] for s in part])
    head = proto_head(emb, ys, len(names))
    return {transfer_head_key(task, name): torch.cat([head["head.weight"][y], head["head.bias"][y : y + 1]])
            for y, name in enumerate(names)}


Algorithm = Callable[[Body, Params, Episode, InnerConfig, int], tuple[Params, StepStats]]
def through_hypernet(algorithm: Algorithm) -> Algorithm:
    """`algorithm` run from the LoRA the hypernetwork in `params` writes for the episode's support
    set; its gradient w.r.t. that LoRA is carried back to the hypernetwork and to θ0 (chain rule).

    Over `protonet` this is end-to-end training of the generator with a ProtoNet (= Proto-MAML at
    zero steps) query loss; over `fomaml` the generated adapter is the start of the inner loop and
    the first-order meta-gradient flows back through the generator."""
    def hyper_algorithm(body: Body, params: Params, episode: Episode, cfg: InnerConfig,
                        seed: int = 0) -> tuple[Params, StepStats]:
        live = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        start = generated_params(body, live, episode.support, episode.n_way, episode.label_names)
        grads_at_start, stats = algorithm(body, {k: v.detach() for k, v in start.items()}, episode, cfg, seed)
        keys = list(grads_at_start)
        grads = torch.autograd.grad([start[k] for k in keys], list(live.values()),
                                    grad_outputs=[grads_at_start[k] for k in keys], allow_unused=True)
        return {k: g if g is not None else torch.zeros_like(live[k]) for k, g in zip(live, grads)}, stats
    hyper_algorithm.__name__ = f"hypernet_{algorithm.__name__}"
    return hyper_algorithm


ALGORITHMS: dict[str, Algorithm] = {"fomaml": fomaml, "maml": maml, "metasgd": metasgd, "reptile": reptile,
                                    "protonet": protonet, "transfer": transfer,
                                    "hypernet": through_hypernet(protonet), "hypernet+fomaml": through_hypernet(fomaml)}


@torch.no_grad()
def predict_logits(body: Body, fast: Params, texts: list[str], scale: float, batch_size: int = 128) -> Tensor:
    """Logits [len(texts), N] of an adapted model (LoRA + head in `fast`)."""
    emb = embed_texts(body, fast, texts, batch_size)
    return head_logits(fast, emb, scale)


def episode_accuracy(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> float:
    """Query accuracy after adapting `params` on the episode's support set (the evaluation protocol)."""
    if is_token_level(episode.query.texts):  # word-level accuracy (entity F1: evaluation.episode_entity_f1)
        fast = adapt(body, params, episode.support, episode.n_way, cfg, seed, label_names=episode.label_names)
        emb, labels = labelled_embeddings(body, fast, episode.query)
        return (head_logits(fast, emb, cfg.scale).argmax(1) == labels).float().mean().item()
    return query_correct(body, params, episode, cfg, seed).float().mean().item()


def query_correct(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> Tensor:
    """[Q] bool: whether each query text of a sequence episode is classified right after adapting
    `params` on its support set (the unit the benchmark's bootstrap resamples)."""
    fast = adapt(body, params, episode.support, episode.n_way, cfg, seed, label_names=episode.label_names)
    if cfg.transductive:
        support, _ = _episode_start(body, params, episode.support, episode.n_way, cfg, episode.label_names, head={})
        s_emb, s_labels = labelled_embeddings(body, fast, support)
        q_emb = embed_texts(body, fast, episode.query.texts)
        c = soft_kmeans(s_emb, s_labels, q_emb, episode.n_way, cfg.transductive, cfg.scale, cfg.transductive_confidence)
        logits = head_logits(prototype_head(c), q_emb, cfg.scale)
    else:
        logits = predict_logits(body, fast, episode.query.texts, cfg.scale)
    return logits.argmax(1).cpu() == torch.tensor(episode.query.labels)


def check_finite(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(f"{what} is {value}")
