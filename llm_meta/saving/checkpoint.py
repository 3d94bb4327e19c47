"""Atomic, checksummed checkpoints and PEFT adapter folders.

A folder is written under a temporary name and renamed into place, so a crash mid-write
leaves either the old folder or the new one, never half of one. Every file's sha256 goes into
`manifest.json`; a checkpoint whose files do not match is skipped with a warning in favour of
the previous good one. Tensors are stored as safetensors only (no pickle anywhere).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from llm_meta.data.kinds import kind_of_format
from llm_meta.errors import CheckpointError  # noqa: F401 (raised here; importable from here too)
from llm_meta.io.atomic import write_atomic
from llm_meta.meta.heads import HEAD_KEYS
from llm_meta.meta.starts import Start
from llm_meta.modeling.body import Body, Params, set_lora_params
from llm_meta.saving.card import write_model_card

log = logging.getLogger(__name__)

METADATA_FILE = "llm_meta.json"
ADAPTER_FORMAT = "llm_meta.adapter/1"  # a meta-trained start; task models and runs have formats of their own
MANIFEST = "manifest.json"
RATES_FILE = "meta_sgd_rates.safetensors"  # Meta-SGD's learned inner learning rates, beside the PEFT files
# The rates file holds the rates themselves (positive, readable), marked with how they are applied;
# files of llm_meta before this mark scaled Adam's normalised step and mean something else.
RATES_STEP = {"step": "sgd"}
HYPERNET_FILE = "hypernet.safetensors"  # a LoRA hypernetwork's tensors (llm_meta.meta.hypernet), beside the PEFT files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _aside(final: Path, what: str) -> Path:
    """A hidden name beside `final`, unique to this process and call, for a temporary or a
    replaced version: never a name a user's own folder has (`<final>.old`, `<final>.tmp` are theirs)."""
    return final.with_name(f".{final.name}.{what}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _ours_aside(final: Path, what: str) -> list[Path]:
    """Folders `_aside(final, what)` left behind (a killed process), newest first."""
    found = [p for p in final.parent.glob(f".{glob.escape(final.name)}.{what}-*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def write_manifest(folder: Path) -> None:
    """`manifest.json`: the sha256 of every file in `folder`."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    (folder / MANIFEST).write_text(json.dumps({p.name: _sha256(p) for p in files}, indent=1))


def _finish_folder(tmp: Path, final: Path) -> None:
    """Write the manifest, fsync, and move `tmp` to `final`, replacing an older `final` by two
    renames. Callers hold the target's lock (`llm_meta.io.outputs`) or own the folder around it (a
    run's adapter and checkpoints), so leftovers of a killed earlier write can be cleared here."""
    write_manifest(tmp)
    for p in tmp.iterdir():
        with p.open("rb") as f:
            os.fsync(f.fileno())
    recover_folder(final)
    if final.is_dir() and not any(final.iterdir()):
        final.rmdir()  # an empty folder (made by the user for the output): nothing to keep
    old = None
    if final.exists():
        old = _aside(final, "old")
        os.replace(final, old)
    # A crash exactly here leaves only `old`: readers read it in place, the next write restores it.
    os.replace(tmp, final)
    for stale in ([old] if old else []) + _ours_aside(final, "old") + _ours_aside(final, "tmp"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)


def recover_folder(final: Path) -> None:
    """Undo a replacement cut off between its two renames (`final` is gone, the previous version
    is aside under our hidden name): for writers, which hold the target. Readers use
    `readable_folder` and rename nothing."""
    if not final.exists() and (previous := _ours_aside(final, "old")):
        log.warning("%s was cut off while being replaced; restoring the previous version", final)
        os.replace(previous[0], final)


def readable_folder(final: str | Path) -> Path:
    """`final`, or, when a replacement was cut off between its two renames, the previous version
    where it lies aside, read in place: a read never renames or deletes anything."""
    final = Path(final)
    if not final.exists() and (previous := _ours_aside(final, "old")):
        log.warning("%s was cut off while being replaced; reading the previous version (%s), which the next write "
                    "of %s restores", final, previous[0].name, final.name)
        return previous[0]
    return final


def _fresh_tmp(final: Path) -> Path:
    tmp = _aside(final, "tmp")
    tmp.mkdir(parents=True)
    return tmp


# Every file name llm_meta writes into an adapter, task-model or checkpoint folder. A manifest
# naming anything else (another name, a path such as "../x") is refused: it was not written by us.
KNOWN_FILES = frozenset({METADATA_FILE, "adapter_config.json", "adapter_model.safetensors", "README.md",
                         "head.safetensors", "labels.json", "support.jsonl", RATES_FILE, HYPERNET_FILE,
                         "params.safetensors", "optimizer.safetensors", "state.json"})
ADAPTER_FILES = (METADATA_FILE, "adapter_config.json", "adapter_model.safetensors")
CHECKPOINT_FILES = ("params.safetensors", "optimizer.safetensors", "state.json")


def verify_folder(folder: Path, required: tuple[str, ...] = ()) -> None:
    """Check a folder against its manifest: the manifest lists only file names llm_meta writes
    (`KNOWN_FILES`, no paths), lists every such file the folder holds and each of `required`, and
    every listed file matches its sha256.

    Raises:
        CheckpointError: naming the folder and the first file that fails.
    """
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST} (not written by llm_meta, or cut off mid-write)")
    try:
        expected = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{folder}: {MANIFEST} is corrupt ({err})") from err
    if not isinstance(expected, dict) or not all(isinstance(v, str) for v in expected.values()):
        raise CheckpointError(f"{folder}: {MANIFEST} is not a mapping of file names to checksums")
    unknown = sorted(name for name in expected if name not in KNOWN_FILES)
    if unknown:
        raise CheckpointError(f"{folder}: {MANIFEST} names {unknown[0]!r}, which is not a file llm_meta writes "
                              f"(a path, or a foreign file): refusing the folder")
    for name in (*required, *sorted(n for n in KNOWN_FILES if (folder / n).exists())):
        if name not in expected:
            raise CheckpointError(f"{folder}: {name} is not listed in {MANIFEST} (missing, or added after llm_meta "
                                  f"wrote the folder): refusing the folder")
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: {name} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(f"{folder}: {name} does not match its checksum (truncated or corrupt)")


def save_adapter(body: Body, params: Params, folder: str | Path, metadata: dict[str, Any],
                 extra_files: dict[str, Callable[[Path], None]] | None = None) -> Path:
    """Write `params` as a standard PEFT adapter folder (loadable by plain peft) plus llm_meta.json.

    `extra_files` maps a file name to a function writing it, so they share the atomic write.
    """
    folder = Path(folder)
    tmp = _fresh_tmp(folder)
    set_lora_params(body, params)
    start = Start.of(params)
    rates = {k: v.detach().exp().contiguous().cpu() for k, v in start.rates.items()}
    if rates:
        save_file(rates, str(tmp / RATES_FILE), metadata=RATES_STEP)
    hyper = {k: v.detach().contiguous().cpu() for k, v in start.hypernet.items()}
    if hyper:
        save_file(hyper, str(tmp / HYPERNET_FILE))
    body.model.save_pretrained(str(tmp))
    # Record the model *name* the user gave (e.g. the bundled one), not this machine's path to it.
    config_path = tmp / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = body.name
    config_path.write_text(json.dumps(adapter_config, indent=2))
    for name, write in (extra_files or {}).items():
        write(tmp / name)
    metadata = {"format": ADAPTER_FORMAT, **metadata}
    write_model_card(tmp, metadata)  # README.md with the Hub's front matter: how it was made, how to load it
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=1, default=str))
    _finish_folder(tmp, folder)
    return folder


