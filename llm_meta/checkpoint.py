"""Atomic, checksummed checkpoints and PEFT adapter folders.

A folder is written under a temporary name and renamed into place, so a crash mid-write
leaves either the old folder or the new one, never half of one. Every file's sha256 goes into
`manifest.json`; a checkpoint whose files do not match is skipped with a warning in favour of
the previous good one. Tensors are stored as safetensors only (no pickle anywhere).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from llm_meta.models import Body, Params, set_lora_params

log = logging.getLogger(__name__)

METADATA_FILE = "llm_meta.json"
MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint or adapter folder that is missing, corrupt, or not written by llm_meta."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _finish_folder(tmp: Path, final: Path) -> None:
    """Write the manifest, fsync, and move `tmp` to `final` (replacing an older `final`)."""
    files = sorted(p for p in tmp.iterdir() if p.is_file() and p.name != MANIFEST)
    (tmp / MANIFEST).write_text(json.dumps({p.name: _sha256(p) for p in files}, indent=1))
    for p in tmp.iterdir():
        with p.open("rb") as f:
            os.fsync(f.fileno())
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def verify_folder(folder: Path) -> None:
    """Raise CheckpointError when a file is missing or its checksum does not match the manifest."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST} (not written by llm_meta, or cut off mid-write)")
    try:
        expected = json.loads(manifest.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{folder}: {MANIFEST} is corrupt ({err})") from err
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
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_tmp(folder)
    set_lora_params(body, params)
    body.model.save_pretrained(str(tmp))
    # Record the model *name* the user gave (e.g. the bundled one), not this machine's path to it.
    config_path = tmp / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = body.name
    config_path.write_text(json.dumps(adapter_config, indent=2))
    for name, write in (extra_files or {}).items():
        write(tmp / name)
    (tmp / METADATA_FILE).write_text(json.dumps({"format": "llm_meta.adapter/1", **metadata}, indent=1, default=str))
    _finish_folder(tmp, folder)
    return folder


def load_adapter_params(body: Body, folder: str | Path) -> Params:
    """The LoRA tensors of a saved adapter folder as a params dict keyed like `lora_params(body)`."""
    folder = Path(folder)
    verify_folder(folder)
    saved = load_file(str(folder / "adapter_model.safetensors"))
    # peft saves "…query.lora_A.weight"; the live model inserts the adapter name: "…lora_A.default.weight".
    live = {n.replace(".default.", "."): n for n in body.lora_names}
    if set(saved) != set(live):
        raise CheckpointError(f"{folder}: its LoRA tensors do not match this model's LoRA layout "
                              f"(another base model, rank or target modules?)")
    return {live[k]: v.to(body.device) for k, v in saved.items()}


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """llm_meta's metadata of an adapter folder, with clear errors for foreign or corrupt folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"adapter folder {folder} does not exist")
    if not (folder / METADATA_FILE).is_file():
        kind = "a PEFT adapter from another tool" if (folder / "adapter_config.json").is_file() else "not an adapter"
        raise CheckpointError(f"{folder} has no {METADATA_FILE}: {kind}, not an llm_meta adapter")
    verify_folder(folder)
    return json.loads((folder / METADATA_FILE).read_text())


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
    _write_atomic(ckpt_dir / "latest", final.name)
    for old in sorted(ckpt_dir.glob("step-*[0-9]"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run_dir: Path, params: Params, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore the newest good checkpoint into `params` and `optimizer`; return its run state.

    Corrupt checkpoints are skipped (newest first) with a warning. None when there is none.
    """
    candidates = sorted((run_dir / "checkpoints").glob("step-*[0-9]"), reverse=True)
    for ckpt in candidates:
        try:
            verify_folder(ckpt)
            tensors = load_file(str(ckpt / "params.safetensors"))
            state = json.loads((ckpt / "state.json").read_text())
            if set(tensors) != set(params):
                raise CheckpointError(f"{ckpt}: its parameters do not match this model's LoRA tensors")
        except (CheckpointError, OSError, ValueError) as err:
            log.warning("skipping checkpoint %s: %s", ckpt.name, err)
            continue
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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
