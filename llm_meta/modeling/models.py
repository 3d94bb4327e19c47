"""The body: a frozen pretrained model with LoRA adapters, run functionally on a dict of LoRA tensors.

Meta-parameters are the LoRA tensors only. Algorithms hold them as a plain
`dict[str, Tensor]` and call `embed(body, params, batch)`, which runs the model through
`torch.func.functional_call`, so the inner loop never copies the model or touches the base
weights.

Longer than the house's ~300 lines: loading, LoRA placement and the functional forward share
the `Body` and its invariants (frozen base, LoRA names, pooling, autocast), and splitting them
would spread one contract over several files. Where model files come from is `model_files.py`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_meta.config import from_dict
from llm_meta.modeling.model_files import (BUNDLED_GGUF, BUNDLED_MODELS, DEFAULT_MODEL, ModelLoadError,  # noqa: F401
                                  cache_dir, resolve_model_path)
from llm_meta.modeling.prefix import enable_prefix_cache, find_layer_stack

log = logging.getLogger(__name__)

# Named tensors (LoRA factors, heads...): the same alias as `llm_meta.meta.core.Params`, which the
# model layer may not import (the core sits above it, though it imports nothing of it).
Params = dict[str, Tensor]


# Causal LMs have no [CLS]/mean-pooling convention: the last real token sees the whole text.
DECODER_TYPES = {
    "llama", "qwen2", "qwen3", "mistral", "gpt2", "gpt_neox", "phi", "phi3", "gemma", "gemma2",
    "gemma3_text", "olmo", "olmo2", "opt", "bloom", "falcon", "gptj", "starcoder2", "smollm3",
}
# LoRA targets per architecture: all attention projections plus the dense layers for encoders
# (what the project's first prototype used), attention projections for decoders.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "mpnet": ["q", "k", "v", "o"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn"],
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


def load_base(cfg: ModelConfig, trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the frozen base model and its tokenizer from a bundled name, a local folder or a Hub id.

    `trust_remote_code` comes from the caller only (`--trust-remote-code`, a keyword argument),
    never from a config or a folder someone sent: it lets a model repo run its own Python code.

    Raises:
        ModelLoadError: the model cannot be found or loaded, needs its own code without
            `trust_remote_code`, has only pickle weights, or lacks weights its layers need.
    """
    path = resolve_model_path(cfg.name)
    local = path.startswith((".", "/", "~")) or Path(path).exists()
    if local and not (Path(path) / "config.json").is_file():
        raise ModelLoadError(f"model folder '{cfg.name}' has no config.json: not a transformers model folder")
    if local and not list(Path(path).glob("*.safetensors")):
        pickles = sorted(p.name for p in Path(path).iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles:
            raise ModelLoadError(f"model folder '{cfg.name}' has only pickle weights ({', '.join(pickles)}); llm_meta "
                                 f"loads safetensors only, because unpickling can run code. Convert it once in a "
                                 f"trusted environment: AutoModel.from_pretrained(folder).save_pretrained(folder)")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model, loading = AutoModel.from_pretrained(
            path, config=config, trust_remote_code=trust_remote_code, use_safetensors=True, output_loading_info=True
        )
    except (OSError, ValueError) as err:
        if "custom code" in str(err) or "trust_remote_code" in str(err):
            raise ModelLoadError(f"model '{cfg.name}' needs its own Python code to load; llm_meta never runs a model "
                                 f"repo's code unless you read it and pass --trust-remote-code (Python: "
                                 f"trust_remote_code=True); a folder or config can never turn it on") from err
        if local:
            raise ModelLoadError(f"could not load model folder '{cfg.name}': {str(err).splitlines()[0]}") from err
        raise ModelLoadError(
            f"could not load model '{cfg.name}': it is not a bundled name "
            f"({', '.join([*BUNDLED_MODELS, *BUNDLED_GGUF])}), "
            f"not a local model folder, and loading it as a Hub id failed (offline, or no such id?). "
            f"Cause: {str(err).splitlines()[0]}"
        ) from err
    _check_loading(cfg.name, model, loading)
    if tokenizer.pad_token is None:
        # Decoders often ship without a pad token; any token works because padding is masked out.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # Right padding: positions count from 0 for every text, so a text's states do not depend on
    # how long the other texts of its batch are (which top-layer caching relies on).
    tokenizer.padding_side = "right"
    model.requires_grad_(False)
    return model, tokenizer


def _check_loading(name: str, model: PreTrainedModel, loading: dict[str, Any]) -> None:
    """Refuse a model whose file lacks weights its layers need (transformers would fill them with
    random values, and its report of it is silenced with the rest of its logging). Missing weights
    of parts llm_meta never runs are fine: BERT's pooler (we pool ourselves) and what the model
    class itself marks as optional (`_keys_to_ignore_on_load_missing`).

    Raises:
        ModelLoadError: naming the first missing or mis-shaped weights and their count.
    """
    import re

    optional = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or []]
    missing = sorted(k for k in loading.get("missing_keys", ()) if not k.split(".")[0] == "pooler"
                     and ".pooler." not in k and not any(p.search(k) for p in optional))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in loading.get("mismatched_keys", ()))
    for what, keys in (("has no weights for", missing), ("has weights of the wrong shape for", mismatched)):
        if keys:
            raise ModelLoadError(f"model '{name}' {what} {len(keys)} parameter(s) ({', '.join(keys[:3])}"
                                 f"{' ...' if len(keys) > 3 else ''}): they would be random; the model file is "
                                 f"incomplete or of another architecture")


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Leaf names of the layers LoRA can target (nn.Linear and GPT-2's Conv1D)."""
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def check_lora_targets(model: torch.nn.Module, targets: list[str]) -> None:
    """Fail with the model's linear module names when a LoRA target matches nothing."""
    full = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in full)]
    if missing:
        raise ValueError(
            f"LoRA target module(s) {missing} do not exist in {type(model).__name__}; "
            f"its linear modules are: {', '.join(linear_module_names(model))}"
        )


