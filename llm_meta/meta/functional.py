"""The meta-learning core, public: first-order MAML, MAML, Meta-SGD and Reptile over a dict of
named tensors and loss closures, for any torch model; for instance a transformers model with
plain peft LoRA, as in examples/meta_core.py:

    theta = meta.trainable(model)                          # θ: the tensors that train (LoRA, head), by name
    support = meta.model_loss(model, support_batch)         # loss(fast, idx): the model's loss at weights `fast`
    query = meta.model_loss(model, query_batch)
    grads, query_loss, _ = meta.maml_gradient(theta, {}, list(theta), support, query,
                                              meta.inner_batches(n_support, 64, 5, seed=0), meta.InnerConfig(steps=5))
    for name, p in theta.items(): p.grad = grads[name]      # then any torch optimiser's step()

`maml_gradient` is first-order MAML (FOMAML) unless `second_order=True` (MAML) or `theta` holds
Meta-SGD rates (`meta_sgd_rates`); `reptile_gradient` gives Reptile's θ − θ'. The inner loop is
`inner_loop` (Adam or SGD over plain tensors, chunked batches), and `interpolate` is WiSE-FT's
interpolation of a start and its trained weights. llm_meta's own LoRA bodies use the same
functions (`llm_meta.meta.algorithms`); docs/concepts/meta-learning.md says how.

Sources: Finn et al. 2017 (MAML, FOMAML), Nichol et al. 2018 (Reptile), Li et al. 2017
(Meta-SGD), Wortsman et al. 2022 (WiSE-FT).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from llm_meta.meta.core import (InnerConfig, Loss, Params, inner_batches, inner_loop, interpolate, maml_gradient,
                           meta_sgd_rates, outer_lr, reptile_gradient)

__all__ = ["InnerConfig", "Loss", "Params", "inner_batches", "inner_loop", "interpolate", "maml_gradient",
           "meta_sgd_rates", "model_loss", "outer_lr", "reptile_gradient", "trainable"]


def trainable(model: torch.nn.Module) -> Params:
    """The parameters of `model` that require grad, by their `named_parameters` name: the
    meta-parameters θ (after peft's `get_peft_model`, the LoRA factors and any head it trains).
    They are the module's own Parameters, so an optimiser built on `.values()` updates the model."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def model_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> Loss:
    """A loss closure `loss(fast, idx=None)` for the core: `model`'s forward pass on the rows `idx`
    of `batch` (every row when None) with the tensors of `fast` in place of its parameters of the
    same names (`torch.func.functional_call`; the others stay the model's).

    `batch`: keyword inputs of the forward pass, each a tensor whose first dimension is the example,
    e.g. a tokenizer's output plus `labels` [n]. The loss is the output's `.loss` (a transformers
    model computes it when given labels), else the output itself, which must then be a scalar.
    """
    def loss(fast: Params, idx: list[int] | None = None) -> Tensor:
        rows = {k: v if idx is None or not isinstance(v, Tensor) else v[idx] for k, v in batch.items()}
        out = functional_call(model, dict(fast), args=(), kwargs=rows)
        return out.loss if hasattr(out, "loss") else out
    return loss
