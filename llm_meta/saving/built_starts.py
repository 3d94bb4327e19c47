"""The starts built on this machine (`llm-meta starts build`, llm_meta.start_library): where they
live and what each is, read from its folder. `adapt` with `adapter=auto` chooses among them
(llm_meta.start_choice); a folder that is corrupt or not a start is listed with the reason and never used."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llm_meta.data.kinds import kind_of_start
from llm_meta.errors import CheckpointError
from llm_meta.io.atomic import cache_dir
from llm_meta.saving.checkpoint import ADAPTER_FILES, read_start, readable_folder, verify_folder

BUILD_FILE = "build.json"  # beside a built start's adapter/: its recipe, family and build time


def starts_dir() -> Path:
    """Where built starts live: $LLM_META_STARTS, else `<llm_meta cache>/starts` ($LLM_META_CACHE
    moves the cache; the start benchmark keeps one folder of starts per meta-seed this way)."""
    return Path(os.environ["LLM_META_STARTS"]) if os.environ.get("LLM_META_STARTS") else cache_dir() / "starts"


def built_starts() -> list[dict[str, Any]]:
    """One row per folder in `starts_dir()`: name, body, family, the task kind it serves ("sequence"
    or "token"), training tasks, validation score (kept and step 0), size (bytes), build time and
    its adapter folder; or name and `error` for a folder that is corrupt or not a built start (it is
    never used)."""
    rows, root = [], starts_dir()
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    for folder in folders:
        try:
            adapter = readable_folder(folder / "adapter")
            verify_folder(adapter, ADAPTER_FILES)
            meta = read_start(adapter)
        except (CheckpointError, FileNotFoundError, OSError) as err:
            rows.append({"name": folder.name, "error": str(err).replace(str(root) + "/", "")})
            continue
        try:
            build = json.loads((folder / BUILD_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            build = {}
        rows.append({"name": folder.name, "body": meta.get("base_model"), "family": build.get("family", "?"),
                     "kind": kind_of_start(meta.get("config") or {}).name,
                     "algorithm": meta.get("algorithm"), "tasks": sorted(meta.get("tasks") or []),
                     "validation": meta.get("validation_accuracy"), "step0": meta.get("step0_validation_accuracy"),
                     "size_bytes": sum(p.stat().st_size for p in adapter.iterdir() if p.is_file()),
                     "build_seconds": build.get("build_seconds"), "adapter": str(adapter)})
    return rows
