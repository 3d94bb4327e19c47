"""Meta-learning algorithms as pure functions over parameter dicts.

`params` holds the LoRA tensors (the meta-parameters); an episode's fast parameters add the
per-episode head. Nothing here copies the model or writes to it: every forward pass is
`torch.func.functional_call` on a dict. Each algorithm maps (body, params, episode, cfg) to a
meta-gradient dict over the LoRA tensors, which the recipe averages over the meta-batch (and
across processes) before the outer optimiser step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_meta.episodes import Episode, Examples
from llm_meta.heads import HEAD_KEYS, head_logits, proto_head, with_label_names, zero_head
from llm_meta.models import Body, Params, embed, embed_texts, tokenize


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
    emb = embed_texts(body, params, support.texts)
    return proto_head(emb, torch.tensor(support.labels, device=body.device), n_way)


def _need_names(label_names: list[str] | None, cfg: InnerConfig) -> list[str]:
    if label_names is None:
        raise ValueError(f"head_init={cfg.head_init!r} / label_examples={cfg.label_examples} need the label names")
    return label_names


def loss_and_accuracy(body: Body, params: Params, texts: list[str], labels: list[int], scale: float) -> tuple[Tensor, Tensor]:
    """Cross-entropy and accuracy of the head in `params` on a batch of texts."""
    logits = head_logits(params, embed(body, params, tokenize(body, texts)).float(), scale)
    target = torch.tensor(labels, device=logits.device)
    return F.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean()


def _batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Example indices for each inner step: the full set when it fits, else seeded shuffled passes."""
    if n <= batch_size:
        return [list(range(n))] * steps
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order += torch.randperm(n, generator=g).tolist()
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def adapt(body: Body, params: Params, support: Examples, n_way: int, cfg: InnerConfig, seed: int = 0,
          head: Params | None = None, label_names: list[str] | None = None) -> Params:
    """The inner loop: `cfg.steps` optimiser steps on the support set from `params` (+ a fresh head).

    Returns detached fast parameters (LoRA + head). First-order: the graph of each step is
    dropped, so memory does not grow with the number of steps. `params` is not modified.
    """
    if cfg.label_examples:
        support = with_label_names(support, _need_names(label_names, cfg), cfg.label_examples)
    head = head if head is not None else init_head(body, params, support, n_way, cfg, label_names)
    trainable = [k for k in params if cfg.train_lora] + list(HEAD_KEYS)
    if cfg.train_lora:
        def loss(fast: Params, idx: list[int]) -> Tensor:
            texts, labels = [support.texts[i] for i in idx], [support.labels[i] for i in idx]
            return loss_and_accuracy(body, fast, texts, labels, cfg.scale)[0]
    else:
        # Head only: the body is fixed, so embed the support set once instead of at every step.
        emb = embed_texts(body, params, support.texts)
        labels = torch.tensor(support.labels, device=body.device)

        def loss(fast: Params, idx: list[int]) -> Tensor:
            return F.cross_entropy(head_logits(fast, emb[idx], cfg.scale), labels[idx])
    return inner_loop({**params, **head}, trainable, loss, _batches(len(support), cfg.batch_size, cfg.steps, seed), cfg)


def inner_loop(start: Params, trainable: list[str], loss: Callable[[Params, list[int]], Tensor],
               batches: list[list[int]], cfg: InnerConfig) -> Params:
    """One optimiser step (cfg.optimizer, cfg.lr) on the `trainable` tensors per batch of indices.

    A hand-written Adam/SGD over plain tensors: torch.optim would need leaf parameters and
    in-place updates, which the functional, dict-based inner loop avoids.
    """
    if cfg.optimizer not in ("adam", "sgd"):
        raise ValueError(f"inner.optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")
    fast = {k: (v.detach().clone().requires_grad_(k in trainable)) for k, v in start.items()}
    m = {k: torch.zeros_like(fast[k]) for k in trainable}
    v = {k: torch.zeros_like(fast[k]) for k in trainable}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t, idx in enumerate(batches, start=1):
        grads = dict(zip(trainable, torch.autograd.grad(loss(fast, idx), [fast[k] for k in trainable])))
        with torch.no_grad():
            for k in trainable:
                if cfg.optimizer == "sgd":
                    update = grads[k]
                else:
                    m[k].mul_(beta1).add_(grads[k], alpha=1 - beta1)
                    v[k].mul_(beta2).addcmul_(grads[k], grads[k], value=1 - beta2)
                    update = (m[k] / (1 - beta1**t)) / ((v[k] / (1 - beta2**t)).sqrt() + eps)
                fast[k] = (fast[k] - cfg.lr * update).requires_grad_(True)
    return {k: t.detach() for k, t in fast.items()}


def fomaml(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """First-order MAML: the meta-gradient is the query-loss gradient at the adapted parameters."""
    fast = adapt(body, params, episode.support, episode.n_way, cfg, seed, label_names=episode.label_names)
    fast = {k: t.requires_grad_(k in params) for k, t in fast.items()}
    loss, acc = loss_and_accuracy(body, fast, episode.query.texts, episode.query.labels, cfg.scale)
    grads = torch.autograd.grad(loss, [fast[k] for k in params])
    return dict(zip(params, grads)), StepStats(loss.item(), acc.item())


def reptile(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """Reptile: adapt on all the episode's examples; the meta-gradient is θ - θ'.

    An outer SGD step with learning rate ε then gives exactly θ + ε(θ' - θ); any other outer
    optimiser treats θ - θ' as a gradient. The reported loss/accuracy are measured on the query
    part after adaptation; Reptile trained on it, so they are optimistic, training-set figures.
    """
    both = Examples(episode.support.texts + episode.query.texts, episode.support.labels + episode.query.labels)
    fast = adapt(body, params, both, episode.n_way, cfg, seed, label_names=episode.label_names)
    with torch.no_grad():
        loss, acc = loss_and_accuracy(body, fast, episode.query.texts, episode.query.labels, cfg.scale)
    return {k: params[k] - fast[k] for k in params}, StepStats(loss.item(), acc.item())


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
    labels = [to_row[y] for y in episode.support.labels + episode.query.labels]
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


Algorithm = Callable[[Body, Params, Episode, InnerConfig, int], tuple[Params, StepStats]]
ALGORITHMS: dict[str, Algorithm] = {"fomaml": fomaml, "reptile": reptile, "transfer": transfer}


@torch.no_grad()
def predict_logits(body: Body, fast: Params, texts: list[str], scale: float, batch_size: int = 128) -> Tensor:
    """Logits [len(texts), N] of an adapted model (LoRA + head in `fast`)."""
    emb = embed_texts(body, fast, texts, batch_size)
    return head_logits(fast, emb, scale)


def episode_accuracy(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> float:
    """Query accuracy after adapting `params` on the episode's support set (the evaluation protocol)."""
    fast = adapt(body, params, episode.support, episode.n_way, cfg, seed, label_names=episode.label_names)
    logits = predict_logits(body, fast, episode.query.texts, cfg.scale)
    return (logits.argmax(1).cpu() == torch.tensor(episode.query.labels)).float().mean().item()


def check_finite(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(f"{what} is {value}")
