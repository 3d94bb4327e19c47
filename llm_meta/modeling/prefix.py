"""Top-layer LoRA with the frozen lower layers computed once per text.

With LoRA only on the top L of n layers (`model.lora_layers: L`), everything below layer n - L
is frozen: the hidden states entering layer n - L are a function of the text alone. They are
computed once per text (token ids), kept in memory, and every later forward pass, in every
inner step of every episode, runs only the top L layers. For a 30-layer SmolLM2 with L = 2 that
is 15x fewer layer passes per step.

How, for any architecture whose forward iterates its layer list (Llama/Qwen/Mistral, GPT-2,
BERT): the layer list is replaced by a `LayerStack` (same modules, same names) that can hide
the lower layers from that loop, and a pre-hook on the first LoRA layer swaps its input for the
cached states. Embeddings, masks and position ids are still computed by the model itself, so
nothing architecture-specific is re-implemented.

With `model.prefix_cache: disk` the rows also go to safetensors shards in a folder named by a
fingerprint of the frozen lower weights (plus model name, depth and autocast), so later runs,
processes and benchmark starts on the same model reuse them instead of running the lower layers.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from llm_meta.io.atomic import atomic_file

log = logging.getLogger("llm_meta.modeling.prefix")


class LayerStack(nn.ModuleList):
    """The model's transformer layers, with the frozen ones below `first` hidden on demand.

    mode "all": every layer (a normal forward); "top": layers `first`.. only; "prefix": layers
    up to `first`, whose pre-hook captures its input and stops the forward.
    """

    first: int = 0
    mode: str = "all"

    def _kept(self) -> list[nn.Module]:
        layers = list(self._modules.values())
        return {"all": layers, "top": layers[self.first:], "prefix": layers[: self.first + 1]}[self.mode]

    def __iter__(self):
        return iter(self._kept())

    def __getitem__(self, idx):  # Llama-likes loop over self.layers[: num_hidden_layers]
        return nn.ModuleList(self._kept()[idx]) if isinstance(idx, slice) else super().__getitem__(idx)


class _Captured(Exception):
    """Carries the first LoRA layer's input out of a "prefix" forward (nothing above it runs)."""

    def __init__(self, hidden: Tensor) -> None:
        self.hidden = hidden


def find_layer_stack(model: nn.Module, num_layers: int) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, list) of the model's transformer layer list: the ModuleList of
    `num_layers` modules (`layers` for Llama, `h` for GPT-2, `encoder.layer` for BERT)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name), attr, module
    raise ValueError(f"{type(model).__name__}: found no list of {num_layers} transformer layers for top-layer LoRA")


