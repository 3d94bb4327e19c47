"""The benchmark's starts: the untrained LoRA of each meta-seed and the trained adapters, trained by
`llm_meta.meta_training` once per (start, meta-seed) and reused while the key of what trained them
(config, code, device, library versions) holds; kept without their tensors (`keep_run`) so that a
run elsewhere resumes from their scores.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm import tqdm

from llm_meta import meta_training as meta_train
from llm_meta.bench.config import Config, method_spec, train_config
from llm_meta.config import to_dict
from llm_meta.io.atomic import atomic_file, write_atomic
from llm_meta.io.outputs import OWN_FILE
from llm_meta.modeling.body import Body, ModelConfig, Params, lora_params
from llm_meta.modeling.loading import load_body
from llm_meta.saving.checkpoint import load_adapter_params, read_metadata


# What a trained start leaves beside its adapter: its tensors' fingerprint and what selection chose.
START_RECORD = "start.json"


KEPT = "kept.tar.gz"  # `keep_run`'s archive in every output folder


NEEDS = ("key", "record", "tensors")  # what of a trained start a run needs, least first (`train_start`)


def untrained_start(model: ModelConfig, seed: int, trust_remote_code: bool = False) -> tuple[Body, Params]:
    """The body and its freshly initialised LoRA tensors, seeded as meta_train.main seeds them."""
    set_seed(seed)
    body = load_body(model, trust_remote_code=trust_remote_code)
    return body, lora_params(body)


def train_start(cfg: Config, name: str, seed: int, out: Path, chain: tuple[str, ...] = (),
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
    run_dir = start_dir(out, name, seed)
    train_cfg = start_train_config(cfg, name, seed, run_dir)
    keyed, first, after = {k: v for k, v in to_dict(train_cfg).items() if k != "output_dir"}, "", ""
    if train_cfg.init and train_cfg.init.startswith("start:"):  # e.g. FOMAML from the transfer start
        first = train_cfg.init[len("start:"):]
        if first not in cfg.train_configs or first in (*chain, name):
            raise ValueError(f"start '{name}': init={train_cfg.init} must name another start of train_configs, "
                             f"without a loop ({' -> '.join((*chain, name, first))})")
        after = (train_start(cfg, first, seed, out, (*chain, name), "key", trust_remote_code) / "DONE").read_text().strip()
    key = hashlib.sha256(json.dumps([keyed, code_fingerprint(), runtime(None, train_cfg.mixed_precision), after],
                                    sort_keys=True).encode()).hexdigest()[:20]
    done = run_dir / "DONE"
    same = done.is_file() and done.read_text().strip() == key
    have = "tensors" if has_tensors(run_dir) else "record" if read_record(run_dir) is not None else "key"
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
        train_cfg.init = str(train_start(cfg, first, seed, out, (*chain, name), "tensors", trust_remote_code) / "adapter")
    tqdm.write(f"training start '{name}' (meta-seed {seed}) -> {run_dir}", file=sys.stderr)
    began = time.perf_counter()
    meta_train.main(train_cfg, trust_remote_code=trust_remote_code)
    write_atomic(run_dir / "timing.json", json.dumps({"train_seconds": round(time.perf_counter() - began, 1)}))
    write_atomic(done, key)
    return run_dir


def load_start(body: Body, run_dir: Path) -> tuple[Params | None, str, dict]:
    """(tensors, their fingerprint, what meta-validation selected) of a trained start. From the
    adapter when it is on disk (recording fingerprint and selection in start.json), else from
    start.json alone, with no tensors (a kept start)."""
    adapter = run_dir / "adapter"
    if not has_tensors(run_dir):
        record = read_record(run_dir)
        return None, record["params_fingerprint"], record["selection"]
    params = load_adapter_params(body, adapter)
    record = {"params_fingerprint": params_fingerprint(params), "selection": selection_of(adapter)}
    write_atomic(run_dir / START_RECORD, json.dumps(record, indent=1))
    return params, record["params_fingerprint"], record["selection"]


def start_dir(out: Path, name: str, seed: int) -> Path:
    return out / "starts" / f"{name}-seed{seed}"


def has_tensors(run_dir: Path) -> bool:
    """Whether a start's adapter is on disk (a kept start has only DONE and start.json)."""
    return (run_dir / "adapter" / "llm_meta.json").is_file()


def read_record(run_dir: Path) -> dict | None:
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


def start_train_config(cfg: Config, name: str, seed: int, run_dir: Path) -> meta_train.Config:
    """The full training config of start `name` at meta-seed `seed`, as the benchmark runs it."""
    train_cfg = train_config(cfg, name, (f"seed={seed}", f"output_dir={run_dir}", "test.episodes=0"))
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


def runtime(body: Body | None, mixed_precision: str = "no") -> dict:
    """What a result depends on beyond config and code: device, dtype and library versions."""
    from llm_meta.modeling.body import autocast_dtype
    from llm_meta.meta.training import environment

    device = str(body.device) if body is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = str(autocast_dtype(body)) if body is not None else mixed_precision
    return {"device": device, "dtype": dtype, "packages": {k: v for k, v in environment()["packages"].items()
                                                          if k != "llm_meta"}}


def selection_of(adapter: Path) -> dict:
    """What meta-validation chose for a trained start: the step kept, and its score vs step 0."""
    meta = read_metadata(adapter)
    timing = adapter.parent / "timing.json"
    return {"steps_trained": meta["config"]["outer"]["steps"], "selected_step": meta["step"],
            "alpha": meta.get("alpha", 1.0), "init": meta["config"].get("init"),
            "validation_accuracy": meta["validation_accuracy"],
            "step0_validation_accuracy": meta["step0_validation_accuracy"],
            "train_seconds": json.loads(timing.read_text())["train_seconds"] if timing.is_file() else None}


def params_fingerprint(params: Params) -> str:
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    return h.hexdigest()[:20]


@functools.lru_cache(maxsize=1)  # the sources do not change during a run; every start and unit asks
def code_fingerprint() -> str:
    """A hash of the llm_meta sources: cached scores from other code are not reused."""
    import llm_meta

    h = hashlib.sha256()
    for path in sorted(Path(llm_meta.__file__).parent.rglob("*.py")):  # the subpackages too
        h.update(path.read_bytes())
    return h.hexdigest()[:20]