def load_adapter_params(body: Body, folder: str | Path) -> Params:
    """The LoRA tensors of a saved adapter folder as a params dict keyed like `lora_params(body)`,
    plus Meta-SGD's learned rates and a hypernetwork when the adapter has them (`Start.params()`)."""
    folder = readable_folder(folder)
    verify_folder(folder, ADAPTER_FILES)
    saved = read_tensors(folder / "adapter_model.safetensors")
    # peft saves "…query.lora_A.weight"; the live model inserts the adapter name: "…lora_A.default.weight".
    live = {n.replace(".default.", "."): n for n in body.lora_names}
    shapes = {n: p.shape for n, p in body.model.named_parameters() if n in body.lora_names}
    if set(saved) != set(live) or any(v.shape != shapes[live[k]] for k, v in saved.items()):
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        raise _layout_error(folder, base, body.name)
    start = Start({live[k]: v.to(body.device) for k, v in saved.items()})
    if (folder / RATES_FILE).is_file():
        with safe_open(str(folder / RATES_FILE), "pt") as f:
            if f.metadata() != RATES_STEP:
                raise CheckpointError(f"{folder}: {RATES_FILE} was written by an earlier llm_meta whose learned rates "
                                      "scaled Adam's step, not SGD's (Meta-SGD); meta-train the adapter again")
        rates = read_tensors(folder / RATES_FILE)
        if not set(rates) <= set(body.lora_names) | set(HEAD_KEYS):
            raise CheckpointError(f"{folder}: {RATES_FILE} names tensors this model does not have")
        if not all(bool((v > 0).all()) for v in rates.values()):
            raise CheckpointError(f"{folder}: {RATES_FILE} holds a rate that is not positive")
        start.rates = {k: v.log().to(body.device) for k, v in rates.items()}
    if (folder / HYPERNET_FILE).is_file():  # its fit to this body's LoRA is checked when it generates
        start.hypernet = {k: v.to(body.device) for k, v in read_tensors(folder / HYPERNET_FILE).items()}
    return start.params()


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, every value finite: a NaN or inf weight would silently
    turn every prediction into the first label.

    Raises:
        CheckpointError: the file is not safetensors, or holds a non-finite value.
    """
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for malformed headers and data
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(err).splitlines()[0]})") from err
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"{path}: tensor {bad} holds NaN or infinite values; the folder is unusable")
    return tensors


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """llm_meta's metadata of an adapter folder, with clear errors for foreign or corrupt folders."""
    folder = readable_folder(folder)
    if not folder.is_dir():
        raise CheckpointError(f"no such folder: {folder} (a model or adapter folder written by llm-meta)")
    if not (folder / METADATA_FILE).is_file():
        kind = "a PEFT adapter from another tool" if (folder / "adapter_config.json").is_file() else "not an adapter"
        raise CheckpointError(f"{folder} has no {METADATA_FILE}: {kind}, not an llm_meta adapter")
    verify_folder(folder, (METADATA_FILE,))
    try:
        meta = json.loads((folder / METADATA_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{folder}: {METADATA_FILE} is not JSON ({err})") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder}: {METADATA_FILE} is not a JSON object")
    return meta


def read_start(folder: str | Path) -> dict[str, Any]:
    """The metadata of a meta-trained adapter (a start for `adapt`, `adapt --ner`, `init=`).

    Raises:
        CheckpointError: `folder` is not an llm_meta folder, is corrupt, or is another kind of
            llm_meta folder (an adapted task model, a meta-training run whose adapter is inside it).
    """
    meta = read_metadata(folder)
    fmt = str(meta.get("format"))
    if kind_of_format(fmt):
        raise CheckpointError(f"{folder} is an adapted task model; start from a meta-trained adapter or none")
    if fmt != ADAPTER_FORMAT:
        inside = f" (its adapter is {Path(folder) / 'adapter'})" if fmt.startswith("llm_meta.run") else ""
        raise CheckpointError(f"{folder} is an llm_meta {fmt}, not a meta-trained adapter{inside}")
    return meta


def save_checkpoint(run_dir: Path, step: int, params: Params, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Checkpoint `step` (meta-parameters, optimiser state, run state) and point `latest` at it."""
    ckpt_dir = run_dir / "checkpoints"
    final = ckpt_dir / f"step-{step:07d}"
    tmp = _fresh_tmp(final)
    save_file({k: v.detach().contiguous().cpu() for k, v in params.items()}, str(tmp / "params.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, **state}, indent=1))
    _finish_folder(tmp, final)
    write_atomic(ckpt_dir / "latest", final.name)
    for old in sorted(ckpt_dir.glob("step-*[0-9]"))[:-keep]:
        # Rename first: a crash mid-delete must not leave a half-deleted folder that looks like a checkpoint.
        doomed = old.with_name(old.name + ".deleted")
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(old, doomed)
    for doomed in ckpt_dir.glob("*.deleted"):  # this call's, and any a crash left behind
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def _layout_error(folder: Path, trained_for: str | None, model: str) -> CheckpointError:
    return CheckpointError(f"{folder} was trained for base model {trained_for or '(unrecorded)'}, not for {model}: "
                           f"its LoRA tensors do not match this model's LoRA layout (base model, rank or target "
                           f"modules differ); use the same model settings, or another folder")


def load_checkpoint(run_dir: Path, params: Params, optimizer: torch.optim.Optimizer,
                    model_name: str = "this model", check: Callable[[dict[str, Any]], None] | None = None
                    ) -> dict[str, Any] | None:
    """Restore the newest good checkpoint into `params` and `optimizer`; return its run state.

    Corrupt checkpoints are skipped (newest first) with a warning. None when there is none. An
    intact checkpoint of another model is an error, not a reason to start over. `check` is given
    the checkpoint's state before anything is restored, to refuse it (e.g. another config).

    Raises:
        CheckpointError: every checkpoint is corrupt, or the newest good one holds other tensors
            (names or shapes) than `params`.
    """
    candidates = sorted((run_dir / "checkpoints").glob("step-*[0-9]"), reverse=True)
    for ckpt in candidates:
        try:
            verify_folder(ckpt, CHECKPOINT_FILES)
            tensors = read_tensors(ckpt / "params.safetensors")
            state = json.loads((ckpt / "state.json").read_text())
        except (CheckpointError, OSError, ValueError) as err:
            log.warning("skipping checkpoint %s: %s", ckpt.name, err)
            continue
        if check is not None:
            check(state)
        if set(tensors) != set(params) or any(v.shape != params[k].shape for k, v in tensors.items()):
            raise _layout_error(ckpt, state.get("base_model"), model_name)
        with torch.no_grad():
            for k, v in tensors.items():
                params[k].copy_(v)
        optimizer.load_state_dict(_unflatten_optimizer(load_file(str(ckpt / "optimizer.safetensors")),
                                                       state.pop("optimizer")))
        log.info("resumed from %s", ckpt)
        return state
    if candidates:
        raise CheckpointError(f"{run_dir}: every checkpoint is corrupt; nothing to resume from")
    return None


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors (safetensors) and plain values (JSON)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}
