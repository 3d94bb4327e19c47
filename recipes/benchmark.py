"""Benchmark: meta-learned starts vs transfer fine-tuning and simple baselines on held-out tasks.

    llm-meta benchmark --config recipes/configs/benchmark_quick.yaml [key.sub=value ...]

Reads top to bottom: train the starts (FOMAML, Reptile, transfer; one run per meta-seed, reused
when already on disk), fix the evaluation episodes (generated once per task/protocol/K/seed,
hashed, cached), score every method on exactly those episodes with the same adaptation budget
and head initialisation (each run's scores cached, so an interrupted benchmark resumes), then write
a markdown report, a JSON file with every number, plots, and `kept.tar.gz`: the scores and the
starts' fingerprints, without their tensors, from which a run elsewhere resumes (`keep_run`).

Methods: prototype (frozen, no steps), linear_probe (head only), finetune (LoRA + head from the
untrained start), transfer / fomaml / maml / metasgd / reptile (LoRA + head from the trained
start), protonet (nearest prototype from the ProtoNet-trained start, no steps), hypernet (the adapter a
trained hypernetwork writes from the support set, no steps), hypernet_adapt (that adapter + the
shared adaptation), hypernet_fomaml (generator trained through FOMAML, + adaptation). Each row
also gets its wall time per episode (generate/adapt + score the queries).

A recipe, so one file read top to bottom, hence its length.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate.utils import set_seed
from tqdm import tqdm

from llm_meta.io.atomic import atomic_file
from llm_meta.io.atomic import write_atomic
from llm_meta.saving.checkpoint import load_adapter_params, read_metadata
from llm_meta.classifier import default_adapt_config
from llm_meta.data.episodes import whole_split_episode
from llm_meta.config import from_dict, load_config, parse_yaml, to_dict
from llm_meta.meta.core import InnerConfig, interpolate
from llm_meta.data.episodes import Episode, EpisodeSampler, Examples, WordExamples
from llm_meta.meta.adaptation import choose_start, in_family, own_adaptation
from llm_meta.eval.evaluation import episode_outcomes, episode_score, score_outcomes
from llm_meta.modeling.body import Body, ModelConfig, Params, lora_params
from llm_meta.modeling.loading import load_body
from llm_meta.data.ner import NerConfig, NerEpisodeSampler, split_ner
from llm_meta.io.outputs import OWN_FILE, claim_run
from llm_meta.progress import progress_bar
from llm_meta.eval.statistics import (UNIT, Estimate, Outcomes, crossed_bootstrap, holm, replicates_for, text_index,
                                 verdict)
from llm_meta.data.tasks import Task, load_task
from llm_meta import meta_training as meta_train

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
# What a trained start leaves beside its adapter: its tensors' fingerprint and what selection chose.
START_RECORD = "start.json"
KEPT = "kept.tar.gz"  # `keep_run`'s archive in every output folder
NEEDS = ("key", "record", "tensors")  # what of a trained start a run needs, least first (`_train_start`)


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
    """The algorithm each start of `cfg.train_configs` trains with, overrides applied (as `_start_config`
    reads them). Raises ValueError for a start named `untrained` (the name of the start without training)."""
    if "untrained" in cfg.train_configs:
        raise ValueError("train_configs: 'untrained' names the start without training; give the trained start "
                         "another name")
    return {name: _train_config(cfg, name).algorithm for name in cfg.train_configs}


def _train_config(cfg: Config, name: str, extra: tuple[str, ...] = ()) -> meta_train.Config:
    """Start `name`'s training config with the benchmark's overrides (every start's, then its own),
    then `extra`."""
    return load_config(meta_train.Config, cfg.train_configs[name],
                       [*cfg.train_overrides, *cfg.start_overrides.get(name, []), *extra])


def start_family(cfg: Config, name: str) -> list[str]:
    """The class names trained start `name` is meta-trained with (`meta_train.family_labels` of its
    training config), which `+select` routes by as `llm-meta adapt` does. Read from the config, not
    from the adapter: an adapter meta-trained before eca2924 records none, so `llm-meta adapt` gives
    it the support-set choice on every task while the benchmark applies the label rule to it."""
    return meta_train.family_labels(_train_config(cfg, name))


BENCHMARK_FORMAT = "llm_meta.benchmark/1"  # the output folder's own llm_meta.json
# What a benchmark writes into its folder: `--overwrite` removes these (and nothing else) first.
BENCHMARK_ENTRIES = ("starts", "scores", "episodes", "report.md", "results.json", "accuracy_vs_k.png", KEPT)


def main(cfg: Config, trust_remote_code: bool = False) -> dict:
    """Run the benchmark of `cfg` in `cfg.output_dir` (continuing one that is there); its results.
    `trust_remote_code`: let the base model's repo run its own code (the caller's choice only).

    Raises:
        OutputError: output_dir is not a folder the benchmark may write (`llm_meta.io.outputs.claim_run`).
        ValueError: a method without a training config, or a primary contrast naming no method run.
    """
    algorithms = start_algorithms(cfg)  # reads every training config once
    specs = {m: method_spec(m, algorithms) for m in cfg.methods}
    missing = sorted({start for start, _ in specs.values()} - {"untrained"} - set(cfg.train_configs))
    if missing:
        raise ValueError(f"no training config for start(s) {missing}: add train_configs.<name>: <yaml file>")
    _primary(cfg, None)  # a primary naming a method not run fails now, not after the training
    with claim_run(cfg.output_dir, BENCHMARK_FORMAT, BENCHMARK_ENTRIES, resume=None,
                   overwrite=cfg.overwrite) as out:
        return run(cfg, specs, out, trust_remote_code)


def run(cfg: Config, specs: dict[str, tuple], out: Path, trust_remote_code: bool = False) -> dict:
    """The benchmark itself, in the folder `main` has claimed."""

    # Starts: one untrained LoRA and one trained adapter per (training method, meta-seed). The
    # untrained start of meta-seed s is the exact step-0 start of that seed's training runs. A start
    # kept without its tensors (`keep_run`) is known by its fingerprint and selection only, and is
    # loaded (trained again) below only if a score it enters is not in out/scores.
    starts, fingerprints, trained = {}, {}, {}
    for seed in cfg.meta_seeds:
        body, starts[("untrained", seed)] = untrained_start(cfg.model, seed, trust_remote_code)
        fingerprints[("untrained", seed)] = _params_fingerprint(starts[("untrained", seed)])
    names = sorted({start for start, _ in specs.values()} - {"untrained"})

    def load(name: str, seed: int, need: str = "record") -> None:
        run_dir = _train_start(cfg, name, seed, out, need=need, trust_remote_code=trust_remote_code)
        starts[(name, seed)], fingerprints[(name, seed)], trained[f"{name}/seed{seed}"] = _load_start(body, run_dir)
    for name in names:
        for seed in cfg.meta_seeds:
            load(name, seed)

    # Fixed evaluation settings: (protocol, task, K) -> episodes, hashed and cached on disk.
    settings = {}
    for task in map(load_task, cfg.episodic.tasks):
        for k in cfg.episodic.shots:
            settings[("episodic", task.name, k)] = _cached(out, f"episodic-{task.name}-k{k}", _spec(cfg.episodic),
                                                           lambda t=task, k=k: _episodic(cfg.episodic, t, k))
    for task in map(load_task, cfg.fullway.tasks):
        for k in cfg.fullway.shots:
            settings[("fullway", task.name, k)] = _cached(out, f"fullway-{task.name}-k{k}", _spec(cfg.fullway),
                                                          lambda t=task, k=k: _fullway(cfg.fullway, t, k))
    if cfg.ner.split.data:
        name = Path(cfg.ner.split.data).stem
        for k in cfg.ner.shots:
            settings[("ner", name, k)] = _cached(out, f"ner-{name}-k{k}", _spec(cfg.ner), lambda k=k: _ner(cfg.ner, k),
                                                 WordExamples)

    # Score every method on every setting: per-episode accuracies, averaged over meta-seeds. Each
    # (start, adaptation, episodes) run is kept in out/scores, so an interrupted benchmark resumes
    # and adding a method or a meta-seed scores only what is new.
    primary = _primary(cfg, settings)
    units = [(m, s) for m in cfg.methods for s in settings]
    texts = {key: text_index([ep.query.texts for ep in setting["episodes"]]) for key, setting in settings.items()}
    outcomes: dict[str, dict[str, Outcomes]] = {m: {} for m in cfg.methods}  # per-query, for the bootstrap
    cached: dict[str, dict[str, bool]] = {m: {} for m in cfg.methods}  # whether the timing is a cached one
    scores: dict[str, dict[str, list[float]]] = {m: {} for m in cfg.methods}
    seen: dict[str, dict[str, str]] = {m: {} for m in cfg.methods}  # hash of the episodes each method scored
    seconds: dict[str, dict[str, float]] = {m: {} for m in cfg.methods}  # wall time per episode
    by_seed: dict[str, dict[str, list[float]]] = {m: {} for m in cfg.methods}  # mean score of each meta-seed
    per_draw: dict[str, dict[str, dict[int, list[float]]]] = {m: {} for m in cfg.methods}  # meta-seed -> episodes
    chosen: dict[str, dict[str, dict[str, int]]] = {m: {} for m in cfg.methods}  # +select: episodes per start
    picked: dict[str, dict[str, dict[int, list[str]]]] = {m: {} for m in cfg.methods}  # +select: per episode
    code = [_code_fingerprint(), _runtime(body)]

    # +select: the class names each trained start's family was meta-trained with (the same for every
    # meta-seed of a start).
    family = {name: start_family(cfg, name)
              for name in sorted({specs[m][0] for m in cfg.methods if m.partition("@")[0].endswith(SELECT)})}

    def score_path(method: str, key: tuple, seed: int) -> Path:
        start, inner = specs[method][0], specs[method][1](cfg.adapt)
        select = method.partition("@")[0].endswith(SELECT)
        ids = _candidate_ids(fingerprints, start, seed, select)
        shared = [to_dict(_shared_inner(method, cfg)), family[start]] if select else []
        return _score_path(out, [*code, to_dict(cfg.model), to_dict(inner), *shared, settings[key]["hash"], *ids])

    def seeds_of(method: str) -> list[int]:
        # The untrained LoRA's random A matters only once LoRA trains (B = 0 until then).
        start, inner = specs[method][0], specs[method][1](cfg.adapt)
        return cfg.meta_seeds if start != "untrained" or (inner.train_lora and inner.steps > 0) else cfg.meta_seeds[:1]
    # Kept starts whose tensors a missing score needs: train them again now, before any score is read,
    # so that every score of the report comes from the tensors it is keyed by. The scores read here
    # are not read again below.
    known = {path: _read_scores(path) for m, key in units for s in seeds_of(m) if starts[(specs[m][0], s)] is None
             for path in [score_path(m, key, s)]}
    for name, seed in sorted({(specs[m][0], s) for m, key in units for s in seeds_of(m)
                              if starts[(specs[m][0], s)] is None and known[score_path(m, key, s)] is None}):
        load(name, seed, need="tensors")
    # A kept start trained again as the init of another (`init: start:NAME`) has new tensors on disk:
    # read them, so its fingerprint (hence its scores' keys) and start.json are those of the new run.
    for name, seed in [k for k, params in starts.items() if params is None]:
        if _has_tensors(_run_dir(out, name, seed)):
            load(name, seed)
    for done, (method, key) in enumerate(progress_bar(units, desc="benchmark"), 1):
        start, inner = specs[method][0], specs[method][1](cfg.adapt)
        select = method.partition("@")[0].endswith(SELECT)
        seeds = seeds_of(method)
        episodes, name = settings[key]["episodes"], "/".join(map(str, key))
        shared = _shared_inner(method, cfg)
        runs = [_scored(path, lambda s=s: _score(body, _candidates(starts, start, s, select), start, episodes,
                                                            inner, shared, family.get(start)),
                        known[path] if path in known else _read_scores(path))
                for s in seeds for path in [score_path(method, key, s)]]
        per_seed = [[episode_score(o) for o in run] for run, _, _, _ in runs]
        outcomes[method][name] = Outcomes([run for run, _, _, _ in runs], *texts[key])
        if select:
            picked[method][name] = {s: picks for s, (_, _, _, picks) in zip(seeds, runs)}
            chosen[method][name] = dict(Counter(c for picks in picked[method][name].values() for c in picks))
        cached[method][name] = all(hit for _, _, hit, _ in runs)
        seconds[method][name] = sum(t for _, t, _, _ in runs) / (len(seeds) * len(episodes))
        scores[method][name] = [sum(r[i] for r in per_seed) / len(per_seed) for i in range(len(episodes))]
        by_seed[method][name] = [sum(r) / len(r) for r in per_seed]
        per_draw[method][name] = dict(zip(seeds, per_seed))
        seen[method][name] = _hash(episodes)
        # One line per unit even without a terminal (tqdm draws no bar in a log file).
        tqdm.write(f"[{done}/{len(units)}] {method} on {name}: {100 * sum(by_seed[method][name]) / len(seeds):.1f} "
                   f"({seconds[method][name]:.2f} s/episode{', cached' if cached[method][name] else ''})",
                   file=sys.stderr)

    estimates, contrasts = _statistics(cfg, settings, outcomes, primary)
    report = _report(cfg, settings, estimates, contrasts, trained, seconds, cached, by_seed, chosen)
    write_atomic(out / "report.md", report)
    results = {"config": to_dict(cfg), "starts": trained,
               "hashes": {"/".join(map(str, k)): v["hash"] for k, v in settings.items()},
               "episodes_seen": seen, "scores": scores, "scores_by_meta_seed": per_draw, "seconds_per_episode": seconds,
               "seconds_cached": cached, "mean_by_meta_seed": by_seed, "interval_unit": UNIT,
               "starts_chosen": {m: per for m, per in chosen.items() if per},
               "starts_chosen_by_meta_seed": {m: per for m, per in picked.items() if per},
               "estimates": {m: {k: dataclasses.asdict(e) for k, e in per.items()} for m, per in estimates.items()},
               "contrasts": contrasts}
    write_atomic(out / "results.json", json.dumps(results, indent=1))
    keep_run(out, out / KEPT)  # small enough to carry to another machine (or commit) and resume from there
    _plot(cfg, settings, estimates, out / "accuracy_vs_k.png")
    print(report)
    return results


def untrained_start(model: ModelConfig, seed: int, trust_remote_code: bool = False) -> tuple[Body, Params]:
    """The body and its freshly initialised LoRA tensors, seeded as meta_train.main seeds them."""
    set_seed(seed)
    body = load_body(model, trust_remote_code=trust_remote_code)
    return body, lora_params(body)


def _train_start(cfg: Config, name: str, seed: int, out: Path, chain: tuple[str, ...] = (),
                 need: str = "record", trust_remote_code: bool = False) -> Path:
    """Meta-train (or reuse) the start `name` with meta-seed `seed`; return its run folder.

    A start on disk is reused only when its DONE file holds the key of what would train it now:
    the training config after every override and the budget scale (adaptation included), the
    llm_meta sources, the device and dtype, the library versions, and the key of the start it
    begins from (`init: start:NAME`, trained first). A start kept without its tensors (`keep_run`)
    is reused as far as `need` asks: "key" (its DONE: the start another one begins from, already
    trained), "record" (also start.json: fingerprint and selection) or "tensors" (the adapter).
    Otherwise it is moved aside (never deleted) and trained again, with one line saying why. The
    training wall time goes to `timing.json`.
    """
    run_dir = _run_dir(out, name, seed)
    train_cfg = _start_config(cfg, name, seed, run_dir)
    keyed, first, after = {k: v for k, v in to_dict(train_cfg).items() if k != "output_dir"}, "", ""
    if train_cfg.init and train_cfg.init.startswith("start:"):  # e.g. FOMAML from the transfer start
        first = train_cfg.init[len("start:"):]
        if first not in cfg.train_configs or first in (*chain, name):
            raise ValueError(f"start '{name}': init={train_cfg.init} must name another start of train_configs, "
                             f"without a loop ({' -> '.join((*chain, name, first))})")
        after = (_train_start(cfg, first, seed, out, (*chain, name), "key", trust_remote_code) / "DONE").read_text().strip()
    key = hashlib.sha256(json.dumps([keyed, _code_fingerprint(), _runtime(None, train_cfg.mixed_precision), after],
                                    sort_keys=True).encode()).hexdigest()[:20]
    done = run_dir / "DONE"
    same = done.is_file() and done.read_text().strip() == key
    have = "tensors" if _has_tensors(run_dir) else "record" if _read_record(run_dir) is not None else "key"
    if same and NEEDS.index(have) >= NEEDS.index(need):
        return run_dir
    if run_dir.exists():
        stale = run_dir.with_name(f"{run_dir.name}.replaced-{int(time.time())}")
        why = (f"is kept without its {need}, which this run needs" if same else
               "was trained with another config, code, device or library versions (or did not finish)")
        tqdm.write(f"start '{name}' (meta-seed {seed}) in {run_dir} {why}; moved to {stale.name}, training it again",
                   file=sys.stderr)
        run_dir.rename(stale)
    if first:  # training needs the tensors of the start it begins from
        train_cfg.init = str(_train_start(cfg, first, seed, out, (*chain, name), "tensors", trust_remote_code) / "adapter")
    tqdm.write(f"training start '{name}' (meta-seed {seed}) -> {run_dir}", file=sys.stderr)
    began = time.perf_counter()
    meta_train.main(train_cfg, trust_remote_code=trust_remote_code)
    write_atomic(run_dir / "timing.json", json.dumps({"train_seconds": round(time.perf_counter() - began, 1)}))
    write_atomic(done, key)
    return run_dir


def _load_start(body: Body, run_dir: Path) -> tuple[Params | None, str, dict]:
    """(tensors, their fingerprint, what meta-validation selected) of a trained start. From the
    adapter when it is on disk (recording fingerprint and selection in start.json), else from
    start.json alone, with no tensors (a kept start)."""
    adapter = run_dir / "adapter"
    if not _has_tensors(run_dir):
        record = _read_record(run_dir)
        return None, record["params_fingerprint"], record["selection"]
    params = load_adapter_params(body, adapter)
    record = {"params_fingerprint": _params_fingerprint(params), "selection": _selection(adapter)}
    write_atomic(run_dir / START_RECORD, json.dumps(record, indent=1))
    return params, record["params_fingerprint"], record["selection"]


def _run_dir(out: Path, name: str, seed: int) -> Path:
    return out / "starts" / f"{name}-seed{seed}"


def _has_tensors(run_dir: Path) -> bool:
    """Whether a start's adapter is on disk (a kept start has only DONE and start.json)."""
    return (run_dir / "adapter" / "llm_meta.json").is_file()


