"""A start, typed: the parts a params dict carries, said in one place.

The algorithms work on one flat dict of named tensors (pure functions over parameter dicts), in
which the parts of a start are told apart by their keys: Meta-SGD's learned rates under
`llm_meta.meta.core.LR_PREFIX`, a hypernetwork under `llm_meta.meta.hypernet.HYPER_PREFIX`, an
adapted head under `HEAD_KEYS` (with a decomposed NER head's span detector, `SPAN_KEYS`), and the
transfer baseline's per-dataset head rows under `llm_meta.meta.transfer.TRANSFER_PREFIX`.
`Start.of(params)` splits such a dict into typed parts and `Start.params()` joins them again
(LoRA, head, rates, hypernetwork, transfer rows: the order every params dict here is built in); saving, loading, meta-training and continued adaptation ask a `Start` instead of
reading the prefixes themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_meta.meta.core import LR_PREFIX, Params
from llm_meta.meta.heads import HEAD_KEYS
from llm_meta.meta.hypernet import HYPER_PREFIX
from llm_meta.meta.spans import SPAN_KEYS
from llm_meta.meta.transfer import TRANSFER_PREFIX


@dataclass
class Start:
    """The parts of a params dict. Tensors keep their dict's names, except `rates` and `hypernet`,
    keyed without their prefix: `rates["x"]` is the log learning rate of tensor "x"."""

    lora: Params  # the LoRA tensors (everything that is none of the parts below)
    head: Params = field(default_factory=dict)  # an adapted head: "head.weight" [N, hidden], "head.bias" [N] (+ span)
    rates: Params = field(default_factory=dict)  # Meta-SGD: tensor name -> log learning rate (scalar)
    hypernet: Params = field(default_factory=dict)  # the hypernetwork's tensors, by their own names
    transfer: Params = field(default_factory=dict)  # transfer rows [hidden + 1], trained with a start, not part of it

    @classmethod
    def of(cls, params: Params) -> Start:
        """The parts of `params` (tensors shared, not copied)."""
        start = cls({})
        for key, value in params.items():
            if key.startswith(LR_PREFIX):
                start.rates[key[len(LR_PREFIX):]] = value
            elif key.startswith(HYPER_PREFIX):
                start.hypernet[key[len(HYPER_PREFIX):]] = value
            elif key.startswith(TRANSFER_PREFIX):
                start.transfer[key] = value
            elif key in HEAD_KEYS or key in SPAN_KEYS:
                start.head[key] = value
            else:
                start.lora[key] = value
        return start

    def params(self, transfer: bool = True) -> Params:
        """The flat dict again: LoRA, head, rates, hypernetwork, then (`transfer`) the transfer rows."""
        return {**self.lora, **self.head, **{LR_PREFIX + k: v for k, v in self.rates.items()},
                **{HYPER_PREFIX + k: v for k, v in self.hypernet.items()}, **(self.transfer if transfer else {})}

    @property
    def variant(self) -> str:
        """"hypernetwork", "meta-sgd" (learned rates) or "lora" (plain LoRA, maybe with a head)."""
        return "hypernetwork" if self.hypernet else "meta-sgd" if self.rates else "lora"