def default_targets(config: Any) -> list[str]:
    if config.model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[config.model_type]
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults

    if config.model_type in peft_defaults:
        return list(peft_defaults[config.model_type])
    raise ValueError(
        f"no default LoRA targets for model type '{config.model_type}'; set model.lora_targets "
        f"to some of its linear modules"
    )


def attach_lora(model: PreTrainedModel, cfg: ModelConfig) -> PeftModel:
    """Wrap the frozen base in a peft LoRA model; the LoRA tensors are the only trainable ones."""
    targets = cfg.lora_targets or default_targets(model.config)
    check_lora_targets(model, targets)
    # BERT's pooler matches "dense" but its output is unused by our pooling: LoRA there would be dead weight.
    unused = [n for n, _ in model.named_modules() if n.split(".")[0] == "pooler"] or None
    top = {}
    if cfg.lora_layers is not None:
        n = num_layers(model)
        if not 1 <= cfg.lora_layers <= n:
            raise ValueError(f"model.lora_layers must be between 1 and the model's {n} layers, got {cfg.lora_layers}")
        _, attr, _ = find_layer_stack(model, n)
        top = {"layers_to_transform": list(range(n - cfg.lora_layers, n)), "layers_pattern": attr}
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, exclude_modules=unused, **top,
                      fan_in_fan_out=model.config.model_type == "gpt2")  # GPT-2's Conv1D stores W transposed
    return get_peft_model(model, lora)


