"""The benchmark's configuration and its methods: which start each method adapts from and how its
adaptation differs from the shared one (`method_spec`: built-in methods, any trained start by
name, `METHOD@key=value` ablations, `METHOD+select` with the start chosen per episode).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable


from llm_meta import meta_training as meta_train
from llm_meta.classifier import default_adapt_config
from llm_meta.config import from_dict, load_config, parse_yaml, to_dict
from llm_meta.data.ner import NerConfig
from llm_meta.meta.adaptation import own_adaptation
from llm_meta.meta.core import InnerConfig
from llm_meta.modeling.body import ModelConfig


# method -> (which start it adapts from, how its inner loop differs from the shared one)
METHODS: dict[str, tuple[str, Callable[[InnerConfig], InnerConfig]]] = {
    "prototype": ("untrained", lambda c: dataclasses.replace(c, steps=0)),
    "linear_probe": ("untrained", lambda c: dataclasses.replace(c, train_lora=False)),
    "finetune": ("untrained", lambda c: c),
    "transfer": ("transfer", lambda c: c),
    "fomaml": ("fomaml", lambda c: c),
    "maml": ("maml", lambda c: c),
    "metasgd": ("metasgd", lambda c: c),  # its learned per-tensor rates replace adapt.lr
    "reptile": ("reptile", lambda c: c),
    "protonet": ("protonet", lambda c: own_adaptation(c, "protonet")),  # ProtoNet's own protocol: no steps
    # The hypernetwork's adapter for the episode, written in one forward pass (0 steps), then adapted.
    "hypernet": ("hypernet", lambda c: dataclasses.replace(c, steps=0)),
    "hypernet_adapt": ("hypernet", lambda c: c),
    "hypernet_fomaml": ("hypernet_fomaml", lambda c: c),  # generator trained through FOMAML's inner loop
}


# `METHOD+select`: each episode's start is chosen as `llm-meta adapt` chooses it (`select_start=auto`):
# on an episode whose class names are all among those METHOD's start was meta-trained with, that start,
# adapted as METHOD does (`protonet+select`: no steps); on any other, the candidate `choose_start` picks
# on the support set among the untrained start, METHOD's start and its weight change halved, adapted
# as `finetune` does (the shared adaptation, with any `@key=value` changes of the method).
SELECT = "+select"


def method_spec(name: str, algorithms: dict[str, str]) -> tuple[str, Callable[[InnerConfig], InnerConfig]]:
    """(start, inner-loop change) of a method: a built-in one, or any start named in `algorithms`
    (trained start -> the algorithm its training config runs, `start_algorithms`; e.g. `fomaml_smlmt`).
    A trained start adapts by its algorithm's own protocol, as `llm-meta adapt` adapts an adapter on
    a task of its family's labels (`llm_meta.meta.adaptation.own_adaptation`: a ProtoNet-trained start
    takes no steps, under any name). `method@key=value,...` is that method with its adaptation changed (e.g.
    `finetune@transductive=5`, `protonet@steps=15`): how the ablation rows of one adaptation option
    sit next to the others in one report. `method+select` (before any `@`) is that method with its
    start chosen per episode (`SELECT`). Raises ValueError for an unknown method or adaptation key,
    or `+select` on a method of the untrained start."""
    base, _, changes = name.partition("@")
    select, base = base.endswith(SELECT), base.removesuffix(SELECT)
    if base in METHODS:
        start, change = METHODS[base]
    elif base in algorithms:
        start, change = base, lambda c: c
    else:
        raise ValueError(f"unknown benchmark method '{base}' (valid: {', '.join(METHODS)}, or a start named in "
                         f"train_configs)")
    algorithm = algorithms.get(start)
    inner = change if algorithm is None else lambda c: own_adaptation(change(c), algorithm)
    if select and start == "untrained":
        raise ValueError(f"benchmark method '{name}': {SELECT} chooses between the untrained start and a trained "
                         f"one, and '{base}' adapts from the untrained start (use a trained start's method)")
    if not changes:
        return start, inner
    pairs = [item.partition("=") for item in changes.split(",")]
    if any(not sep or not key for key, sep, _ in pairs):
        raise ValueError(f"method '{name}': write adaptation changes as method@key=value,key=value")
    update = {key.strip(): parse_yaml(raw) for key, _, raw in pairs}

    def changed(c: InnerConfig) -> InnerConfig:
        return from_dict(InnerConfig, {**to_dict(inner(c)), **update})
    try:
        changed(InnerConfig())  # an unknown key or a wrong type fails here, before any training
    except ValueError as err:
        raise ValueError(f"benchmark method '{name}': {err}") from None
    return start, changed


@dataclass
class EpisodicConfig:
    tasks: list[str] = field(default_factory=lambda: ["banking77", "mcid", "tweet_sentiment"])
    n_way: int = 5  # capped at a task's number of classes
    shots: list[int] = field(default_factory=lambda: [1, 5])
    q_query: int = 10
    episodes: int = 200  # per task and K
    split: str = "test"
    seed: int = 0


@dataclass
class FullwayConfig:
    tasks: list[str] = field(default_factory=lambda: ["banking77"])  # all classes, full test split
    shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # support draws


@dataclass
class NerProtocolConfig:
    """Few-NERD-style episodes over the held-out entity types, scored by entity F1."""

    split: NerConfig = field(default_factory=NerConfig)  # data unset: no NER settings; must equal the starts' `ner`
    n_way: int = 5  # capped at the number of held-out types
    shots: list[int] = field(default_factory=lambda: [1, 5])
    episodes: int = 100  # per K
    seed: int = 0


@dataclass
class Config:
    # A benchmark folder of ours is continued (its trained starts and scores are keyed by content and
    # reused); overwrite (--overwrite) clears its entries first. Any other existing folder is refused.
    output_dir: str = "runs/benchmark"
    overwrite: bool = False
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    meta_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train_configs: dict[str, str] = field(default_factory=lambda: {
        "fomaml": "recipes/configs/meta_train.yaml", "reptile": "recipes/configs/reptile.yaml",
        "transfer": "recipes/configs/transfer.yaml", "maml": "recipes/configs/maml.yaml",
        "metasgd": "recipes/configs/metasgd.yaml", "protonet": "recipes/configs/protonet.yaml",
        "hypernet": "recipes/configs/hypernet.yaml", "hypernet_fomaml": "recipes/configs/hypernet_fomaml.yaml"})
    train_overrides: list[str] = field(default_factory=list)  # applied to every start's training run
    start_overrides: dict[str, list[str]] = field(default_factory=dict)  # start name -> its own overrides (after)
    budget_scale: float = 1.0  # scales each training config's outer.steps and validate_every (quick runs)
    references: list[str] = field(default_factory=lambda: ["transfer"])  # paired differences against each
    # The one pre-declared contrast judged at 5% on its own, "METHOD vs REFERENCE on PROTOCOL/TASK/K"
    # (e.g. "fomaml vs transfer on fullway/banking77/5"); every other verdict is Holm-adjusted.
    primary: str = ""
    bootstrap: int = 2000  # replicates of the crossed bootstrap behind every interval
    model: ModelConfig = field(default_factory=ModelConfig)  # replaces the training configs' model section
    # The shared adaptation of every method: by default `llm-meta adapt`'s procedure.
    adapt: InnerConfig = field(default_factory=default_adapt_config)
    episodic: EpisodicConfig = field(default_factory=EpisodicConfig)
    fullway: FullwayConfig = field(default_factory=FullwayConfig)
    ner: NerProtocolConfig = field(default_factory=NerProtocolConfig)


def start_algorithms(cfg: Config) -> dict[str, str]:
    """The algorithm each start of `cfg.train_configs` trains with, overrides applied (as `start_train_config`
    reads them). Raises ValueError for a start named `untrained` (the name of the start without training)."""
    if "untrained" in cfg.train_configs:
        raise ValueError("train_configs: 'untrained' names the start without training; give the trained start "
                         "another name")
    return {name: train_config(cfg, name).algorithm for name in cfg.train_configs}


def train_config(cfg: Config, name: str, extra: tuple[str, ...] = ()) -> meta_train.Config:
    """Start `name`'s training config with the benchmark's overrides (every start's, then its own),
    then `extra`."""
    return load_config(meta_train.Config, cfg.train_configs[name],
                       [*cfg.train_overrides, *cfg.start_overrides.get(name, []), *extra])


def start_family(cfg: Config, name: str) -> list[str]:
    """The class names trained start `name` is meta-trained with (`meta_train.family_labels` of its
    training config), which `+select` routes by as `llm-meta adapt` does. Read from the config, not
    from the adapter: an adapter meta-trained before eca2924 records none, so `llm-meta adapt` gives
    it the support-set choice on every task while the benchmark applies the label rule to it."""
    return meta_train.family_labels(train_config(cfg, name))


def shared_inner(method: str, cfg: Config) -> InnerConfig:
    """The adaptation of a `+select` method's untrained and halfway candidates: `finetune`'s, with the
    method's `@key=value` changes."""
    changes = method.partition("@")[2]
    return method_spec(f"finetune@{changes}" if changes else "finetune", {})[1](cfg.adapt)
