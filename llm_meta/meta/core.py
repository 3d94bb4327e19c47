"""The meta-learning core: inner loop and meta-gradients over parameter dicts and loss closures.

Nothing here knows of text or of language models. A loss is a closure `loss(fast, idx)` over a
parameter dict and a batch of example indices; `inner_loop`, `maml_gradient` and
`reptile_gradient` run unchanged on LoRA adapters (`llm_meta.meta.algorithms`) and on the sinusoid MLP
of `recipes/sinusoid.py`, which checks them independently of NLP.

Sources: MAML and FOMAML (Finn et al. 2017), Reptile (Nichol et al. 2018), Meta-SGD (Li et al.
2017), WiSE-FT interpolation (Wortsman et al. 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor

Params = dict[str, Tensor]
Loss = Callable[[Params, list[int]], Tensor]
# Meta-SGD: params[LR_PREFIX + name] is the *log* of tensor `name`'s learned inner learning rate, so
# the rate exp(·) stays positive whatever step the outer optimiser takes.
LR_PREFIX = "log_lr."


@dataclass
class InnerConfig:
    """The inner loop: used in meta-training, validation, adaptation and the benchmark alike."""

    steps: int = 5
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | sgd
    batch_size: int = 64  # support examples per inner step (the whole support set when smaller)
    head_init: str = "proto"  # proto (Proto-MAML) | zero | label_names (prototypes = embedded label names)
    label_examples: int = 0  # add each label name, as text, this many times to the support set
    # NER only: io (one head over O and the types) | decomposed (class-agnostic span detection, then
    # typing of each detected span by type prototypes; llm_meta.meta.spans).
    ner_head: str = "io"
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


def inner_batches(n: int, batch_size: int, steps: int, seed: int, lengths: list[int] | None = None) -> list[list[int]]:
    """Example indices for each inner step: the full set when it fits, else seeded shuffled passes.
    With `lengths`, each batch is ordered shortest first, so its chunks (`chunks`) are length buckets."""
    if n <= batch_size:
        batches = [list(range(n))] * steps
    else:
        g = torch.Generator().manual_seed(seed)
        order: list[int] = []
        while len(order) < steps * batch_size:
            order += torch.randperm(n, generator=g).tolist()
        batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]
    return batches if lengths is None else [sorted(b, key=lambda i: lengths[i]) for b in batches]


def chunks(idx: list[int], size: int) -> list[list[int]]:
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


def split_rates(params: Params) -> tuple[Params, Params | None]:
    """(weights, Meta-SGD's learning rates keyed by the weight they apply to, or None when absent).

    The rates are exp of the stored log rates: positive, and differentiable w.r.t. them."""
    lrs = {k[len(LR_PREFIX):]: v.exp() for k, v in params.items() if k.startswith(LR_PREFIX)}
    return {k: v for k, v in params.items() if not k.startswith(LR_PREFIX)}, lrs or None


def meta_sgd_rates(weights: Params, lr: float, extra: Iterable[str] = ()) -> Params:
    """Meta-SGD's initial rates, stored as logs: one scalar per tensor of `weights` (and per name in
    `extra`, e.g. the episode head's), every rate `lr`. Raises ValueError unless lr > 0."""
    if not lr > 0:
        raise ValueError(f"Meta-SGD's initial inner rate (inner.lr) must be positive, got {lr}")
    device = next(iter(weights.values())).device
    return {LR_PREFIX + k: torch.tensor(math.log(lr), device=device) for k in [*weights, *extra]}


def inner_loop(start: Params, trainable: list[str], loss: Loss, batches: Iterable[list[int]], cfg: InnerConfig,
               lrs: Params | None = None, second_order: bool = False) -> Params:
    """One optimiser step (cfg.optimizer, cfg.lr) on the `trainable` tensors per batch of indices.

    A hand-written Adam/SGD over plain tensors: torch.optim would need leaf parameters and
    in-place updates, which the functional, dict-based inner loop avoids.

    - Plain (no `lrs`, first order): every step is detached; memory is constant in the steps.
    - `lrs` (Meta-SGD, Li et al. 2017): tensor k takes plain SGD steps φ_k − lrs[k]·∇_k with its
      learned rate, whatever cfg.optimizer and cfg.lr say (a tensor without a rate follows cfg);
      the fast weights stay a function of `start` and the rates, so a query loss can be
      differentiated back to both. The gradients themselves are constants (first order) unless
      `second_order`.
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
        grads = summed_grad(((loss(fast, part), len(part) / len(idx)) for part in chunks(idx, cfg.chunk)),
                            [fast[k] for k in trainable], create_graph=second_order)
        with torch.set_grad_enabled(second_order):
            for k, g in zip(trainable, grads):
                if cfg.optimizer == "sgd" or (lrs is not None and k in lrs):
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
    (loss, metric), or the loss alone (the metric is then the loss). First order without rates: the gradient at the adapted weights (FOMAML); with
    `query_parts` (query indices in chunks) it is summed chunk by chunk from `query(fast, part)`.
    Returns (gradients, query loss, query metric), both detached.
    """
    weights, lrs = split_rates(params)
    if second_order or lrs is not None:
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        weights, lrs = split_rates(leaves)
        fast = inner_loop({**weights, **head}, trainable, support_loss, batches, cfg, lrs, second_order)
        loss, metric = _with_metric(query(fast))
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
                    value, part_metric = _with_metric(query(fast, part))
                    seen.append((value.detach() * len(part) / n, part_metric.detach() * len(part) / n))
                    yield value, len(part) / n
            grads = dict(zip(weights, summed_grad(chunk_losses(), wrt)))
            loss, metric = sum(v for v, _ in seen), sum(m for _, m in seen)
        else:
            loss, metric = _with_metric(query(fast))
            grads = dict(zip(weights, torch.autograd.grad(loss, wrt)))
    return grads, loss.detach(), metric.detach()


def _with_metric(out: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return out if isinstance(out, tuple) else (out, out)


def reptile_gradient(params: Params, head: Params, trainable: list[str], loss: Loss, batches: list[list[int]],
                     cfg: InnerConfig) -> tuple[Params, Params]:
    """Reptile's meta-gradient θ - θ' after the inner loop on `loss`, and the adapted tensors θ'."""
    fast = inner_loop({**params, **head}, trainable, loss, batches, cfg)
    return {k: params[k].detach() - fast[k].detach() for k in params}, fast