def load_body(cfg: ModelConfig, adapter: str | Path | None = None, seed: int | None = None,
              trust_remote_code: bool = False) -> Body:
    """Base model + tokenizer + LoRA (fresh, or loaded from a PEFT adapter folder), in eval mode.

    Eval mode is deliberate: dropout on a 25-example support set adds noise, not regularisation,
    and it would make episodes irreproducible. A fresh LoRA's A matrices are random: with `seed`
    every draw of loading is made from that seed and the global random state is left as it was, so
    the same seed gives the same start in any process; without it, from the global state (the
    recipes seed it).

    `trust_remote_code`: see `load_base` (the caller's choice, never a config's).

    Raises:
        ModelLoadError: the model cannot be found or loaded.
        ValueError: a LoRA target or layer count the model does not have, or model.max_length
            beyond the positions the model can read.
    """
    # Loading may draw too (weights a checkpoint lacks, e.g. an unused pooler): seeded, and in a fork.
    with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        base, tokenizer = load_base(cfg, trust_remote_code)
        limit = position_limit(base, tokenizer)
        if limit is not None and cfg.max_length > limit:
            raise ValueError(f"model.max_length={cfg.max_length} is more than {cfg.name} can read ({limit} token "
                             f"positions); set model.max_length to at most {limit}")
        if cfg.max_length < 4:
            raise ValueError(f"model.max_length must be at least 4 tokens, got {cfg.max_length}")
        if adapter is None:
            model = attach_lora(base, cfg)
        else:
            model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    model.eval()
    decoder = is_decoder_config(base.config)
    pooling = cfg.pooling if cfg.pooling != "auto" else ("last" if decoder else "mean")
    if pooling not in ("mean", "last"):
        raise ValueError(f"model.pooling must be mean, last or auto, got {cfg.pooling!r}")
    if cfg.autocast not in ("auto", "bf16", "no"):
        raise ValueError(f"model.autocast must be auto, bf16 or no, got {cfg.autocast!r}")
    if cfg.long_texts not in LONG_TEXTS:
        raise ValueError(f"model.long_texts must be one of {', '.join(LONG_TEXTS)}, got {cfg.long_texts!r}")
    if cfg.long_texts == "windows" and not (0 <= cfg.window_overlap <= cfg.max_length // 2 and cfg.max_windows >= 1):
        raise ValueError(f"model.window_overlap must be between 0 and max_length/2 = {cfg.max_length // 2} tokens "
                         f"and model.max_windows at least 1, got {cfg.window_overlap} and {cfg.max_windows}")
    if cfg.long_texts == "windows" and not tokenizer.is_fast:  # windows come from the fast tokenizers' overflow
        raise ValueError(f"model.long_texts=windows needs a fast (Rust) tokenizer; {cfg.name} has a Python one: "
                         f"use model.long_texts=truncate")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    body = Body(model, tokenizer, pooling, cfg.normalize, cfg.max_length, cfg.name, decoder, names, cfg.autocast,
                cfg.long_texts, cfg.window_overlap, cfg.max_windows)
    if cfg.gradient_checkpointing:
        enable_checkpointing(body)
    if cfg.prefix_cache not in ("memory", "disk"):
        raise ValueError(f"model.prefix_cache must be memory or disk, got {cfg.prefix_cache!r}")
    if cfg.lora_layers is not None:
        disk = cache_dir() / "prefix" if cfg.prefix_cache == "disk" else None
        body.prefix = enable_prefix_cache(model, num_layers(base), cfg.lora_layers, names, disk,
                                          tag=f"{cfg.name}|{cfg.autocast}|{torch.cuda.is_available()}")
    return body


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
WINDOWS_KEY = "overflow_to_sample_mapping"  # in a tokenised batch of windows: the text each window belongs to


def recorded_model_config(recorded: dict[str, Any]) -> ModelConfig:
    """The ModelConfig a saved folder records (its llm_meta.json). A `trust_remote_code` an earlier
    llm_meta recorded there is dropped unread: a folder never decides to run code."""
    return from_dict(ModelConfig, {k: v for k, v in recorded.items() if k != "trust_remote_code"})


def start_model_config(trained: ModelConfig, requested: ModelConfig, default: ModelConfig, adapter: str) -> ModelConfig:
    """The model config for adapting `adapter`: the one it was trained with, plus the runtime
    settings (RUNTIME_MODEL_KEYS) the user set, i.e. those where `requested` differs from `default`.

    Raises:
        ValueError: the user set any other model key to a value other than the adapter's.
    """
    import dataclasses

    out = dataclasses.replace(trained)
    for f in dataclasses.fields(ModelConfig):
        wanted, was = getattr(requested, f.name), getattr(trained, f.name)
        if wanted == getattr(default, f.name) or wanted == was:
            continue
        if f.name not in RUNTIME_MODEL_KEYS:
            raise ValueError(f"model.{f.name}={wanted!r} cannot change for the adapter {adapter}, which was trained "
                             f"with {was!r}; after meta-training only model.{', model.'.join(RUNTIME_MODEL_KEYS)} "
                             f"can change")
        log.info("model.%s=%r (the adapter was trained with %r)", f.name, wanted, was)
        setattr(out, f.name, wanted)
    return out


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


# No token of any tokenizer here covers more characters than this (WordPiece gives up on a word at
# 100): the characters of a text past max_length x this can never be read, so they are dropped
# before tokenising. At least MIN_CHARS are kept, so the truncation warning still gives the true
# length of any real document; one 2 GB line is tokenised as its first megabyte, not whole.
CHARS_PER_TOKEN = 100
MIN_CHARS = 1_000_000


def capped(body: Body, texts: list[str]) -> tuple[list[str], list[bool]]:
    """`texts` cut to the characters `body` can read (`CHARS_PER_TOKEN` per token of max_length, of
    each window with long_texts=windows, and at least `MIN_CHARS`), and which were cut."""
    cap = max(body.max_length * (body.max_windows if body.long_texts == "windows" else 1) * CHARS_PER_TOKEN,
              MIN_CHARS)
    cut = [len(t) > cap for t in texts]
    return ([t[:cap] for t in texts] if any(cut) else list(texts)), cut


def tokenize(body: Body, texts: list[str]) -> dict[str, Tensor]:
    """Tokenise with dynamic padding: the batch is as long as its longest text, capped at max_length.
    With `long_texts=windows` the rows are windows (`split_windows`) and `WINDOWS_KEY` maps each
    window to its text; `embed` averages them back to one embedding per text. (Counting what is cut
    is `tokenize_counted`'s: training batches do not pay for the overflow rows.)"""
    if body.long_texts == "windows":
        return tokenize_counted(body, texts)[0]
    texts, _ = capped(body, texts)
    enc = body.tokenizer(texts, padding=True, truncation=True, max_length=body.max_length, return_tensors="pt")
    return {k: v.to(body.device) for k, v in enc.items()}


@dataclass
class Cut:
    """Of `total` texts, how many were read only in part (`cut`), and the longest: its length in tokens,
    or with `long_texts=windows` the most windows any text needed; `capped`: how many were cut to
    their readable characters before tokenising (`capped`), whose length is then a lower bound.
    Added up over batches."""

    cut: int = 0
    total: int = 0
    longest: int = 0
    capped: int = 0

    def __iadd__(self, other: "Cut") -> "Cut":
        self.cut += other.cut
        self.total += other.total
        self.longest = max(self.longest, other.longest)
        self.capped += other.capped
        return self


def tokenize_counted(body: Body, texts: list[str]) -> tuple[dict[str, Tensor], Cut]:
    """`tokenize`, and what it cut, from the same tokenisation (prediction tokenises once: a second pass
    just to count cost ~4% of short-text throughput). A fast tokenizer's overflow with no overlap gives
    the count: a text longer than max_length has more than one row, and only each text's first row
    (exactly the plainly truncated encoding) is kept. A text cut to its readable characters
    (`capped`) counts as cut."""
    texts, chars_cut = capped(body, texts)
    enc, cut, tokens_cut = _tokenize_counted(body, texts)
    cut.cut += sum(c and not t for c, t in zip(chars_cut, tokens_cut))  # cut by characters only
    cut.capped = sum(chars_cut)
    return enc, cut


def _tokenize_counted(body: Body, texts: list[str]) -> tuple[dict[str, Tensor], Cut, list[bool]]:
    """`tokenize_counted` of texts already `capped`; also whether each text was cut."""
    if body.long_texts == "windows":
        enc, windows = split_windows(body, texts, return_tensors="pt")
        was_cut = (windows > body.max_windows).tolist()
        cut = Cut(sum(was_cut), len(texts), int(windows.max()) if len(texts) else 0)
    elif body.tokenizer.is_fast:
        enc = dict(body.tokenizer(texts, padding=True, truncation=True, max_length=body.max_length,
                                  return_overflowing_tokens=True, return_tensors="pt"))
        mapping = enc.pop(WINDOWS_KEY)
        rows = torch.bincount(mapping, minlength=len(texts))
        was_cut = (rows > 1).tolist()
        if any(was_cut):
            # A text's length: its rows' tokens without their special tokens, plus the specials once.
            specials = body.tokenizer.num_special_tokens_to_add()
            content = torch.zeros(len(texts), dtype=torch.long).index_add_(0, mapping, enc["attention_mask"].sum(1)
                                                                           - specials) + specials
            first = torch.ones(len(mapping), dtype=torch.bool)
            first[1:] = mapping[1:] != mapping[:-1]  # rows come in text order
            enc = {k: v[first] for k, v in enc.items()}
            cut = Cut(int((rows > 1).sum()), len(texts), int(content.max()))
        else:
            cut = Cut(0, len(texts), int(enc["attention_mask"].sum(1).max()) if len(texts) else 0)
    else:  # a slow tokenizer has no overflow mapping: count with a second pass
        enc = body.tokenizer(texts, padding=True, truncation=True, max_length=body.max_length, return_tensors="pt")
        lengths = body.tokenizer(list(texts), truncation=False, return_length=True, verbose=False)["length"]
        was_cut = [n > body.max_length for n in lengths]
        cut = Cut(sum(was_cut), len(texts), max(lengths, default=0))
    return {k: v.to(body.device) for k, v in enc.items()}, cut, was_cut


def split_windows(body: Body, texts: list[str], **kwargs: Any) -> tuple[dict[str, Any], Tensor]:
    """Every text as windows of at most max_length tokens, each repeating the last `window_overlap`
    tokens of the one before (the tokenizer's own overflow, so every window has its special tokens),
    at most `max_windows` per text: a padded batch [windows, tokens] plus `WINDOWS_KEY` [windows],
    and how many windows each text needed before the cap [texts]."""
    enc = body.tokenizer(list(texts), padding=True, truncation=True, max_length=body.max_length,
                         stride=body.window_overlap, return_overflowing_tokens=True, **kwargs)
    mapping = [int(i) for i in enc[WINDOWS_KEY]]  # windows come in text order
    windows = torch.bincount(torch.tensor(mapping, dtype=torch.long), minlength=len(texts))
    counts: dict[int, int] = {}
    keep = []
    for i in mapping:
        counts[i] = counts.get(i, 0) + 1
        keep.append(counts[i] <= body.max_windows)
    if all(keep):
        return dict(enc), windows
    rows = [r for r, k in enumerate(keep) if k]
    return {k: v[rows] if hasattr(v, "shape") else [v[r] for r in rows] for k, v in enc.items()}, windows


def warn_truncated(body: Body, texts: list[str], what: str = "texts") -> int:
    """Warn once when texts are longer than `body.max_length` tokens (they are read only up to it),
    or with `long_texts=windows` longer than `max_windows` windows, with their count; return the
    count. Truncation is a choice the user must see. (Tokenises the texts once more; prediction
    counts inside its own pass instead: `embed_texts(..., what=...)`.)"""
    if not texts:
        return 0
    cut = Cut()
    for start in range(0, len(texts), 1024):  # bounded memory for the padded batch
        cut += tokenize_counted(body, list(texts[start : start + 1024]))[1]
    return report_cut(body, cut, what)


def report_cut(body: Body, cut: Cut, what: str) -> int:
    """The truncation warning for `cut` (nothing when no text was cut); returns the count."""
    longest = f"{cut.longest}+" if cut.capped else str(cut.longest)  # a capped text was not tokenised whole
    capped = f"; {cut.capped} of them so long that only their first characters were tokenised" if cut.capped else ""
    if cut.cut and body.long_texts == "windows":
        log.warning("%d of %d %s need more than model.max_windows=%d windows of %d tokens (most: %s) and are read "
                    "only up to them%s; set model.max_windows higher to read more", cut.cut, cut.total, what,
                    body.max_windows, body.max_length, longest, capped)
    elif cut.cut:
        log.warning("%d of %d %s are longer than model.max_length=%d tokens (longest: %s) and are read only up to "
                    "it%s; set model.max_length higher or model.long_texts=windows to read more", cut.cut, cut.total,
                    what, body.max_length, longest, capped)
    return cut.cut


@torch.no_grad()
def folded_lora(body: Body, params: Params) -> Params | None:
    """Each LoRA-wrapped layer's base weight with its update folded in, W + s·B·A (s = alpha / r,
    transposed for GPT-2's Conv1D), keyed by the base weight's name: a forward with these weights and
    the LoRA branches switched off (`hidden_states(..., folded=...)`) computes the same function with
    no extra matmuls or activations per layer, which is what prediction pays for (the fold of a
    22M-parameter body takes milliseconds). The same logits as the LoRA forward up to float rounding
    (tests/test_speed.py). None where a layer cannot be folded this way (DoRA, non-Linear LoRA):
    callers then run the LoRA forward.
    """
    from peft.tuners.lora import Linear as LoraLinear

    modules = dict(body.model.named_modules())
    out: Params = {}
    for name in body.lora_names:
        if ".lora_A." not in name:
            continue
        prefix, adapter = name.split(".lora_A.")[0], name.split(".lora_A.")[1].split(".")[0]
        layer = modules[prefix]
        if not isinstance(layer, LoraLinear) or layer.use_dora.get(adapter, False):
            return None
        a, b = params[name], params[name.replace(".lora_A.", ".lora_B.")]
        delta = layer.scaling[adapter] * (b @ a)  # [out, in]
        weight = layer.get_base_layer().weight
        out[f"{prefix}.base_layer.weight"] = weight + (delta.T if layer.fan_in_fan_out else delta).to(weight.dtype)
    return out


def lora_branches_off(body: Body, folded: Params | None) -> contextlib.AbstractContextManager:
    """peft's `disable_adapter` when running on folded weights (not entered twice: it costs ~8 ms)."""
    already = getattr(body.model, "_adapters_disabled", False)
    return body.model.disable_adapter() if folded is not None and not already else contextlib.nullcontext()


@contextlib.contextmanager
def folded_pass(body: Body, params: Params) -> Iterator[Params | None]:
    """For a pass of many batches without gradients: `folded_lora(body, params)` (None: not
    foldable), with the LoRA branches off for the whole pass; give it to `hidden_states`."""
    folded = folded_lora(body, params)
    with lora_branches_off(body, folded):
        yield folded


def hidden_states(body: Body, params: Params, batch: dict[str, Tensor], folded: Params | None = None,
                  cache: bool = True) -> Tensor:
    """Last hidden states [batch, tokens, hidden] with the LoRA tensors in `params`, or (no
    gradient) with the base weights `folded_lora(body, params)` and the LoRA branches off.
    `cache` False: with top-layer LoRA, run every layer instead of storing the frozen layers' states
    (for texts seen once, e.g. prediction)."""
    lora = folded if folded is not None else {n: params[n] for n in body.lora_names}  # params may carry a head
    dtype = autocast_dtype(body)
    kwargs = {**batch, "use_cache": False} if body.is_decoder else batch  # no KV cache: one pass per text
    body.active = lora
    with torch.autocast(body.device.type, dtype=dtype, enabled=dtype is not None), lora_branches_off(body, folded):
        if body.prefix is not None and cache:  # top-layer LoRA: only the layers above the cached frozen ones run
            out = body.prefix.forward(body.model, lora, kwargs)
        else:
            out = torch.func.functional_call(body.model, lora, args=(), kwargs=kwargs, strict=False)
    return out.last_hidden_state.float()  # heads, losses and prototypes stay in fp32


def pool(body: Body, states: Tensor, mask: Tensor, windows: Tensor | None = None) -> Tensor:
    """[B, T, H] -> [B, H]: masked mean for encoders, last non-pad token for decoders. With
    `windows` ([B] text index of each row), rows of one text are averaged, weighted by their real
    tokens, before normalising: [texts, H]; a text read as one window gets exactly its own row."""
    if body.pooling == "mean":
        m = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * m).sum(1) / m.sum(1).clamp_min(1.0)
    else:
        # Index of the last 1 in the mask works for left and right padding alike.
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(1)
        pooled = states[torch.arange(states.shape[0], device=states.device), last]
    if windows is not None:
        weight = mask.sum(1, keepdim=True).to(pooled.dtype)
        texts = int(windows.max()) + 1
        total = pooled.new_zeros(texts, pooled.shape[1]).index_add(0, windows, pooled * weight)
        pooled = total / pooled.new_zeros(texts, 1).index_add(0, windows, weight)
    return torch.nn.functional.normalize(pooled, dim=-1) if body.normalize else pooled