def _read_record(run_dir: Path) -> dict | None:
    """A kept start's start.json, or None when it is absent or unreadable (the start is then
    trained again, as a start without it would be)."""
    try:
        record = json.loads((run_dir / START_RECORD).read_text())
        return record if isinstance(record.get("params_fingerprint"), str) and "selection" in record else None
    except (FileNotFoundError, ValueError, AttributeError):
        return None


def keep_run(out: Path, archive: Path) -> list[str]:
    """Write a gzipped tar of what lets a later run of the same benchmark, on another machine or
    from a fresh clone, reuse this one without its tensors: every score in out/scores (of every
    run in this folder) and each start's DONE key and its start.json (fingerprint, selection,
    training wall time). Extract it into an output folder and run the benchmark there with the same
    llm_meta sources, device, dtype and library versions (they are in every key; with any other,
    everything trains and scores again): cached scores are read, and a kept start is trained again
    only when a score it enters is missing (e.g. a new `METHOD@...` or `+select` variant of it) or
    when it is needed as a method's start but was kept only as another start's init (DONE alone).
    New meta-seeds and methods train as usual. Returns the archived paths, relative to `out`."""
    import tarfile

    kept = [d for d in (out / "starts").glob("*") if ".replaced-" not in d.name and (d / "DONE").is_file()]
    marker = [out / OWN_FILE] if (out / OWN_FILE).is_file() else []  # the folder unpacks as a benchmark's
    files = [*marker, *(out / "scores").glob("*.json"), *(d / "DONE" for d in kept),
             *(d / START_RECORD for d in kept if (d / START_RECORD).is_file())]
    names = sorted(p.relative_to(out).as_posix() for p in files)
    with atomic_file(archive) as partial, tarfile.open(partial, "w:gz") as tar:  # never half an archive
        for name in names:
            tar.add(out / name, arcname=name)
    return names


