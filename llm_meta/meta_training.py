"""Meta-training: a LoRA start learned with FOMAML, MAML, Meta-SGD, Reptile, ProtoNet, a
hypernetwork or multi-task transfer over N-way K-shot episodes, chosen on meta-validation.

    llm_meta.meta_train("recipes/configs/meta_train.yaml", "outer.steps=30")   # from Python
    llm-meta meta-train --config recipes/configs/meta_train.yaml [key.sub=value ...] [--resume]
    accelerate launch --num_processes 2 --cpu recipes/meta_train.py --config ... (meta-batch split)

`train` reads top to bottom: accelerator, model, tasks, samplers, meta-training loop with periodic
validation (the untrained start, step 0, is always a candidate), save the best-by-validation
adapter, then score it against the untrained start on held-out tasks. The recipe
recipes/meta_train.py is this module's command-line face.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from llm_meta.meta.algorithms import ALGORITHMS
from llm_meta.meta.transfer import ner_transfer_heads, transfer_heads
from llm_meta.io.atomic import write_atomic
from llm_meta.saving.checkpoint import (ADAPTER_FORMAT, CheckpointError, load_adapter_params, load_checkpoint, read_metadata, save_adapter,
                                 save_checkpoint)
from llm_meta.classifier import default_adapt_config, whole_split_episode
from llm_meta.config import load_config, to_dict, with_overrides
from llm_meta.meta.core import LR_PREFIX, InnerConfig, interpolate, meta_sgd_rates, outer_lr
from llm_meta.data.episodes import Episode, EpisodeSampler, StagedSampler
from llm_meta.eval.evaluation import Interval, mean_ci, paired_difference, score_episodes
from llm_meta.meta.heads import HEAD_KEYS
from llm_meta.meta.hypernet import HYPER_PREFIX, HypernetConfig, count_parameters, init_hypernet
from llm_meta.modeling.body import ModelConfig, lora_params
from llm_meta.modeling.loading import load_body
from llm_meta.io.outputs import claim_run
from llm_meta.data.ner import NerConfig, NerEpisodeSampler, extra_corpora, split_ner
from llm_meta.data.conll import entity_type, sentences_fingerprint
from llm_meta.modeling.words import report_cut
from llm_meta.progress import progress_bar
from llm_meta.data.smlmt import MixtureSampler, SmlmtConfig, SmlmtSampler, corpus_key, load_corpus
from llm_meta.data.tasks import load_task, shares_texts, task_fingerprint
from llm_meta.meta.training import RunLog, check_step, environment, meta_gradient, tracker_config

log = logging.getLogger("llm_meta.meta_train")


@dataclass
class CurriculumStage:
    """One stage of a way/shot curriculum."""

    from_step: int  # meta-step at which this stage's episodes start
    n_way: int
    k_shot: int


@dataclass
class EpisodeConfig:
    n_way: int = 10
    k_shot: int = 5
    q_query: int = 5
    weighting: str = "uniform"  # uniform | size: how an episode's task is chosen
    # Way/shot curriculum, e.g. [{from_step: 50, n_way: 30, k_shot: 5}]: from that meta-step on,
    # episodes have that shape (before the first stage: n_way/k_shot above).
    curriculum: list[CurriculumStage] = field(default_factory=list)
    # n_way above a task's usable classes: that task's episodes take all of them (full-way) instead
    # of failing, e.g. n_way: 150 gives 120-way CLINC150 and 15-way StackOverflow episodes.
    cap_way: bool = False


@dataclass
class TaskSource:
    """One entry of a weighted task mixture: a labelled task (`name`) or an SMLMT corpus (`smlmt`)."""

    name: str | None = None  # registry name, local file/folder, or hf:<id>
    text_column: str = "text"  # a file's columns (`llm-meta meta-train --text-column` sets them for every file task)
    label_column: str = "label"
    smlmt: str | None = None  # a corpus spec (see llm_meta.data.smlmt.load_corpus), settings from the smlmt section
    ner: bool = False  # the NER task of the ner section
    weight: float = 1.0  # share of episodes


@dataclass
class OuterConfig:
    steps: int = 30  # meta-steps
    meta_batch: int = 2  # episodes per meta-step, split across processes
    optimizer: str = "adam"  # adam | sgd (sgd with lr = ε and algorithm reptile is classic Reptile)
    lr: float = 1e-3  # with the proximal pull below; without it, 1e-4: a good sentence encoder pulled far hurts
    warmup: int = 3  # meta-steps of linear lr warm-up
    schedule: str = "cosine"  # constant | cosine (decay to 0 at the last step)
    proximal: float = 0.1  # λ of λ‖θ − θ0‖² added to the meta-loss: keeps the LoRA near the untrained start θ0


@dataclass
class EvalConfig:
    """Episodes scored after adaptation with `Config.adapt` (the test-time procedure)."""

    tasks: list[str] = field(default_factory=lambda: ["clinc", "hwu"])
    class_role: str | None = "meta_val"  # registry class split to draw from; None: all classes
    episodes: int = 6  # per task
    n_way: int = 10  # capped at the task's number of classes
    k_shot: int = 5
    # Query texts per class; 0: every class of the task, K support texts per class drawn from its
    # train split and every text of `split` as the query (the real class balance, as a user's task
    # and the benchmark's full-way rows are scored), one episode per support draw.
    q_query: int = 10
    split: str = "train"
    seed: int = 1


@dataclass
class Config:
    """The meta-training recipe's config. Its defaults are the one default configuration, written
    out in recipes/configs/meta_train.yaml (a test keeps the two equal)."""

    # fomaml | maml (second order) | metasgd | reptile | protonet | transfer | hypernet (a LoRA-writing
    # hypernetwork trained end to end with a ProtoNet query loss) | hypernet+fomaml (its output starts FOMAML)
    algorithm: str = "fomaml"
    seed: int = 0
    output_dir: str = "runs/meta_train"
    # A folder holding a run is continued only with resume (--resume) or started again only with
    # overwrite (--overwrite); resuming with a config other than the checkpoint's is refused, with
    # the differing keys listed, unless force (--resume --force; the differences go to log.jsonl).
    resume: bool = False
    overwrite: bool = False
    force: bool = False
    # Start from this adapter folder instead of the untrained LoRA, e.g. a transfer start (meta-learning
    # *from* transfer). It is then θ0 everywhere: the step-0 candidate, the proximal anchor and the
    # interpolation origin, so selection never keeps worse than it on meta-validation. In a benchmark,
    # `start:NAME` means the start NAME of the same meta-seed.
    init: str | None = None
    mixed_precision: str = "no"  # no | bf16 | fp16 (Accelerate autocast)
    # Accelerate trackers to log steps and validations to, besides log.jsonl: e.g. [tensorboard],
    # [wandb], [all] (every one installed); files go under output_dir/trackers.
    log_with: list[str] = field(default_factory=list)
    # Intents are 10-15 tokens: 48 keeps meta-steps cheap (adapt's default is 64).
    model: ModelConfig = field(default_factory=lambda: ModelConfig(max_length=48))
    # Labelled tasks, or a weighted mixture: [clinc, {name: hwu, weight: 2}, {smlmt: corpus.txt, weight: 1}].
    # HWU64 is left out: it is the validation task, kept whole.
    tasks: list[str | TaskSource] = field(default_factory=lambda: ["clinc", "stackoverflow"])
    smlmt: SmlmtConfig = field(default_factory=SmlmtConfig)  # smlmt.data: one more (self-supervised) source
    # ner.data: NER episodes only (tasks ignored), unless tasks has a {ner: true} entry that mixes them in.
    ner: NerConfig = field(default_factory=NerConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)  # inner loop during meta-training
    adapt: InnerConfig = field(default_factory=default_adapt_config)  # at validation/test time: as `llm-meta adapt`
    outer: OuterConfig = field(default_factory=OuterConfig)
    hypernet: HypernetConfig = field(default_factory=HypernetConfig)  # algorithm hypernet*
    validate_every: int = 15  # meta-steps between validations (and checkpoints)
    # Each validation also scores the weight change ΔW0 + α(ΔW − ΔW0) for these α (algorithms.interpolate;
    # 1.0: the trained LoRA itself); the best (step, α) on meta-validation is kept. α < 1 pulls a
    # trained start back towards the pretrained model.
    interpolation: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    # Selection on HWU64 kept whole, every class per episode: 10-way episodes of meta-val classes
    # score ~94% for every start and cannot tell starts apart.
    validation: EvalConfig = field(default_factory=lambda: EvalConfig(
        tasks=["hwu"], class_role=None, episodes=2, n_way=64, k_shot=5, q_query=5, split="train", seed=1))
    test: EvalConfig = field(default_factory=lambda: EvalConfig(
        tasks=["banking77", "mcid", "tweet_sentiment"], class_role=None, episodes=20, n_way=5, split="test", seed=0))


RUN_FORMAT = "llm_meta.run/1"  # the run folder's own llm_meta.json
# What a run writes into its folder: `--overwrite` removes these (and nothing else) before starting again.
RUN_ENTRIES = ("checkpoints", "adapter", "log.jsonl", "results.json", "trackers")
# Keys that steer the command, not the training: a resume may change them freely.
CONTROL_KEYS = ("output_dir", "resume", "overwrite", "force")


def meta_train(config: Config | str | Path | None = None, *overrides: str, resume: bool | None = None,
               overwrite: bool | None = None, force: bool | None = None, trust_remote_code: bool = False) -> dict:
    """Meta-train (or resume) a run in its `output_dir` and return its results: the validation
    history, the step kept, the held-out test scores against the untrained start, and the path of
    the kept adapter ("adapter": a folder `FewShotClassifier.from_pretrained` and plain peft load).

    `config`: a Config, a YAML file (e.g. recipes/configs/meta_train.yaml, found inside the
    installed package too), or None for the defaults; `overrides`: "key.sub=value" strings applied
    on top, as on the command line. `resume`, `overwrite`, `force`: as `--resume`, `--overwrite`,
    `--force` (None: as `config` says; a file cannot set them). `trust_remote_code`: let the base
    model's repo run its own code (the caller's choice only).

    Raises:
        OutputError: output_dir is not a folder this recipe may write (see `llm_meta.io.outputs.claim_run`).
        CheckpointError: `--resume` with no intact checkpoint, or one of another config (without force).
        ValueError / ConfigError / TaskError / ModelLoadError: a config, task or model that cannot be used.
    """
    if not all(isinstance(o, str) for o in overrides):
        raise TypeError("overrides are 'key.sub=value' strings; pass trust_remote_code by name")
    cfg = with_overrides(config, list(overrides)) if isinstance(config, Config) else \
        load_config(Config, config, list(overrides))
    for key, value in (("resume", resume), ("overwrite", overwrite), ("force", force)):
        if value is not None:
            setattr(cfg, key, value)
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{cfg.algorithm}' (valid: {', '.join(ALGORITHMS)})")
    for key, value in (("validate_every", cfg.validate_every), ("outer.steps", cfg.outer.steps),
                       ("outer.meta_batch", cfg.outer.meta_batch)):
        if value < 1:
            raise ValueError(f"{key}={value}: must be at least 1 (validate_every larger than outer.steps validates "
                             f"only at the end)")
    if cfg.test.episodes:
        check_held_out(cfg, cfg.test.tasks, "test.tasks")
    run_dir = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=cfg.log_with or None,
                              project_dir=run_dir / "trackers")
    with claim_run(run_dir, RUN_FORMAT, RUN_ENTRIES, cfg.resume, cfg.overwrite,
                   accelerator.is_main_process, accelerator.wait_for_everyone):
        return train(cfg, run_dir, accelerator, trust_remote_code)


def train(cfg: Config, run_dir: Path, accelerator: Accelerator, trust_remote_code: bool = False) -> dict:
    """The run itself, in a folder `main` has claimed."""
    set_seed(cfg.seed)
    main_process = accelerator.is_main_process
    run_log = RunLog(run_dir / "log.jsonl", enabled=main_process, accelerator=accelerator if cfg.log_with else None)
    if cfg.log_with:
        accelerator.init_trackers(Path(cfg.output_dir).name or "llm_meta", config=tracker_config(to_dict(cfg)))

    # Model: frozen base + LoRA; the meta-parameters are a plain dict of the LoRA tensors.
    body = load_body(cfg.model, trust_remote_code=trust_remote_code)
    body.model.to(accelerator.device)
    # θ0: the untrained start (LoRA B = 0: exactly the pretrained model), or the adapter in `init`.
    start = lora_params(body) if cfg.init is None else init_params(body, cfg)
    params = {k: v.clone().requires_grad_(True) for k, v in start.items()}

    # Tasks and samplers: meta-train classes for training, meta-val classes for selection. NER:
    # meta-train entity types on train sentences, the same types on validation sentences. SMLMT
    # corpora and mixtures: see training_sampler.
    sampler, task_hashes = training_sampler(cfg, body)
    val_episodes = eval_episodes(cfg.validation, cfg.ner if ner_only(cfg) else None, "validation", file_columns(cfg))
    algorithm = ALGORITHMS[cfg.algorithm]
    if cfg.algorithm == "transfer":  # the baseline's persistent per-dataset heads train alongside LoRA
        # NER: one head per corpus (the task's train split, each extra corpus), keyed by its name.
        heads = [ner_transfer_heads(body, start, s.name, s.sentences, s.types)
                 for s in getattr(sampler, "samplers", [sampler])] if ner_only(cfg) \
            else [transfer_heads(body, start, name, pool) for name, pool in sampler.pools]
        for head in heads:
            params.update({k: v.requires_grad_(True) for k, v in head.items()})
    if cfg.algorithm == "metasgd":  # one learned inner learning rate per tensor, saved with the adapter
        params.update({k: v.requires_grad_(True) for k, v in meta_sgd_rates(start, cfg.inner.lr, HEAD_KEYS).items()})
    if cfg.algorithm.startswith("hypernet"):  # trained with θ0; zero output layer: it starts by writing θ0
        hyper = init_hypernet(start, body.hidden_size, cfg.hypernet, cfg.seed)
        params.update({k: v.requires_grad_(True) for k, v in hyper.items()})
        log.info("hypernetwork: %.2fM parameters for %d LoRA tensors", count_parameters(hyper) / 1e6, len(start))

    optimizer = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[cfg.outer.optimizer](params.values(), lr=cfg.outer.lr)

    # Resume (the same config only, unless forced), or start by scoring the untrained start: it stays
    # a candidate for "best". Every checkpoint records the config it was trained with.
    state = {"best_score": None, "best_step": None, "history": [], "base_model": cfg.model.name,
             **checkpoint_record(cfg)}
    step = 0
    if cfg.resume:
        restored = load_checkpoint(run_dir, params, optimizer, cfg.model.name,
                                   check=lambda saved: check_resume(cfg, saved, run_log))
        if restored is None:
            raise CheckpointError(f"--resume: {run_dir} has no checkpoint (the run stopped before its first, which is "
                                  f"written at step {min(cfg.validate_every, cfg.outer.steps)}); start it again with "
                                  f"--overwrite")
        step, state = restored.pop("step"), {**restored, **checkpoint_record(cfg)}
    # What every saved adapter records, computed once (hashing the task data is not free).
    provenance = {"base_model": cfg.model.name, "algorithm": cfg.algorithm, "config": to_dict(cfg),
                  "tasks": task_hashes, "label_names": family_labels(cfg), "environment": environment()}

    def validate(at: int, state: dict) -> dict:  # selection runs on the main process only
        return _validate(cfg, body, params, start, val_episodes, at, state, run_dir, provenance, run_log) \
            if main_process else state

    if step == 0:
        state = validate(0, state)

    bar = progress_bar(range(step, cfg.outer.steps), initial=step, total=cfg.outer.steps,
                       desc=f"meta-train {cfg.algorithm}", enabled=main_process)
    for step in bar:
        grads, stats = meta_gradient(algorithm, body, params, sampler, step, cfg.outer.meta_batch, cfg.inner,
                                     accelerator)
        check_step(stats, grads, step, run_dir)
        for k, p in params.items():  # + the gradient 2λ(θ − θ0) of the outer proximal term
            p.grad = grads[k] + 2 * cfg.outer.proximal * (p.detach() - start[k]) if cfg.outer.proximal and k in start \
                else grads[k]
        for group in optimizer.param_groups:
            group["lr"] = outer_lr(cfg.outer.lr, step, cfg.outer.steps, cfg.outer.warmup, cfg.outer.schedule)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        run_log.write("step", step=step + 1, loss=stats.loss, query_accuracy=stats.accuracy)
        bar.set_postfix(loss=f"{stats.loss:.3f}", acc=f"{stats.accuracy:.2f}", best=state["best_step"])
        if (step + 1) % cfg.validate_every == 0 or step + 1 == cfg.outer.steps:
            log_sources(sampler, (step + 1) * cfg.outer.meta_batch, run_log)
            state = validate(step + 1, state)
            if main_process:
                save_checkpoint(run_dir, step + 1, params, optimizer, state)
            accelerator.wait_for_everyone()

    # Held-out test: the chosen adapter vs the untrained start, on identical episodes.
    results = {"validation": state["history"], "best_step": state["best_step"], "test": {}}
    if main_process and cfg.test.episodes > 0:
        best = load_adapter_params(body, run_dir / "adapter")
        results["test"] = _test(cfg, body, best, start)
        write_atomic(run_dir / "results.json", json.dumps(results, indent=1))
    if cfg.log_with:
        accelerator.end_training()
    if main_process:
        _closing_line(run_dir, state, run_log.start, results["test"], cfg.algorithm)
    return {**results, "adapter": str(run_dir / "adapter")}


main = meta_train  # the recipes' entry point (`llm-meta meta-train`, recipes/benchmark.py)


CHECKPOINT_FORMAT = "llm_meta.checkpoint/2"  # /2: records the config, its hash and the package version


def resumable_config(cfg: Config) -> dict[str, Any]:
    """The config as a checkpoint records it: everything but the keys that steer the command."""
    return {k: v for k, v in to_dict(cfg).items() if k not in CONTROL_KEYS}


def checkpoint_record(cfg: Config) -> dict[str, Any]:
    """What every checkpoint's state.json says of the run: format, package version, config and its hash."""
    import hashlib

    config = resumable_config(cfg)
    return {"format": CHECKPOINT_FORMAT, "llm_meta_version": environment()["packages"]["llm_meta"],
            "config": config, "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True, default=str)
                                                           .encode()).hexdigest()[:16]}


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """`key: old -> new` for every dotted key whose value differs between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in config_differences(old.get(k, "(absent)"), new.get(k, "(absent)"), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def check_resume(cfg: Config, saved: dict[str, Any], run_log: RunLog) -> None:
    """Refuse to resume a checkpoint trained with another config (or by an llm_meta that recorded
    none) unless `cfg.force`; with it, the differences are logged (log.jsonl, event "resume_forced").

    Raises:
        CheckpointError: listing the keys that differ, and how to accept them.
    """
    if saved.get("format") != CHECKPOINT_FORMAT:
        differences = [f"the checkpoint was written by an earlier llm_meta ({saved.get('format', 'no format')}) "
                       f"and records no config"]
    else:
        differences = config_differences(saved["config"], resumable_config(cfg))
    if not differences:
        return
    if not cfg.force:
        raise CheckpointError(f"--resume: the run in {cfg.output_dir} was trained with another config ("
                              f"{'; '.join(differences[:8])}{' ...' if len(differences) > 8 else ''}); resume with "
                              f"the same config, or add --force to continue with this one")
    log.warning("resuming with another config (--force): %s", "; ".join(differences))
    run_log.write("resume_forced", differences=differences, from_version=saved.get("llm_meta_version"))


def _closing_line(run_dir: Path, state: dict, began: float, test: dict | None = None, algorithm: str = "") -> None:
    """Where the adapter is and what selection kept; then, after a held-out test, one small table
    (each task: the untrained start, the meta-learned start, their paired difference), what it
    means in a plain line, and the next command."""
    import time

    kept = next(h for h in reversed(state["history"]) if h["step"] == state["best_step"]
                and h["accuracy"] == state["best_score"])
    which = "the start it began from (step 0)" if kept["step"] == 0 else \
        f"step {kept['step']}" + (f" at α={kept['alpha']:g}" if kept["alpha"] != 1.0 else "")
    adapter = run_dir / "adapter"
    lines = [f"done in {(time.time() - began) / 60:.1f} min: adapter in {adapter} = {which}, meta-validation "
             f"{100 * kept['accuracy']:.1f} vs {100 * state['history'][0]['accuracy']:.1f} at step 0."]
    if test:
        lines += ["", "| held-out task | untrained start | meta-learned start | difference (95% interval) |",
                  "|---|---|---|---|"]
        verdicts: dict[str, list[str]] = {"wins": [], "loses": [], "ties": []}
        for task, row in test.items():
            untrained, learned, diff = (Interval(**row[k]) for k in ("untrained", algorithm, "difference"))
            verdict = "wins" if diff.mean - diff.half_width > 0 else "loses" if diff.mean + diff.half_width < 0 else "ties"
            verdicts[verdict].append(task)
            lines.append(f"| {task} ({row['episodes']} episodes) | {untrained} | {learned} | "
                         f"{100 * diff.mean:+.1f} ± {100 * diff.half_width:.1f} ({verdict}) |")
        lines.append("")
        if verdicts["loses"]:
            lines.append(f"The meta-learned start is worse than the untrained start on {', '.join(verdicts['loses'])}: "
                         f"adapt from the untrained start there (--adapter none).")
        elif verdicts["wins"]:
            lines.append(f"The meta-learned start beats the untrained start on {', '.join(verdicts['wins'])}"
                         + (f" and ties on {', '.join(verdicts['ties'])}." if verdicts["ties"] else "."))
        else:
            lines.append("The meta-learned start ties the untrained start on every held-out task: on tasks like these, "
                         "meta-training bought nothing.")
    lines.append(f"Next: llm-meta adapt --adapter {adapter} --support your_examples.csv --output my_model")
    tqdm.write("\n".join(lines), file=sys.stderr)


def init_params(body, cfg: Config) -> dict[str, torch.Tensor]:
    """The LoRA tensors of the adapter `cfg.init` as the start θ0.

    Raises:
        CheckpointError: the folder is not an llm_meta adapter, is corrupt, or was trained for
            another base model or LoRA layout.
        ValueError: it is an adapted task model, or carries Meta-SGD rates or a hypernetwork
            (their meaning is tied to the algorithm that trained them).
    """
    meta = read_metadata(cfg.init)
    if meta.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"init={cfg.init} is not a meta-trained adapter ({meta.get('format')}); give an adapter folder")
    if meta.get("base_model") != cfg.model.name:
        raise CheckpointError(f"init={cfg.init} was trained for {meta.get('base_model')}, not {cfg.model.name}")
    params = load_adapter_params(body, cfg.init)
    if set(params) != set(body.lora_names):
        raise ValueError(f"init={cfg.init} also holds learned rates or a hypernetwork; start from a LoRA-only adapter")
    return params


def training_sampler(cfg: Config, body) -> tuple[Any, dict[str, str]]:
    """The meta-training sampler (staged when there is a way/shot curriculum) and data hashes."""
    e = cfg.episodes
    sampler, hashes = source_sampler(cfg, body, e.n_way, e.k_shot)
    if not e.curriculum:
        return sampler, hashes
    stages = [(0, sampler)]
    for stage in sorted(e.curriculum, key=lambda st: st.from_step):  # episode indices: step × meta_batch
        stages.append((stage.from_step * cfg.outer.meta_batch, source_sampler(cfg, body, stage.n_way, stage.k_shot)[0]))
    return StagedSampler(stages), hashes


def family_labels(cfg: Config) -> list[str]:
    """The class names the labelled meta-training tasks are drawn with (their `meta_train` classes;
    every label of a user's file), sorted: recorded in every saved adapter, so that `llm-meta adapt`
    can tell a task of the family by its labels (`llm_meta.meta.adaptation.in_family`). SMLMT corpora and
    NER sources contribute none (no fixed names). Raises TaskError for a task that cannot be loaded."""
    entries = [] if ner_only(cfg) else [TaskSource(name=t) if isinstance(t, str) else t for t in cfg.tasks]
    return sorted({label for t in entries if t.name
                   for label in load_task(t.name, t.text_column, t.label_column).classes("meta_train")})


def training_sources(cfg: Config) -> dict[str, str]:
    """Every dataset meta-training or selection reads, with where the config names it: labelled
    tasks, each part of every SMLMT corpus, and the validation tasks."""
    used = {}
    for entry in cfg.tasks:
        entry = TaskSource(name=entry) if isinstance(entry, str) else entry
        if entry.name:
            used[entry.name] = "tasks"
        for part in (entry.smlmt or "").split(","):
            if part.strip():
                used.setdefault(part.strip(), "an SMLMT corpus in tasks")
    for part in (cfg.smlmt.data or "").split(","):
        if part.strip():
            used.setdefault(part.strip(), "smlmt.data")
    for task in cfg.validation.tasks:
        used.setdefault(task, "validation.tasks")
    return used


def check_held_out(cfg: Config, held_out: list[str], what: str) -> None:
    """Refuse a held-out task that meta-training or selection would also read (its test texts
    would no longer be unseen).

    Raises:
        ValueError: naming the task and where the config uses it.
    """
    used = training_sources(cfg)
    leaked = [t for t in held_out if t in used]
    if leaked:
        raise ValueError(f"held-out task '{leaked[0]}' ({what}) is also read by meta-training or selection "
                         f"({used[leaked[0]]}): a held-out task must be unseen; remove it from one of them")
    for task in held_out:  # another name for the same texts: tweet_sentiment holds every tweets_* domain
        for other, where in used.items():
            if shares_texts(task, other):
                raise ValueError(f"held-out task '{task}' ({what}) shares its texts with '{other}', which meta-"
                                 f"training or selection reads ({where}): a held-out task must be unseen")


def source_sampler(cfg: Config, body, n_way: int, k_shot: int) -> tuple[Any, dict[str, str]]:
    """The episode sampler over the configured sources, and a hash of each source's data (for provenance).

    `ner.data` without a `{ner: true}` tasks entry: NER episodes only. Labelled tasks alone: the
    plain multi-task sampler (per-task weights if any are given). SMLMT corpora (`{smlmt: ...}`
    entries or `smlmt.data`) and `{ner: true}` make it a weighted mixture in which each source
    draws its own episodes.
    """
    e = dataclasses.replace(cfg.episodes, n_way=n_way, k_shot=k_shot)
    entries = [TaskSource(name=t) if isinstance(t, str) else t for t in cfg.tasks]
    if any(sum(map(bool, (t.name, t.smlmt, t.ner))) != 1 for t in entries):
        raise ValueError("each tasks entry needs exactly one of name (a labelled task), smlmt (a corpus) or "
                         "ner: true (the ner section's task)")
    if cfg.smlmt.data:
        entries.append(TaskSource(smlmt=cfg.smlmt.data, weight=cfg.smlmt.weight))
    if cfg.ner.data and not any(t.ner for t in entries):  # the ner_*.yaml configs: NER alone
        if cfg.smlmt.data:
            raise ValueError("ner.data with smlmt.data: add {ner: true} to tasks to mix NER with other sources")
        entries = [TaskSource(ner=True)]
    unlabelled = any(t.smlmt for t in entries) or (len(entries) > 1 and any(t.ner for t in entries))
    if cfg.algorithm == "transfer" and unlabelled:
        raise ValueError("algorithm transfer trains one head per labelled dataset; SMLMT and mixed NER "
                         "sources have no fixed label set: use a meta-learning algorithm with them")
    sources, hashes = [], {}
    labelled = [t for t in entries if t.name]
    if labelled:
        tasks = [load_task(t.name, t.text_column, t.label_column) for t in labelled]
        explicit = any(t.weight != 1.0 for t in labelled)  # else cfg.episodes.weighting decides
        sampler = EpisodeSampler(tasks, e.n_way, e.k_shot, e.q_query, class_role="meta_train",
                                 weighting=e.weighting, seed=cfg.seed,
                                 task_weights=[t.weight for t in labelled] if explicit else None,
                                 cap_way=e.cap_way)
        sources.append((sampler, sum(sampler.weights) if explicit else len(tasks)))
        hashes.update({t.name: task_fingerprint(t) for t in tasks})
    for c in (t for t in entries if t.smlmt):
        sentences = load_corpus(c.smlmt, cfg.smlmt.text_column, cfg.smlmt.split, cfg.smlmt.class_role)
        sampler = SmlmtSampler.build(sentences, c.smlmt, body.tokenizer, e.n_way, e.k_shot, e.q_query,
                                     seed=cfg.seed, min_sentences=cfg.smlmt.min_sentences)
        sources.append((sampler, c.weight))
        hashes[sampler.name] = corpus_key(sentences)
    for t in (t for t in entries if t.ner):
        if not cfg.ner.data:
            raise ValueError("a {ner: true} tasks entry needs the ner section (ner.data, ner.held_out_types)")
        ner_split, ner_types = split_ner(cfg.ner)
        names = ["O", *ner_types]
        report_cut(body, [s.tokens for s in ner_split["train"]],
                   [[names.index(entity_type(tag)) if entity_type(tag) in names else 0 for tag in s.tags]
                    for s in ner_split["train"]], names, role="train")
        n_way = e.n_way if len(entries) == 1 else min(e.n_way, len(ner_types))  # alone: too many is an error
        sampler = NerEpisodeSampler(ner_split["train"], ner_types, n_way, e.k_shot, e.q_query, seed=cfg.seed,
                                    name=cfg.ner.data)
        sources.append((sampler, t.weight))
        hashes[cfg.ner.data] = sentences_fingerprint([s for part in ner_split.values() for s in part])
        for name, sentences, types in extra_corpora(cfg.ner):  # e.g. the silver corpus: training only
            sources.append((NerEpisodeSampler(sentences, types, min(n_way, len(types)), e.k_shot, e.q_query,
                                              seed=cfg.seed, name=name), t.weight * cfg.ner.extra_weight))
            hashes[name] = sentences_fingerprint(sentences)
    if not sources:
        raise ValueError("no meta-training tasks: set tasks, smlmt.data or ner.data")
    return (sources[0][0] if len(sources) == 1 else MixtureSampler(sources, seed=cfg.seed)), hashes


def ner_only(cfg: Config) -> bool:
    """An NER run (validated and tested on NER episodes), not a mixture that includes NER."""
    return bool(cfg.ner.data) and not any(isinstance(t, TaskSource) and t.ner for t in cfg.tasks)


def log_sources(sampler: Any, episodes: int, run_log: RunLog) -> None:
    """How many of the first `episodes` meta-training episodes each source supplied."""
    counts = dict(sorted(Counter(sampler.source_of(i) for i in range(episodes)).items()))
    run_log.write("sources", episodes=episodes, counts=counts)
    if len(counts) > 1:
        tqdm.write(f"episodes per source so far: {', '.join(f'{k} {v}' for k, v in counts.items())}", file=sys.stderr)


def file_columns(cfg: Config) -> dict[str, tuple[str, str]]:
    """(text column, label column) of each labelled task in `cfg.tasks` that names them: a
    validation or test task reading the same file reads it with the same columns."""
    return {t.name: (t.text_column, t.label_column) for t in cfg.tasks if isinstance(t, TaskSource) and t.name}


def eval_episodes(ec: EvalConfig, ner: NerConfig | None = None, role: str = "validation",
                  columns: dict[str, tuple[str, str]] | None = None) -> list[Episode]:
    """Fixed evaluation episodes: `ec.episodes` per task, the same for every start and every run.

    With `ner.data` set: NER episodes over the meta-training types on validation sentences
    (role "validation"), or over the held-out types on their sentences (role "test").
    """
    if ner is not None and ner.data:
        split, train_types = split_ner(ner)
        types = train_types if role == "validation" else sorted(ner.held_out_types)
        sampler = NerEpisodeSampler(split[role], types, min(ec.n_way, len(types)), ec.k_shot, ec.q_query,
                                    seed=ec.seed, name=f"{ner.data}-{role}")
        return sampler.episodes(ec.episodes)
    episodes = []
    for task in (load_task(name, *(columns or {}).get(name, ("text", "label"))) for name in ec.tasks):
        if ec.q_query == 0:
            episodes += [whole_split_episode(task, ec.k_shot, "train", ec.split, seed=ec.seed * 1000 + i)
                         for i in range(ec.episodes)]
            continue
        n_way = min(ec.n_way, len(task.classes(ec.class_role)))  # tweet sentiment has 3 classes
        sampler = EpisodeSampler([task], n_way, ec.k_shot, ec.q_query, split=ec.split, class_role=ec.class_role,
                                 seed=ec.seed)
        episodes += sampler.episodes(ec.episodes)
    return episodes


def _validate(cfg: Config, body, params, start, episodes, step: int, state: dict, run_dir: Path, provenance: dict,
              run_log: RunLog) -> dict:
    """Score the current start (and its interpolations towards θ0) on meta-validation episodes;
    keep the best candidate so far as the adapter."""
    # LoRA (+ Meta-SGD rates, + hypernetwork), not the transfer baseline's heads.
    current = {k: v.detach() for k, v in params.items()
               if k in body.lora_names or k.startswith(LR_PREFIX) or k.startswith(HYPER_PREFIX)}
    metric = "entity F1" if ner_only(cfg) else "accuracy"
    for alpha in sorted(set(cfg.interpolation), reverse=True) if step > 0 else [1.0]:  # at step 0 θ = θ0
        candidate = interpolate(start, current, alpha)
        score = mean_ci(score_episodes(body, candidate, episodes, cfg.adapt, desc=f"validate step {step}"))
        state["history"].append({"step": step, "alpha": alpha, "accuracy": score.mean, "ci": score.half_width})
        run_log.write("validation", step=step, alpha=alpha, accuracy=score.mean, ci=score.half_width)
        which = f"step {step}" if alpha == 1.0 else f"step {step}, α={alpha:g}"
        tqdm.write(f"{which}: meta-validation {metric} {score} ({score.n} episodes)", file=sys.stderr)
        if state["best_score"] is None or score.mean > state["best_score"]:
            state["best_score"], state["best_step"] = score.mean, step
            save_adapter(body, candidate, run_dir / "adapter", {
                **provenance, "step": step, "alpha": alpha, "validation_accuracy": score.mean,
                "step0_validation_accuracy": state["history"][0]["accuracy"]})
    return state


def _test(cfg: Config, body, best: dict, start: dict) -> dict:
    episodes = eval_episodes(cfg.test, cfg.ner if ner_only(cfg) else None, "test", file_columns(cfg))
    out = {}
    for task in dict.fromkeys(e.task for e in episodes):
        eps = [e for e in episodes if e.task == task]
        untrained = score_episodes(body, start, eps, cfg.adapt, desc=f"test {task} untrained")
        learned = score_episodes(body, best, eps, cfg.adapt, desc=f"test {task} {cfg.algorithm}")
        out[task] = {"episodes": len(eps), "untrained": mean_ci(untrained).__dict__,
                     cfg.algorithm: mean_ci(learned).__dict__,
                     "difference": paired_difference(learned, untrained).__dict__}
        tqdm.write(f"held-out {task} ({len(eps)} episodes, {eps[0].n_way}-way {cfg.test.k_shot}-shot): "
                   f"untrained start {mean_ci(untrained)}, {cfg.algorithm} {mean_ci(learned)}, "
                   f"paired difference {paired_difference(learned, untrained)}", file=sys.stderr)
    return out
