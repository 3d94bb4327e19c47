"""A hypernetwork that writes a task's LoRA adapter in one forward pass (meta-networks; HyperTuning
2022, Text-to-LoRA 2025), as a pure function over a dict of tensors.

    Δ = H(task);  LoRA for the task = θ0 + Δ

Task encoding: each class of the support set is the concatenation of its prototype (mean support
embedding under the start LoRA θ0, frozen) and the embedding of its label name (zeros when there
are no names); a DeepSets encoder maps each class to a vector and averages over classes, so the
code is invariant to the order of examples and of classes. Output: for every LoRA tensor of the
body, the code plus learnable embeddings of the tensor's module type and layer index goes through
a shared layer, then an output layer per module type writes the tensor's Δ. One small network
serves all layers. By default it writes the B matrices only and the A matrices stay θ0's (as in
LoRA-FA): ΔW = ΔB·A is still a rank-r update of every targeted weight, at half the output size
(and A gets no gradient at the start anyway, since LoRA starts with B = 0); `write: AB` writes both. The output layers start at zero, so before training the generated
adapter *is* θ0, bit for bit.

The hypernetwork's tensors live in the same params dict as the LoRA, under HYPER_PREFIX, so the
meta-training recipe, checkpoints and selection handle them like any other meta-parameter; a
start whose params hold them generates its LoRA from the support set before adapting
(`adaptation.adapt`). Its architecture is read off the tensor shapes: nothing else to save.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_meta.data.episodes import Examples, label_name_text
from llm_meta.meta.heads import prototypes
from llm_meta.meta.kinds import labelled_embeddings
from llm_meta.modeling.body import Body, Params
from llm_meta.modeling.forward import embed_texts

HYPER_PREFIX = "hyper."
_SLOT = re.compile(r"\.(\d+)\.(.+?)\.lora_([AB])\.")


@dataclass
class HypernetConfig:
    hidden: int = 64  # width of the task code and of the shared layer
    write: str = "B"  # B: ΔB only (A stays θ0's) | AB: both


def slot(name: str) -> tuple[int, str, str]:
    """(layer index, module type, 'A' | 'B') of a LoRA tensor name, e.g. (3, 'attention_self_query', 'B').

    The type is the module's path inside its layer (BERT has three different `dense` modules)."""
    m = _SLOT.search(name)
    if m is None:
        raise ValueError(f"cannot read the layer and module of LoRA tensor {name!r}")
    return int(m.group(1)), m.group(2).replace(".", "_"), m.group(3)


def has_hypernet(params: Params) -> bool:
    return any(k.startswith(HYPER_PREFIX) for k in params)


def split_hypernet(params: Params) -> tuple[Params, Params]:
    """(everything else, the hypernetwork's tensors without the prefix)."""
    return ({k: v for k, v in params.items() if not k.startswith(HYPER_PREFIX)},
            {k[len(HYPER_PREFIX):]: v for k, v in params.items() if k.startswith(HYPER_PREFIX)})


def init_hypernet(lora: Params, hidden_size: int, cfg: HypernetConfig, seed: int = 0) -> Params:
    """Initial hypernetwork tensors for the LoRA tensors in `lora` (keys prefixed with HYPER_PREFIX)."""
    if cfg.write not in ("B", "AB"):
        raise ValueError(f"hypernet.write must be B or AB, got {cfg.write!r}")
    g = torch.Generator().manual_seed(seed)
    d = cfg.hidden
    slots = [slot(k) for k in lora]
    layers = max(layer for layer, _, _ in slots) + 1
    types = sorted({t for _, t, _ in slots})

    def dense(rows: int, cols: int) -> Tensor:  # variance-preserving for ReLU layers
        return torch.randn(rows, cols, generator=g) * math.sqrt(2.0 / cols)
    net = {
        "enc1.weight": dense(d, 2 * hidden_size), "enc1.bias": torch.zeros(d),
        "enc2.weight": dense(d, d), "enc2.bias": torch.zeros(d),
        "task.weight": dense(d, d), "task.bias": torch.zeros(d),
        "layer_emb": torch.randn(layers, d, generator=g), "type_emb": torch.randn(len(types), d, generator=g),
        "mix.weight": dense(d, d), "mix.bias": torch.zeros(d),
    }
    for key, tensor in lora.items():  # zero output layers: Δ = 0 until training moves them
        _, kind, ab = slot(key)
        if ab not in cfg.write:
            continue
        net.setdefault(f"out.{kind}.{ab}.weight", torch.zeros(tensor.numel(), d))
        net.setdefault(f"out.{kind}.{ab}.bias", torch.zeros(tensor.numel()))
    device = next(iter(lora.values())).device
    return {HYPER_PREFIX + k: v.to(device) for k, v in net.items()}


def count_parameters(params: Params) -> int:
    return sum(v.numel() for k, v in params.items() if k.startswith(HYPER_PREFIX))


@torch.no_grad()
def class_features(body: Body, lora: Params, support: Examples, n_way: int,
                   label_names: list[str] | None) -> Tensor:
    """[N, 2H]: each class's support prototype under the start LoRA, and its label name's embedding."""
    emb, labels = labelled_embeddings(body, lora, support)
    protos = prototypes(emb, labels, n_way)
    names = embed_texts(body, lora, [label_name_text(n) for n in label_names]) if label_names \
        else torch.zeros_like(protos)
    return torch.cat([protos, names.to(protos.dtype)], dim=1)


def generate(net: Params, features: Tensor, lora: Params) -> Params:
    """Δ for every tensor of `lora` it writes (all B's; and A's if trained to), from class features
    [N, 2H]; `net` without the prefix."""
    layers, kinds = net["layer_emb"].shape[0], _types(net)
    writes_a = any(k.endswith(".A.weight") for k in net)
    per_class = F.relu(F.linear(F.relu(F.linear(features, net["enc1.weight"], net["enc1.bias"])),
                                net["enc2.weight"], net["enc2.bias"]))
    code = F.relu(F.linear(per_class.mean(0), net["task.weight"], net["task.bias"]))  # DeepSets: mean over classes
    delta = {}
    for key, tensor in lora.items():
        layer, kind, ab = slot(key)
        if ab == "A" and not writes_a:
            continue
        if kind not in kinds or layer >= layers or net[f"out.{kind}.{ab}.bias"].numel() != tensor.numel():
            raise ValueError(f"this hypernetwork was trained for another model or LoRA layout: it has no output "
                             f"for {kind} {ab} of layer {layer} with {tensor.numel()} values")
        h = F.relu(F.linear(code + net["layer_emb"][layer] + net["type_emb"][kinds.index(kind)],
                            net["mix.weight"], net["mix.bias"]))
        delta[key] = F.linear(h, net[f"out.{kind}.{ab}.weight"], net[f"out.{kind}.{ab}.bias"]).view_as(tensor)
    return delta


def _types(net: Params) -> list[str]:
    return sorted({k.split(".")[1] for k in net if k.startswith("out.")})


def generated_params(body: Body, params: Params, support: Examples, n_way: int,
                     label_names: list[str] | None) -> Params:
    """`params` with the hypernetwork replaced by what it writes for this support set: LoRA θ0 + Δ.

    Differentiable in the hypernetwork and θ0 (the task features themselves are constants)."""
    rest, net = split_hypernet(params)
    lora = {k: v for k, v in rest.items() if k in body.lora_names}
    delta = generate(net, class_features(body, lora, support, n_way, label_names).to(net["enc1.weight"].dtype), lora)
    return {**rest, **{k: lora[k] + delta[k] if k in delta else lora[k] for k in lora}}