def embed(body: Body, params: Params, batch: dict[str, Tensor], folded: Params | None = None, cache: bool = True
          ) -> Tensor:
    """One embedding per text, [texts, hidden], computed functionally from `params` (or `folded`);
    a batch of windows (`tokenize` with long_texts=windows) gives one per text, not per window."""
    windows = batch.get(WINDOWS_KEY)
    inputs = {k: v for k, v in batch.items() if k != WINDOWS_KEY}
    return pool(body, hidden_states(body, params, inputs, folded, cache), inputs["attention_mask"], windows)


def embed_tokens(body: Body, params: Params, batch: dict[str, Tensor], folded: Params | None = None) -> Tensor:
    """One embedding per token, [batch, tokens, hidden] (token tasks such as NER)."""
    states = hidden_states(body, params, batch, folded)
    return torch.nn.functional.normalize(states, dim=-1) if body.normalize else states


def token_counts(body: Body, texts: list[str]) -> list[int]:
    """Tokens of each text, untruncated and without special tokens: the key that length-sorted
    batching sorts by."""
    if not texts:
        return []
    texts, _ = capped(body, list(texts))
    return body.tokenizer(texts, add_special_tokens=False, return_length=True, verbose=False)["length"]


def by_tokens(body: Body, texts: list[str]) -> list[int]:
    """Indices of `texts`, fewest tokens first (untruncated, so long texts sort by their windows):
    batches of neighbours in this order pad little. Characters are a poor key for it: in batches of
    64, a character-sorted pass pads BANKING77's test texts to 29% more tokens than it reads and
    WNUT-16 tweets (URLs, emoji, hashtags) to 42% more; token order, 4% and 3% (experiments/BENCHMARKS.md,
    "Prediction throughput"). The extra tokenisation costs ~3% of a pass."""
    lengths = token_counts(body, texts)
    return sorted(range(len(texts)), key=lengths.__getitem__)