def _start_config(cfg: Config, name: str, seed: int, run_dir: Path) -> meta_train.Config:
    """The full training config of start `name` at meta-seed `seed`, as the benchmark runs it."""
    train_cfg = _train_config(cfg, name, (f"seed={seed}", f"output_dir={run_dir}", "test.episodes=0"))
    train_cfg.outer.steps = max(1, round(train_cfg.outer.steps * cfg.budget_scale))
    train_cfg.validate_every = max(1, round(train_cfg.validate_every * cfg.budget_scale))
    meta_train.check_held_out(train_cfg, [*cfg.episodic.tasks, *cfg.fullway.tasks], f"the benchmark's tasks, "
                              f"start '{name}'")
    if cfg.ner.split.data and train_cfg.ner != cfg.ner.split:
        raise ValueError(f"the '{name}' training config's ner section differs from the benchmark's ner.split: "
                         f"held-out types and data must be the same")
    # The benchmark's model section is the one every start trains: switching the whole benchmark to
    # another base model (e.g. a decoder) is one key, `model.name`.
    train_cfg.model = cfg.model
    # Selection must score checkpoints with the adaptation the benchmark then applies to them
    # (the start's own method: ProtoNet's is 0 steps).
    train_cfg.adapt = method_spec(name, {name: train_cfg.algorithm})[1](cfg.adapt)
    return train_cfg


