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

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from llm_meta.config import load_config, to_dict, with_overrides
from llm_meta.eval.evaluation import Interval, mean_ci, paired_difference, score_episodes
from llm_meta.io.atomic import write_atomic
from llm_meta.io.outputs import claim_run
from llm_meta.meta.algorithms import ALGORITHMS
from llm_meta.meta.core import interpolate, meta_sgd_rates, outer_lr
from llm_meta.meta.heads import HEAD_KEYS
from llm_meta.meta.hypernet import count_parameters, init_hypernet
from llm_meta.meta.starts import Start
from llm_meta.meta.training import RunLog, check_step, environment, meta_gradient, tracker_config
from llm_meta.meta.transfer import ner_transfer_heads, transfer_heads
from llm_meta.meta_config import Config
from llm_meta.meta_sources import (check_held_out, eval_episodes, family_labels, file_columns, log_sources, ner_only,
                                   training_sampler)
from llm_meta.modeling.body import lora_params
from llm_meta.modeling.loading import load_body
from llm_meta.progress import progress_bar
from llm_meta.saving.checkpoint import (ADAPTER_FORMAT, CheckpointError, load_adapter_params, load_checkpoint,
                                        read_metadata, save_adapter, save_checkpoint)


log = logging.getLogger("llm_meta.meta_train")


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


def _validate(cfg: Config, body, params, start, episodes, step: int, state: dict, run_dir: Path, provenance: dict,
              run_log: RunLog) -> dict:
    """Score the current start (and its interpolations towards θ0) on meta-validation episodes;
    keep the best candidate so far as the adapter."""
    # LoRA (+ Meta-SGD rates, + hypernetwork), not the transfer baseline's heads.
    current = {k: v.detach() for k, v in Start.of(params).params(transfer=False).items()}
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
