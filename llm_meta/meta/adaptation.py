"""Adapting a start to one episode's support set, and scoring its queries: the evaluation protocol.

Used alike by meta-training (the inner loop of every episode), validation, `llm-meta adapt` and the
benchmark, so a start is always judged by the adaptation it will get in use.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from llm_meta.data.episodes import Episode, Examples
from llm_meta.meta.core import InnerConfig, inner_batches, inner_loop, split_rates
from llm_meta.meta.heads import zero_head
from llm_meta.meta.hypernet import generated_params, has_hypernet
from llm_meta.meta.kinds import kind_ops, labelled_embeddings, support_loss_fn, text_lengths
from llm_meta.modeling.body import Body, Params
from llm_meta.progress import progress_bar

NER_HEADS = ("io", "decomposed")
# Inner steps of the adaptation an algorithm meta-trains its start for, where that is not the shared
# one. ProtoNet learns the nearest-prototype classifier itself (Snell et al., 2017); 15 steps on top of
# its start gave back a third of its held-out gain on Apple tweets (experiments/BENCHMARKS.md, "The ProtoNet
# start, and FOMAML at a second meta-seed").
OWN_STEPS = {"protonet": 0}


def init_head(body: Body, params: Params, support: Examples, n_way: int, cfg: InnerConfig,
              label_names: list[str] | None = None) -> Params:
    """The episode's head at the start of the inner loop ("head.weight" [N, hidden], "head.bias"
    [N]; for a token task with `cfg.ner_head` = "decomposed" also the span detector "span.weight"
    [2, hidden], "span.bias" [2]; constants: no gradient flows into them). Raises ValueError for an
    unknown `cfg.head_init` or `cfg.ner_head`, or a decomposed head asked with another head_init."""
    ops = kind_ops(support)
    ops.check_head(cfg)
    if cfg.head_init == "zero":
        return zero_head(body.hidden_size, n_way, body.device)
    if cfg.head_init == "label_names":
        support = Examples([], []).with_label_names(_need_names(label_names, cfg), 1)
    elif cfg.head_init != "proto":
        raise ValueError(f"head_init must be 'proto', 'zero' or 'label_names', got {cfg.head_init!r}")
    if cfg.ner_head not in NER_HEADS:
        raise ValueError(f"ner_head must be one of {NER_HEADS}, got {cfg.ner_head!r}")
    emb, labels = labelled_embeddings(body, params, support)
    return ops.head(emb, labels, n_way, cfg)


def _need_names(label_names: list[str] | None, cfg: InnerConfig) -> list[str]:
    if label_names is None:
        raise ValueError(f"head_init={cfg.head_init!r} / label_examples={cfg.label_examples} need the label names")
    return label_names


def episode_start(body: Body, params: Params, support: Examples, n_way: int, cfg: InnerConfig,
                  label_names: list[str] | None, head: Params | None = None) -> tuple[Examples, Params]:
    """The support set the inner loop trains on (label names added if asked) and the fresh head.
    Raises ValueError for settings that are for sequence tasks only, given a token task."""
    kind_ops(support).check_batches(cfg)
    if cfg.label_examples:  # for NER: each entity-type name as a sentence of that type (WordExamples.with_label_names)
        support = support.with_label_names(_need_names(label_names, cfg), cfg.label_examples)
    weights = {k: v.detach() for k, v in split_rates(params)[0].items()}
    return support, head if head is not None else init_head(body, weights, support, n_way, cfg, label_names)


def support_batches(support: Examples, cfg: InnerConfig, seed: int) -> list[list[int]]:
    """The support indices of each inner step, each batch shortest first (length-bucketed chunks)."""
    return inner_batches(len(support), cfg.batch_size, cfg.steps, seed, text_lengths(support))


def adapt(body: Body, params: Params, support: Examples, n_way: int, cfg: InnerConfig, seed: int = 0,
          head: Params | None = None, label_names: list[str] | None = None, progress: bool = False) -> Params:
    """The inner loop: `cfg.steps` optimiser steps on the support set from `params` (+ a fresh head).

    Returns detached fast parameters (LoRA + head). First-order: the graph of each step is
    dropped, so memory does not grow with the number of steps. `params` is not modified. Meta-SGD
    rates in `params` (`llm_meta.meta.starts.Start.rates`) make those tensors take SGD steps at their learned
    rates. A hypernetwork in `params` first writes the starting LoRA from the support set (zero
    steps: the generated adapter with a prototype head). `progress`: a bar over the steps (shown
    after 2 s: a live bar on a terminal, a line every 30 s elsewhere; `llm_meta.progress`).
    """
    if has_hypernet(params):
        with torch.no_grad():
            params = generated_params(body, params, support, n_way, label_names)
    support, head = episode_start(body, params, support, n_way, cfg, label_names, head)
    weights, lrs = split_rates(params)
    trainable = [k for k in weights if cfg.train_lora] + list(head)
    batches = support_batches(support, cfg, seed)
    with progress_bar(batches, desc="adapt", unit="step", enabled=progress, delay=2.0) as steps:
        fast = inner_loop({**weights, **head}, trainable, support_loss_fn(body, weights, support, cfg), steps, cfg,
                          lrs=lrs)
    return {k: t.detach() for k, t in fast.items()}


@torch.no_grad()
def leave_one_out_fit(body: Body, params: Params, support: Examples, n_way: int, cfg: InnerConfig,
                      label_names: list[str] | None = None) -> float:
    """How well a start's geometry fits a task, from its support set alone, in one embedding pass:
    the mean log-probability of each support example's class under the Proto-MAML head (`cfg.scale`)
    built from the *other* examples (label-name examples, when `cfg.label_examples`, always stay in).
    An example whose class has no other example is left out; NaN when none is left. For a token
    task (NER) the examples are the support set's words, O included.

    A cheap stand-in for k-fold adaptation (which costs an adaptation per fold and start), used to
    choose between starts (`choose_start`); it judges the start before any step.
    """
    extended, _ = episode_start(body, params, support, n_way, cfg, label_names, head={})
    emb, labels = labelled_embeddings(body, split_rates(params)[0], extended)
    emb = emb.float()
    sums = torch.zeros(n_way, emb.shape[1], dtype=emb.dtype, device=emb.device).index_add_(0, labels, emb)
    counts = torch.bincount(labels, minlength=n_way).to(emb.dtype)
    # Label-name rows come after the real ones (texts, or for a token task the words the tokenizer keeps)
    real = torch.arange(kind_ops(support).rows(body, support), device=emb.device)
    e, y = emb[real], labels[real]
    own = counts[y] - 1
    keep = own > 0
    c = sums / counts.clamp_min(1).unsqueeze(1)
    logits = cfg.scale * (2 * e @ c.T - (c * c).sum(1))  # [S, N], every class with all its examples
    c_own = (sums[y] - e) / own.clamp_min(1).unsqueeze(1)  # [S, H]: own class without the example itself
    logits[real, y] = cfg.scale * (2 * (c_own * e).sum(1) - (c_own * c_own).sum(1))
    logits[:, counts == 0] = float("-inf")
    fit = torch.log_softmax(logits, dim=1)[real, y][keep]
    return fit.mean().item() if len(fit) else float("nan")


def choose_start(body: Body, candidates: dict[str, Params], support: Examples, n_way: int, cfg: InnerConfig,
                 label_names: list[str] | None = None) -> tuple[str, dict[str, float]]:
    """The candidate start with the best `leave_one_out_fit` on the support set, and every
    candidate's estimate. Ties (and all-NaN estimates) go to the first candidate, so list the
    safe one (the untrained start) first."""
    fits = {name: leave_one_out_fit(body, params, support, n_way, cfg, label_names)
            for name, params in candidates.items()}
    return list(fits)[best_fit(fits)], fits


def best_fit(fits: dict[str, float]) -> int:
    """The position in `fits` of the best estimate; ties and NaN go to the earliest, so list the
    safe candidate (the untrained start) first."""
    order = list(fits.values())
    return max(range(len(order)), key=lambda i: (float("-inf") if math.isnan(order[i]) else order[i], -i))


def in_family(label_names: list[str], family: list[str] | None) -> bool:
    """Whether a task is one of its start's family by its class names: every name in `label_names`
    (stripped, case-folded) is among `family`, the class names of the tasks the start was
    meta-trained on (its llm_meta.json's "label_names"). False when `family` is not a non-empty
    list (an adapter from before the names were recorded, tasks without names, or malformed
    metadata); raises nothing.

    Why: in a family that shares one label set (sentiment across sources, the issue's user story), a
    new domain with those labels is what the start was trained for, and choosing on its support set
    there lost part of the gain when one support set went to the untrained start (ProtoNet: 74% of
    its gain kept on drug reviews over 15 episodes; FOMAML: 71-74% of a 7-10 point gain; experiments/BENCHMARKS.md,
    "A start for tasks with the family's labels"); a task with other labels gets the choice
    (`choose_start`).
    """
    if not isinstance(family, list) or not family:
        return False
    return {str(n).strip().casefold() for n in label_names} <= {str(n).strip().casefold() for n in family}


def own_adaptation(cfg: InnerConfig, algorithm: str | None) -> InnerConfig:
    """The adaptation of a meta-trained start used as itself: `cfg` with the inner steps its
    `algorithm` meta-trained it for (`OWN_STEPS`: ProtoNet 0, the nearest-prototype head alone), or
    `cfg` unchanged for any other algorithm (None included)."""
    steps = OWN_STEPS.get(algorithm or "")
    return cfg if steps is None else dataclasses.replace(cfg, steps=steps)


def adapted(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, Examples]:
    """`params` adapted on the episode's support set, and that support set as the inner loop saw it
    (label names added when `cfg.label_examples`)."""
    fast = adapt(body, params, episode.support, episode.n_way, cfg, seed, label_names=episode.label_names)
    support, _ = episode_start(body, params, episode.support, episode.n_way, cfg, episode.label_names, head={})
    return fast, support


def episode_accuracy(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> float:
    """Query accuracy (a fraction) after adapting `params` on the episode's support set; per word for
    an NER episode (its entity F1 is `llm_meta.eval.evaluation.episode_entity_f1`)."""
    return kind_ops(episode).query_accuracy(body, *adapted(body, params, episode, cfg, seed), episode, cfg)


def episode_outcomes(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> np.ndarray:
    """Per-query outcomes after adapting on the support set, the rows `llm_meta.eval.statistics`
    resamples: [Q, 1] correct (1.0 / 0.0) for a sequence episode; [Q, 3] entity counts (true
    positives, false positives, false negatives: exact span and type, as seqeval counts them) per
    query sentence for an NER episode (`llm_meta.meta.kinds`)."""
    return kind_ops(episode).query_outcomes(body, *adapted(body, params, episode, cfg, seed), episode, cfg)