def _runtime(body: Body | None, mixed_precision: str = "no") -> dict:
    """What a result depends on beyond config and code: device, dtype and library versions."""
    from llm_meta.modeling.body import autocast_dtype
    from llm_meta.meta.training import environment

    device = str(body.device) if body is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = str(autocast_dtype(body)) if body is not None else mixed_precision
    return {"device": device, "dtype": dtype, "packages": {k: v for k, v in environment()["packages"].items()
                                                          if k != "llm_meta"}}


def _selection(adapter: Path) -> dict:
    """What meta-validation chose for a trained start: the step kept, and its score vs step 0."""
    meta = read_metadata(adapter)
    timing = adapter.parent / "timing.json"
    return {"steps_trained": meta["config"]["outer"]["steps"], "selected_step": meta["step"],
            "alpha": meta.get("alpha", 1.0), "init": meta["config"].get("init"),
            "validation_accuracy": meta["validation_accuracy"],
            "step0_validation_accuracy": meta["step0_validation_accuracy"],
            "train_seconds": json.loads(timing.read_text())["train_seconds"] if timing.is_file() else None}


def _ner(nc: NerProtocolConfig, k: int) -> list[Episode]:
    split, _ = split_ner(nc.split)
    types = sorted(nc.split.held_out_types)
    sampler = NerEpisodeSampler(split["test"], types, min(nc.n_way, len(types)), k, k, seed=nc.seed,
                                name=Path(nc.split.data).stem)
    return sampler.episodes(nc.episodes)


