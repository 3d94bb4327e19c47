"""Helpers for the meta-training loop: the meta-batch across processes, logging, run metadata."""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from llm_meta.data.episodes import EpisodeSampler
from llm_meta.meta.algorithms import Algorithm
from llm_meta.meta.core import InnerConfig, StepStats
from llm_meta.modeling.body import Body, Params


def process_episodes(step: int, meta_batch: int, accelerator: Accelerator) -> list[int]:
    """Episode indices this process handles at `step`: a strided slice of the step's meta-batch.

    Episode indices depend only on the step, so 1 or N processes (or a resumed run) use the same
    episodes; only who computes which one changes.
    """
    indices = range(step * meta_batch, (step + 1) * meta_batch)
    return list(indices[accelerator.process_index :: accelerator.num_processes])


def meta_gradient(algorithm: Algorithm, body: Body, params: Params, sampler: EpisodeSampler, step: int,
                  meta_batch: int, cfg: InnerConfig, accelerator: Accelerator) -> tuple[Params, StepStats]:
    """Mean meta-gradient over the whole meta-batch, summed across processes in one all-reduce."""
    detached = {k: v.detach() for k, v in params.items()}
    total = torch.zeros(sum(v.numel() for v in params.values()) + 2, device=accelerator.device)
    for index in process_episodes(step, meta_batch, accelerator):
        with accelerator.autocast():
            grads, stats = algorithm(body, detached, sampler.episode(index), cfg, index)
        flat = torch.cat([grads[k].reshape(-1).float() for k in params])
        total += torch.cat([flat, torch.tensor([stats.loss, stats.accuracy], device=flat.device)])
    total = accelerator.reduce(total, reduction="sum") / meta_batch
    grads, offset = {}, 0
    for k, v in params.items():
        grads[k] = total[offset : offset + v.numel()].view_as(v).to(v.dtype)
        offset += v.numel()
    return grads, StepStats(total[-2].item(), total[-1].item())


def check_step(stats: StepStats, grads: Params, step: int, run_dir: Path) -> None:
    """Stop on a non-finite meta-loss or gradient: training on NaNs only destroys the adapter."""
    bad = not math.isfinite(stats.loss) or any(not torch.isfinite(g).all() for g in grads.values())
    if bad:
        raise FloatingPointError(
            f"meta-training diverged at step {step} (query loss {stats.loss}); nothing was updated or saved. "
            f"The last good checkpoint in {run_dir / 'checkpoints'} is intact: lower outer.lr / inner.lr "
            f"and resume with --resume"
        )


class RunLog:
    """Append-only JSON-lines log of a run (one record per event), safe to reopen on resume; with an
    `accelerator` whose trackers are initialised, every numeric field of an event with a `step` is
    also logged there as `event/field` (TensorBoard, W&B, ... curves)."""

    def __init__(self, path: Path, enabled: bool = True, accelerator: Accelerator | None = None) -> None:
        self.path, self.enabled, self.start, self.accelerator = path, enabled, time.time(), accelerator
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        if self.enabled:
            record = {"event": event, "time_s": round(time.time() - self.start, 2), **fields}
            with self.path.open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        if self.accelerator is not None and "step" in fields:
            scalars = {f"{event}/{k}": v for k, v in fields.items()
                       if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
            if scalars:
                self.accelerator.log(scalars, step=int(fields["step"]))


def tracker_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config flattened to `a.b` keys with the scalar values trackers accept (TensorBoard's
    hyperparameters take numbers, strings and booleans only; lists and None become strings)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(tracker_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value, default=str)
    return flat


def environment() -> dict[str, Any]:
    """Versions and machine, recorded in metadata so a result can be traced."""
    versions = {}
    for pkg in ("llm_meta", "torch", "transformers", "peft", "accelerate", "datasets"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions}
