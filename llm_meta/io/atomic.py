"""Files and folders that appear whole: built under a temporary sibling name, then renamed.

A crash never leaves half a score file, archive, cache shard, converted model or unpacked data
folder at the final name, and two processes building the same thing never mix their parts: each
builds under its own temporary name (process id and a random suffix, so processes in containers
sharing a cache that happen to have the same id do not collide either), and the rename
(`os.replace`) is atomic on one file system.
Adapter and checkpoint folders, which must also keep the previous version until the new one is in
place, use `llm_meta.saving.checkpoint`'s own two-rename scheme instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path


def cache_dir() -> Path:
    """Where llm_meta keeps what it can rebuild (converted models, unpacked data, indexes) and its
    write locks: $LLM_META_CACHE, else $XDG_CACHE_HOME/llm_meta, else ~/.cache/llm_meta."""
    if os.environ.get("LLM_META_CACHE"):
        return Path(os.environ["LLM_META_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm_meta"


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final` to write one file at; when the block ends without an
    error, the file replaces `final` (an older `final` included). On an error nothing is left behind
    and `final` is untouched."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Write a text file whole (`atomic_file`): a crash or a concurrent writer never leaves half a file."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_folder(final: Path, finished: Callable[[Path], bool] = Path.is_dir) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final` to fill; when the block ends without an error,
    it is renamed to `final`. For write-once caches: if another process finished `final` first
    (`finished(final)`, e.g. its config.json is there), its folder is kept and this one dropped.

    Raises:
        OSError: the rename failed and what is at `final` is not a finished folder (a file, or a
            folder left half-written by something else): remove it and run again.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError as e:
            if not (final.is_dir() and finished(final)):
                raise OSError(f"{final} is in the way and is not a finished folder: remove it and run again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_memo(path: Path) -> dict:
    """The JSON object a cache keeps at `path`, or {} when it is missing, torn or not an object (a
    memo is rebuilt, never trusted)."""
    import json

    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def content_key(files: list[Path]) -> str:
    """A key for a cache entry built from `files`: the sha256 of their contents (in order), so a
    file replaced by another of the same name and size gets its own entry, never a stale one.
    Each file's digest is remembered in the cache (`content-keys.json`) against its size and
    modification time, so a large file is read once, not on every use."""
    import hashlib
    import json

    memo_path = cache_dir() / "content-keys.json"
    memo = read_memo(memo_path)
    digests, changed = [], False
    for path in files:
        path = Path(path).resolve()
        stat = path.stat()
        seen = memo.get(str(path))
        if not (isinstance(seen, dict) and seen.get("size") == stat.st_size and seen.get("mtime_ns") == stat.st_mtime_ns):
            h = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
            seen = memo[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": h.hexdigest()}
            changed = True
        digests.append(seen["sha256"])
    if changed:
        with atomic_file(memo_path) as tmp:
            tmp.write_text(json.dumps(memo, indent=1), encoding="utf-8")
    return hashlib.sha256(":".join(digests).encode()).hexdigest()