def _episodic(ec: EpisodicConfig, task: Task, k: int) -> list[Episode]:
    n_way = min(ec.n_way, len(task.label_names))
    return EpisodeSampler([task], n_way, k, ec.q_query, split=ec.split, seed=ec.seed).episodes(ec.episodes)


def _fullway(fc: FullwayConfig, task: Task, k: int) -> list[Episode]:
    """One 'episode' per support seed: K per class from train, every test text as the query."""
    return [whole_split_episode(task, k, "train", "test", seed) for seed in fc.seeds]


def _spec(protocol_cfg) -> str:
    """A short hash of what generates a protocol's episodes, minus the lists of tasks and K (each
    (task, K) has its own file): another episode count, seed or way is another cache file."""
    fields = {k: v for k, v in to_dict(protocol_cfg).items() if k not in ("tasks", "shots")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def _cached(out: Path, name: str, spec: str, make: Callable[[], list[Episode]],
            kind: type[Examples] = Examples) -> dict:
    """Episodes from the cache file of this (setting, generating config) if present, else generated
    and written; with their hash. `kind`: the examples' type (`WordExamples` for NER episodes)."""
    path = out / "episodes" / f"{name}-{spec}.json"
    try:
        episodes = [Episode(kind(**e["support"]), kind(**e["query"]), e["label_names"], e["task"])
                    for e in json.loads(path.read_text())]
    except FileNotFoundError:
        episodes = None
    except (ValueError, KeyError, TypeError) as err:  # unreadable: regenerate (same seed, same episodes)
        tqdm.write(f"warning: episode cache {path} is unreadable ({err}); generating it again", file=sys.stderr)
        episodes = None
    if episodes is None:
        episodes = make()
        write_atomic(path, json.dumps([dataclasses.asdict(e) for e in episodes], ensure_ascii=False))
    return {"episodes": episodes, "hash": _hash(episodes)}


def _candidates(starts: dict, start: str, seed: int, select: bool) -> dict[str, Params]:
    """The start(s) one method adapts from at one meta-seed: its own, or for `+select` the
    candidates `llm-meta adapt` chooses among (the untrained start first: it wins ties)."""
    if not select:
        return {start: starts[(start, seed)]}
    untrained, trained = starts[("untrained", seed)], starts[(start, seed)]
    return {"untrained": untrained, start: trained, f"{start} at α=0.5": interpolate(untrained, trained, 0.5)}


def _shared_inner(method: str, cfg: Config) -> InnerConfig:
    """The adaptation of a `+select` method's untrained and halfway candidates: `finetune`'s, with the
    method's `@key=value` changes."""
    changes = method.partition("@")[2]
    return method_spec(f"finetune@{changes}" if changes else "finetune", {})[1](cfg.adapt)


def _score(body: Body, candidates: dict[str, Params], own: str, episodes: list[Episode], inner: InnerConfig,
           shared: InnerConfig, family: list[str] | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Per-query outcomes of every episode and the start each one adapted from: the only
    candidate (adapted with `inner`), or, as `llm-meta adapt` chooses (`select_start=auto`): the
    method's own start (candidate `own`) adapted with `inner` on an episode whose class names are
    among its `family`'s (`in_family`), else the candidate `choose_start` picks on the episode's
    support set, adapted with `shared`."""
    if len(candidates) == 1:
        return score_outcomes(body, next(iter(candidates.values())), episodes, inner), []
    fam = [in_family(ep.label_names, family) for ep in episodes]
    picks = [own if f else choose_start(body, candidates, ep.support, ep.n_way, shared, ep.label_names)[0]
             for f, ep in zip(fam, episodes)]
    # Recorded apart from a chosen `own`, so that a report tells the label rule from the choice.
    return [episode_outcomes(body, candidates[c], ep, inner if f else shared, seed=i)
            for i, (c, f, ep) in enumerate(zip(picks, fam, episodes))], \
        [family_pick(c) if f else c for c, f in zip(picks, fam)]


def family_pick(own: str) -> str:
    """How a `+select` episode routed to its start by the family's class names is recorded."""
    return f"{own} (family labels)"


def _candidate_ids(fingerprints: dict, start: str, seed: int, select: bool) -> list[str]:
    """What identifies `_candidates(...)` in a score's key, known without the tensors."""
    if not select:
        return [fingerprints[(start, seed)]]
    untrained, trained = fingerprints[("untrained", seed)], fingerprints[(start, seed)]
    return [untrained, trained, f"α=0.5 between {untrained} and {trained}"]


def _score_path(out: Path, key: list) -> Path:
    """out/scores/<hash of `key`>: `key` holds everything the outcomes depend on, namely the code,
    the model, the adaptation, the episodes and the fingerprints of the starts' tensors."""
    return out / "scores" / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]}.json"