class PrefixCache:
    """Hidden states at the input of the first LoRA layer, one [tokens, hidden] tensor per text
    (keyed by a hash of its token ids, which fix the text, the tokenizer and the truncation length).

    `directory`: also kept on disk there, read back at start; new rows are written in shards of
    `shard_rows` (and at exit), each written whole and then renamed, so a crash loses at most the
    unwritten rows and never leaves a half shard. An unreadable shard is skipped (its rows are recomputed).
    """

    def __init__(self, stack: LayerStack, directory: Path | None = None, shard_rows: int = 4096) -> None:
        self.stack = stack
        self.rows: dict[str, Tensor] = {}
        self.current: Tensor | None = None
        self.directory, self.shard_rows, self.pending = directory, shard_rows, {}
        stack[stack.first].register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        if directory is not None:
            for shard in sorted(directory.glob("*.safetensors")):
                try:
                    self.rows.update(load_file(shard))
                except Exception as err:  # noqa: BLE001 (a cache: any unreadable shard is only recomputed)
                    log.warning("prefix cache shard %s is unreadable (%s): its texts are recomputed", shard, err)
            atexit.register(self.flush)

    def flush(self) -> None:
        """Write the rows not yet on disk as one new shard."""
        if self.directory is None or not self.pending:
            return
        with atomic_file(self.directory / f"{uuid.uuid4().hex}.safetensors") as tmp:  # makes the folder
            save_file(self.pending, str(tmp))
        self.pending = {}

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.stack.mode == "prefix":
            raise _Captured(args[0] if args else kwargs["hidden_states"])
        if self.stack.mode == "top":
            if args:
                return (self.current, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": self.current}
        return None

    def forward(self, model: nn.Module, lora: dict[str, Tensor], kwargs: dict[str, Tensor]):
        """The model's output for `kwargs`, running only the top layers (cached states below)."""
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"].bool()
        keys = [hashlib.sha1(ids[i][mask[i]].cpu().numpy().tobytes()).hexdigest() for i in range(ids.shape[0])]
        missing = sorted({keys.index(k) for k in keys if k not in self.rows})
        if missing:
            sub = {k: v[missing] if isinstance(v, Tensor) else v for k, v in kwargs.items()}  # use_cache is a flag
            self._fill(model, sub, [keys[i] for i in missing])
        rows = [self.rows[k] for k in keys]
        states = torch.zeros(*ids.shape, rows[0].shape[-1], dtype=rows[0].dtype, device=ids.device)
        for i, row in enumerate(rows):  # pad positions stay 0: they are masked out of every real token
            states[i, mask[i]] = row.to(ids.device)
        self.current, self.stack.mode = states, "top"
        try:
            return torch.func.functional_call(model, lora, args=(), kwargs=kwargs, strict=False)
        finally:
            self.current, self.stack.mode = None, "all"

    @torch.no_grad()
    def _fill(self, model: nn.Module, kwargs: dict[str, Tensor], keys: list[str]) -> None:
        self.stack.mode = "prefix"
        try:
            model(**kwargs)
            raise RuntimeError("the first LoRA layer never ran: cannot cache the layers below it")
        except _Captured as captured:
            hidden = captured.hidden.detach()
        finally:
            self.stack.mode = "all"
        mask = kwargs["attention_mask"].bool()
        for i, key in enumerate(keys):
            self.rows[key] = hidden[i, mask[i]].clone()
            if self.directory is not None:
                self.pending[key] = self.rows[key].cpu()
        if len(self.pending) >= self.shard_rows:
            self.flush()


def frozen_fingerprint(model: nn.Module, stack: LayerStack, tag: str) -> str:
    """A short hash naming what the cached states depend on: `tag` (model name, autocast) and every
    weight outside the LoRA layers (shape, dtype and the first 4096 values of each tensor)."""
    top = {id(p) for layer in list(stack._modules.values())[stack.first:] for p in layer.parameters()}
    h = hashlib.sha256(f"{tag}|{type(model).__name__}|{len(stack)}|{stack.first}".encode())
    for name, p in model.named_parameters():
        if id(p) not in top:
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}".encode())
            h.update(p.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def enable_prefix_cache(model: nn.Module, num_layers: int, lora_layers: int, lora_names: list[str],
                        disk: Path | None = None, tag: str = "") -> PrefixCache:
    """Swap the layer list for a LayerStack and hook its first LoRA layer; check that no LoRA
    tensor sits below it (those layers would not be frozen). `disk`: keep the rows on disk too, in
    a subfolder of `disk` named by the frozen weights' fingerprint (and `tag`)."""
    parent, attr, layers = find_layer_stack(model, num_layers)
    stack = LayerStack(list(layers))
    stack.first = num_layers - lora_layers
    setattr(parent, attr, stack)  # same modules under the same names: parameter names do not change
    params = dict(model.named_parameters())
    lower = {id(p) for layer in list(stack._modules.values())[: stack.first] for p in layer.parameters()}
    below = [n for n in lora_names if id(params[n]) in lower]
    if below:
        raise ValueError(f"model.lora_layers={lora_layers}: LoRA tensors below the top {lora_layers} layers "
                         f"(e.g. {below[0]}); the adapter was trained with LoRA on more layers")
    return PrefixCache(stack, None if disk is None else disk / frozen_fingerprint(model, stack, tag))
