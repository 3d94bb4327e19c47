"""Meta-learning algorithms over LoRA adapters, as pure functions over parameter dicts, and their registry.

`params` holds the LoRA tensors (the meta-parameters); an episode's fast parameters add the
per-episode head. Nothing here copies the model or writes to it: every forward pass is
`torch.func.functional_call` on a dict. Each algorithm maps (body, params, episode, cfg, seed) to
a meta-gradient dict over `params` and the episode's query loss/accuracy (`StepStats`); the recipe
averages the gradients over the meta-batch (and across processes) before the outer optimiser step.

The gradients themselves come from the text-free core (`llm_meta.meta.core`); the episode losses from
`llm_meta.meta.kinds`; the transfer baseline lives in `llm_meta.meta.transfer`.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from llm_meta.data.episodes import Episode
from llm_meta.meta.adaptation import episode_start, support_batches
from llm_meta.meta.core import InnerConfig, StepStats, chunks, maml_gradient, reptile_gradient, split_rates
from llm_meta.meta.hypernet import generated_params
from llm_meta.meta.kinds import kind_ops, loss_and_accuracy, support_loss_fn, text_lengths
from llm_meta.meta.transfer import transfer
from llm_meta.modeling.body import Body, Params

Algorithm = Callable[[Body, Params, Episode, InnerConfig, int], tuple[Params, StepStats]]


def _maml(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int,
          second_order: bool) -> tuple[Params, StepStats]:
    if second_order and cfg.proximal:
        raise ValueError("inner.proximal holds its anchor θ constant, so its second-order gradient would be "
                         "wrong (iMAML differentiates it): use it with fomaml/reptile, or set inner.proximal: 0")
    support, head = episode_start(body, params, episode.support, episode.n_way, cfg, episode.label_names)
    weights, _ = split_rates(params)
    trainable = [k for k in weights if cfg.train_lora] + list(head)
    q = episode.query

    def query(fast: Params, idx: list[int] | None = None) -> tuple[Tensor, Tensor]:
        return loss_and_accuracy(body, fast, q if idx is None else q.subset(idx), cfg.scale)
    parts = chunks(sorted(range(len(q)), key=text_lengths(q).__getitem__), cfg.chunk)
    # Fused attention kernels have no double backward; the math kernel computes the same values.
    with sdpa_kernel(SDPBackend.MATH) if second_order else contextlib.nullcontext():
        grads, loss, acc = maml_gradient(params, head, trainable, support_loss_fn(body, weights, support, cfg), query,
                                         support_batches(support, cfg, seed), cfg, second_order,
                                         query_parts=parts if len(parts) > 1 else None)
    return grads, StepStats(loss.item(), acc.item())


def fomaml(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """First-order MAML (Finn et al. 2017): the meta-gradient is the query-loss gradient at the adapted parameters."""
    return _maml(body, params, episode, cfg, seed, second_order=False)


def maml(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """Second-order MAML: the query loss differentiated through every inner step (memory grows with
    steps). Raises ValueError with `cfg.proximal` (its anchor is held constant)."""
    return _maml(body, params, episode, cfg, seed, second_order=True)


def metasgd(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """Meta-SGD (Li et al. 2017), per tensor: `params` also hold the log of one learned inner
    learning rate per LoRA/head tensor (`core.meta_sgd_rates`); the inner loop takes plain SGD
    steps at those rates, and the query loss is differentiated w.r.t. the weights and the log
    rates. First order unless `cfg.second_order`. Raises ValueError when `params` has no rates."""
    if split_rates(params)[1] is None:
        raise ValueError("metasgd needs learned rates in params (see core.meta_sgd_rates)")
    return _maml(body, params, episode, cfg, seed, second_order=cfg.second_order)


def reptile(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """Reptile (Nichol et al. 2018): adapt on all the episode's examples; the meta-gradient is θ - θ'.

    An outer SGD step with learning rate ε then gives exactly θ + ε(θ' - θ); any other outer
    optimiser treats θ - θ' as a gradient. The reported loss/accuracy are measured on the query
    part after adaptation; Reptile trained on it, so they are optimistic, training-set figures.
    """
    both, head = episode_start(body, params, episode.support + episode.query, episode.n_way, cfg, episode.label_names)
    trainable = [k for k in params if cfg.train_lora] + list(head)
    grads, fast = reptile_gradient(params, head, trainable, support_loss_fn(body, params, both, cfg),
                                   support_batches(both, cfg, seed), cfg)
    with torch.no_grad():
        loss, acc = loss_and_accuracy(body, fast, episode.query, cfg.scale)
    return grads, StepStats(loss.item(), acc.item())


def protonet(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """ProtoNet meta-training: no inner loop; the gradient flows through the prototypes and the
    queries (support and query embedded in one pass; for NER every word is an example and O a class
    with its own prototype, or with `cfg.ner_head` = "decomposed" the detection and typing losses:
    `llm_meta.meta.kinds`)."""
    live = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss, acc = kind_ops(episode).protonet_loss(body, live, episode, cfg)
    grads = dict(zip(live, torch.autograd.grad(loss, list(live.values()))))
    return grads, StepStats(loss.item(), acc.item())


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