def _read_scores(path: Path) -> tuple[list[np.ndarray], float, list[str]] | None:
    """(per-query outcomes of each episode, seconds, starts chosen) cached at `path`, or None
    when it is absent or unreadable (then it is scored again)."""
    try:
        saved = json.loads(path.read_text())
        return ([np.array(rows, dtype=np.float64) for rows in saved["outcomes"]], float(saved["seconds"]),
                saved.get("chosen", []))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as err:
        tqdm.write(f"warning: score cache {path} is unreadable ({err}); scoring again", file=sys.stderr)
        return None


def _scored(path: Path, score: Callable[[], tuple[list[np.ndarray], list[str]]],
            saved: tuple[list[np.ndarray], float, list[str]] | None
            ) -> tuple[list[np.ndarray], float, bool, list[str]]:
    """(per-query outcomes of each episode, seconds, whether read from the cache, the start each
    episode adapted from when it was chosen) of one method on one episode set: `saved`, what
    `_read_scores(path)` read, if anything, else computed and written whole to `path`."""
    if saved is not None:
        return saved[0], saved[1], True, saved[2]
    began = time.perf_counter()
    values, picks = score()
    took = time.perf_counter() - began
    write_atomic(path, json.dumps({"outcomes": [v.tolist() for v in values], "seconds": took, "chosen": picks}))
    return values, took, False, picks


def _params_fingerprint(params: Params) -> str:
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    return h.hexdigest()[:20]


