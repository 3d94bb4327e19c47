"""Loading the body: the base model and tokenizer (refusing a model whose weights did not all load),
LoRA placed on it (targets checked against the model's linear modules, every layer or the top
`lora_layers`), and the model settings a saved adapter fixes or lets change.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_meta.config import from_dict
from llm_meta.modeling.body import (LONG_TEXTS, RUNTIME_MODEL_KEYS, Body, ModelConfig, enable_checkpointing,
                                    is_decoder_config, num_layers, position_limit)
from llm_meta.modeling.model_files import BUNDLED_GGUF, BUNDLED_MODELS, ModelLoadError, cache_dir, resolve_model_path
from llm_meta.modeling.prefix import enable_prefix_cache, find_layer_stack

log = logging.getLogger(__name__)


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
