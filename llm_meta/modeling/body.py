"""The body: a frozen pretrained model with LoRA adapters, run functionally on a dict of LoRA tensors.

Meta-parameters are the LoRA tensors only. Algorithms hold them as a plain `dict[str, Tensor]`
(`Params`) and call `llm_meta.modeling.forward.embed(body, params, batch)`, which runs the model
through `torch.func.functional_call`, so the inner loop never copies the model or touches the base
weights. Here: the model settings (`ModelConfig`), the `Body` and what it knows of its model.
Loading it is `llm_meta.modeling.loading`; where model files come from, `model_files.py`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_meta.modeling.model_files import DEFAULT_MODEL

log = logging.getLogger(__name__)


# Named tensors (LoRA factors, heads...): the same alias as `llm_meta.meta.core.Params`, which the
# model layer may not import (the core sits above it, though it imports nothing of it).
Params = dict[str, Tensor]


# Causal LMs have no [CLS]/mean-pooling convention: the last real token sees the whole text.
DECODER_TYPES = {
    "llama", "qwen2", "qwen3", "mistral", "gpt2", "gpt_neox", "phi", "phi3", "gemma", "gemma2",
    "gemma3_text", "olmo", "olmo2", "opt", "bloom", "falcon", "gptj", "starcoder2", "smollm3",
}


@dataclass
class ModelConfig:
    """Which base model, how it pools, and the LoRA attached to it."""

    name: str = DEFAULT_MODEL  # bundled name, local folder, or Hub id
    pooling: str = "auto"  # mean | last | auto (mean for encoders, last non-pad token for decoders)
    normalize: bool = True  # L2-normalise sentence embeddings (sentence encoders are trained that way)
    max_length: int = 64  # tokens per text (per window with long_texts=windows); longer texts are truncated
    # Texts longer than max_length: truncate (read the first max_length tokens; a warning counts them) |
    # windows (read whole as overlapping windows of max_length tokens, at most max_windows per text,
    # whose pooled embeddings are averaged weighted by their token counts: one pass per window).
    long_texts: str = "truncate"
    window_overlap: int = 16  # tokens each window repeats from the previous one (context across the cut)
    max_windows: int = 8  # windows per text; the rest of a longer text is cut (and counted in the warning)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None  # None: per-architecture default (DEFAULT_TARGETS)
    # LoRA on the top L layers only; the frozen layers below run once per text and are cached in
    # memory (llm_meta/modeling/prefix.py), so every training step runs only the top L. None: every layer.
    lora_layers: int | None = None
    # Where those cached states live: memory (this process) | disk (also $LLM_META_CACHE/prefix,
    # reused by later runs on the same frozen weights; ~tokens x hidden x 4 bytes per text).
    prefix_cache: str = "memory"
    autocast: str = "auto"  # auto (bf16 on a GPU that supports it, else off) | bf16 | no
    gradient_checkpointing: bool = False  # recompute layer activations in backward: less memory, more time


@dataclass
class Body:
    """A LoRA-wrapped base model and what is needed to run it; holds no trainable state of its own."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    pooling: str
    normalize: bool
    max_length: int
    name: str
    is_decoder: bool
    lora_names: list[str] = field(default_factory=list)
    autocast: str = "auto"
    long_texts: str = "truncate"  # ModelConfig.long_texts, window_overlap, max_windows
    window_overlap: int = 0
    max_windows: int = 1
    prefix: Any = None  # llm_meta.modeling.prefix.PrefixCache when model.lora_layers is set
    # The LoRA tensors of the forward pass in progress, read by gradient checkpointing's recompute.
    active: dict[str, Tensor] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_base_model().config.hidden_size)


def is_decoder_config(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    return config.model_type in DECODER_TYPES or any(a.endswith("ForCausalLM") for a in archs)


def position_limit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """Most tokens per text the model can read (learned position embeddings / the tokenizer's own
    limit), or None when neither states one (e.g. relative or rotary positions without a limit)."""
    config = model.config
    limits = [getattr(config, key, None) for key in ("max_position_embeddings", "n_positions")]
    limits = [int(n) for n in limits if isinstance(n, int) and n > 0]
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):  # positions start after the padding index
        limits = [n - 2 for n in limits]
    if 0 < tokenizer.model_max_length < 1_000_000:  # "unset" is a huge sentinel value
        limits.append(int(tokenizer.model_max_length))
    return min(limits) if limits else None


# Model settings that may change after meta-training: they decide how texts are read and computed,
# not what the LoRA tensors mean. Everything else (base model, LoRA shape and placement, pooling)
# is fixed by the adapter.
RUNTIME_MODEL_KEYS = ("max_length", "long_texts", "window_overlap", "max_windows", "autocast", "prefix_cache",
                      "gradient_checkpointing")


LONG_TEXTS = ("truncate", "windows")


def num_layers(model: PreTrainedModel) -> int:
    config = model.config
    return int(getattr(config, "num_hidden_layers", None) or config.n_layer)


def enable_checkpointing(body: Body) -> None:
    """Activation checkpointing per transformer layer that stays correct under `functional_call`.

    The recompute in backward runs after `functional_call` has put the module's own LoRA tensors
    back, so it would silently use the wrong weights (the inner loop's fast weights are not the
    module's). `context_fn` captures the tensors of each forward and re-applies them around its
    recompute. Layers are flagged as training (only they, not their dropout) because transformers
    checkpoints only in training mode, and dropout must stay off.
    """
    from torch.nn.utils.stateless import _reparametrize_module  # what functional_call itself uses
    from transformers.modeling_layers import GradientCheckpointingLayer

    def context_fn() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), _reparametrize_module(body.model, dict(body.active))

    base = body.model.get_base_model()
    if not base.supports_gradient_checkpointing:
        raise ValueError(f"model.gradient_checkpointing: {type(base).__name__} does not support it")
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False,
                                                                          "context_fn": context_fn})
    base.disable_input_require_grads()  # only needed by reentrant checkpointing
    for module in base.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = True  # not .train(): that would switch on the layer's dropout too


def autocast_dtype(body: Body) -> torch.dtype | None:
    """bf16 when asked, or on `auto` when the model sits on a GPU with bf16 support; else None (fp32)."""
    if body.autocast == "bf16":
        return torch.bfloat16
    on_gpu = body.device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if body.autocast == "auto" and on_gpu else None


def lora_params(body: Body) -> Params:
    """A detached copy of the current LoRA tensors, keyed by their names in the peft model."""
    named = dict(body.model.named_parameters())
    return {n: named[n].detach().clone() for n in body.lora_names}


@torch.no_grad()
def set_lora_params(body: Body, params: Params) -> None:
    """Write LoRA tensors into the module (used before `save_pretrained`, never in the inner loop)."""
    named = dict(body.model.named_parameters())
    for n in body.lora_names:
        named[n].copy_(params[n])