@functools.lru_cache(maxsize=1)  # the sources do not change during a run; every start and unit asks
def _code_fingerprint() -> str:
    """A hash of the llm_meta sources: cached scores from other code are not reused."""
    import llm_meta

    h = hashlib.sha256()
    for path in sorted(Path(llm_meta.__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:20]


def _hash(episodes: list[Episode]) -> str:
    return hashlib.sha256("".join(e.fingerprint() for e in episodes).encode()).hexdigest()[:16]


def _primary(cfg: Config, settings: dict | None) -> tuple[str, str, str] | None:
    """(method, reference, setting name) of the declared primary contrast, checked; None if none.
    `settings` None: only the method and reference are checked (before any training is spent)."""
    if not cfg.primary:
        return None
    method, _, rest = cfg.primary.partition(" vs ")
    reference, _, setting = rest.partition(" on ")
    method, reference, setting = method.strip(), reference.strip(), setting.strip()
    names = ["/".join(map(str, k)) for k in settings] if settings is not None else [setting]
    if method not in cfg.methods or reference not in cfg.references or setting not in names:
        raise ValueError(f"primary '{cfg.primary}' must read 'METHOD vs REFERENCE on PROTOCOL/TASK/K' with a method of "
                         f"{cfg.methods}, a reference of {cfg.references} and a setting of {names}")
    return method, reference, setting


def _statistic_of(protocol: str) -> str:
    return "micro_f1" if protocol == "ner" else "accuracy"


def _statistics(cfg: Config, settings: dict, outcomes: dict, primary: tuple | None) -> tuple[dict, list[dict]]:
    """Bootstrap estimates of every (method, setting) and of every paired contrast against a
    reference; verdicts Holm-adjusted over every contrast except the pre-declared primary one."""
    estimates: dict[str, dict[str, Estimate]] = {m: {} for m in cfg.methods}
    contrasts = []
    pairs = {m: [r for r in cfg.references if r != m and r in outcomes] for m in cfg.methods}
    # Enough replicates for the paired differences that Holm over all of them can say "win".
    n_boot = max(cfg.bootstrap, replicates_for(sum(map(len, pairs.values())) * len(settings)))
    for key in settings:
        name, statistic = "/".join(map(str, key)), _statistic_of(key[0])
        for method in cfg.methods:
            estimates[method][name] = crossed_bootstrap(outcomes[method][name], statistic=statistic,
                                                        n_boot=cfg.bootstrap)
            if key[0] == "ner":  # Few-NERD reports micro F1; the per-episode mean sits beside it
                estimates[method][f"{name}/episode_f1"] = crossed_bootstrap(
                    outcomes[method][name], statistic="episode_f1", n_boot=cfg.bootstrap)
            for reference in pairs[method]:
                d = crossed_bootstrap(outcomes[method][name], outcomes[reference][name], statistic, n_boot)
                contrasts.append({"method": method, "reference": reference, "setting": name, **dataclasses.asdict(d),
                                  "primary": (method, reference, name) == primary, "replicates": n_boot})
    secondary = [c for c in contrasts if not c["primary"]]
    for c, p in zip(secondary, holm([c["p"] for c in secondary])):
        c["p_adjusted"] = p
    for c in contrasts:
        c.setdefault("p_adjusted", c["p"])
        c["verdict"] = verdict(Estimate(c["mean"], c["low"], c["high"], c["p"]), c["p_adjusted"])
    return estimates, contrasts


def _report(cfg: Config, settings: dict, estimates: dict, contrasts: list[dict], trained: dict, seconds: dict,
            cached: dict, by_seed: dict, chosen: dict) -> str:
    primary = next((c for c in contrasts if c["primary"]), None)
    lines = ["# Benchmark report", "",
             f"Adaptation (config `adapt`): {cfg.adapt.steps} {cfg.adapt.optimizer} steps at lr {cfg.adapt.lr}, "
             f"head init {cfg.adapt.head_init}, label names as examples ×{cfg.adapt.label_examples}; a method "
             f"written `METHOD@key=value` changes that key, and prototype, hypernet and ProtoNet-trained rows "
             f"take no steps; methods that train LoRA are averaged over meta-seeds {cfg.meta_seeds}.", "",
             f"**Intervals**: every value is the mean with its {UNIT}; {cfg.bootstrap} replicates "
             f"({contrasts[0]['replicates'] if contrasts else cfg.bootstrap} for the paired differences, enough "
             f"that a Holm-adjusted p-value can fall below 5%). A paired "
             f"difference vs {', '.join(cfg.references)} shares the resampled episodes and texts of both sides. "
             f"NER rows report micro entity F1 over all query sentences of all episodes (Few-NERD), with the "
             f"per-episode mean beside it.", "",
             f"**Verdicts**: {len(contrasts)} comparisons in this report. " + (
                 f"The primary contrast, declared before the run, is {primary['method']} vs {primary['reference']} "
                 f"on {primary['setting']}: {_fmt_diff(primary)} at 5% on its own; the other "
                 f"{len(contrasts) - 1} are Holm-adjusted (family-wise 5%)." if primary else
                 "No primary contrast was declared (config `primary`): every verdict is Holm-adjusted "
                 "(family-wise 5%)."), ""]
    if trained:
        # A start whose selected step is 0 *is* the untrained start: its rows then measure no training.
        lines += ["## Trained starts (selected on meta-validation)", "",
                  "| start | steps trained | selected step | validation score (selected / step 0) | training wall time |",
                  "|---|---|---|---|---|"]
        for name, t in trained.items():
            origin = "the untrained start" if not t.get("init") else f"its init, {Path(t['init']).parent.name}"
            kept = f" ({origin} kept)" if t["selected_step"] == 0 else \
                f" (α = {t['alpha']:g})" if t.get("alpha", 1.0) != 1.0 else ""
            took = f"{t['train_seconds'] / 60:.1f} min" if t.get("train_seconds") else "-"
            lines.append(f"| {name} | {t['steps_trained']} | {t['selected_step']}{kept} | "
                         f"{100 * t['validation_accuracy']:.1f} / {100 * t['step0_validation_accuracy']:.1f} | {took} |")
        lines.append("")
    seed_head, seed_rule = (" mean per meta-seed |", "---|") if len(cfg.meta_seeds) > 1 else ("", "")
    by_key = {(c["method"], c["reference"], c["setting"]): c for c in contrasts}
    for key, setting in settings.items():
        protocol, task, k = key
        episodes = setting["episodes"]
        ner = protocol == "ner"
        # An NER episode's classes include O: say entity types, as the config (ner.n_way) does.
        way = f"{episodes[0].n_way - 1} entity types + O, K={k}" if ner else f"{episodes[0].n_way}-way {k}-shot"
        lines += [f"## {task}, {protocol}, {way} "
                  f"({len(episodes)} episodes, hash {setting['hash']})", "",
                  f"| method | {_metric(protocol)} |{' per-episode F1 |' if ner else ''} "
                  f"{' | '.join(f'vs {r}' for r in cfg.references)} | s/episode |{seed_head}",
                  "|---|---|" + "---|" * (len(cfg.references) + ner) + "---|" + seed_rule]
        name = "/".join(map(str, key))
        for method in cfg.methods:
            diffs = [_fmt_diff(by_key[(method, r, name)]) if (method, r, name) in by_key else "-" for r in cfg.references]
            per_seed = f" {' / '.join(f'{100 * v:.1f}' for v in by_seed[method][name])} |" if seed_head else ""
            extra = f" {100 * estimates[method][f'{name}/episode_f1'].mean:.1f} |" if ner else ""
            timing = f"{seconds[method][name]:.2f}{' (cached)' if cached[method][name] else ''}"
            lines.append(f"| {method} | {estimates[method][name]} |{extra} {' | '.join(diffs)} | {timing} |{per_seed}")
        lines.append("")
    picked = [(m, s, counts) for m, per in chosen.items() for s, counts in per.items()]
    if picked:
        lines += ["## Starts of the `+select` episodes", "",
                  "Episodes (over meta-seeds) that adapted from each candidate: chosen by the leave-one-out fit "
                  "of the support set before any step, or, marked '(family labels)', the method's start on an "
                  "episode whose class names are its family's.", "",
                  "| method | setting | episodes per start |", "|---|---|---|"]
        lines += [f"| {m} | {s} | {', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))} |" for m, s, counts in picked]
        lines.append("")
    return "\n".join(lines)


def _metric(protocol: str) -> str:
    return "micro entity F1" if protocol == "ner" else "accuracy"


def _fmt_diff(c: dict) -> str:
    mark = "primary, " if c["primary"] else ""
    return (f"{100 * c['mean']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}] "
            f"({mark}{c['verdict']}, p={c['p_adjusted']:.3g})")


def _plot(cfg: Config, settings: dict, estimates: dict, path: Path) -> None:
    """accuracy_vs_k.png, when matplotlib is installed (the `plots` extra); else one warning line:
    the report and the JSON, already written, hold every number the plot shows."""
    try:
        import matplotlib
    except ImportError:
        tqdm.write(f"no {path.name}: matplotlib is not installed (pip install \"llm_meta[plots]\"); the report "
                   "and results.json hold the same numbers", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((p, t) for p, t, _ in settings))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (protocol, task) in zip(axes[0], panels):
        ks = [k for p, t, k in settings if (p, t) == (protocol, task)]
        for method in cfg.methods:
            cis = [estimates[method][f"{protocol}/{task}/{k}"] for k in ks]
            ax.errorbar(ks, [100 * c.mean for c in cis],
                        yerr=[[100 * (c.mean - c.low) for c in cis], [100 * (c.high - c.mean) for c in cis]],
                        marker="o", capsize=3, label=method)
        ax.set_title(f"{task} ({protocol})")
        ax.set_xlabel("K (mentions per type)" if protocol == "ner" else "K (examples per class)")
        ax.set_xticks(ks)
        ax.set_ylabel(f"{_metric(protocol)} (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


if __name__ == "__main__":
    from llm_meta.cli import main as cli_main

    cli_main(["benchmark", *sys.argv[1:]])