@torch.no_grad()
def embed_texts(body: Body, params: Params, texts: list[str], batch_size: int = 64, progress: str | None = None,
                cache: bool = True, what: str | None = None) -> Tensor:
    """Embed many texts without gradients, [len(texts), hidden], in batches sorted by token count
    (`by_tokens`) so padding stays small (all texts sorted together: sorting in slices pads more), on
    the LoRA folded into the base weights (`folded_lora`). `progress`: a progress bar with this description;
    `cache`: see `hidden_states`; `what`: name the texts to warn, after the pass, how many were cut
    (`warn_truncated`'s warning, counted from the pass's own tokenisation)."""
    from llm_meta.progress import progress_bar

    order = by_tokens(body, texts)
    out = torch.empty(len(texts), body.hidden_size, device=body.device)
    starts = progress_bar(range(0, len(order), batch_size), desc=progress, unit="batch", leave=False,
                          enabled=progress is not None and len(order) > batch_size)
    cut = Cut()
    with folded_pass(body, params) as folded:  # no gradient here: the LoRA can be folded in
        for start in starts:
            idx = order[start : start + batch_size]
            batch, batch_cut = tokenize_counted(body, [texts[i] for i in idx])
            cut += batch_cut
            out[idx] = embed(body, params, batch, folded, cache).float()
    if what is not None:
        report_cut(body, cut, what)
    return out
