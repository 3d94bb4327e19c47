"""Where a command may write. Files are data, outputs are sacred.

A command writes only where the user said, and never deletes or replaces what llm_meta did not
write there:

- a folder target that exists, is not empty and was not written by llm_meta (no `llm_meta.json`
  of ours at its top) is refused; one of ours is replaced only with `overwrite` (`--overwrite`),
  only if it is of the kind the command writes (a task model is never written over a
  meta-training run) and only if it holds nothing but the files its manifest lists;
- a file target that exists is replaced only with `overwrite`, and never when it is one of the
  command's own inputs or lies inside a folder llm_meta wrote;
- symbolic links, the current folder and the folders above it are refused as targets; a missing
  parent folder is created; a parent that is a file, or a folder that cannot be written, is refused;
- all of this is checked before the work starts (`claim`), not after it, and a lock
  (`filelock`, as the Hugging Face stack uses for its cache) on the target, and on any folder
  above it that another llm-meta process is writing, makes a second writer fail at once instead
  of mixing its files with the first one's.

Replacing is then done by `llm_meta.io.atomic` (files) and `llm_meta.saving.checkpoint` (folders): under
a temporary name unique to the process, renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from llm_meta.errors import OutputError  # noqa: F401 (raised here; importable from here too)

OWN_FILE = "llm_meta.json"  # every folder llm_meta writes has one at its top, with a "format" of ours
MANIFEST = "manifest.json"
FORMAT_PREFIX = "llm_meta."
# What each format is, in words, for messages.
FORMAT_NAMES = {"llm_meta.classifier": "task model", "llm_meta.tagger": "NER task model",
                "llm_meta.adapter": "meta-trained adapter", "llm_meta.run": "meta-training run",
                "llm_meta.benchmark": "benchmark"}
TASK_MODELS = ("llm_meta.classifier", "llm_meta.tagger")  # what adapt / generate / --continue write
# The hidden names llm_meta writes under before renaming (llm_meta.io.atomic, llm_meta.saving.checkpoint).
OUR_TEMPORARY = re.compile(r"^\..+\.(tmp|old)-\d+-[0-9a-f]{8}$")


def describe(fmt: str) -> str:
    """'a task model (llm_meta.classifier/1)' for a format."""
    return f"{FORMAT_NAMES.get(fmt.partition('/')[0], 'llm_meta folder')} ({fmt})"


def folder_format(folder: Path) -> str | None:
    """The llm_meta format of `folder` ("llm_meta.classifier/1", "llm_meta.run/1", ...) from the
    `llm_meta.json` at its top, or None when llm_meta did not write it."""
    try:
        data = json.loads((folder / OWN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fmt = data.get("format") if isinstance(data, dict) else None
    return fmt if isinstance(fmt, str) and fmt.startswith(FORMAT_PREFIX) else None


def _check_path(target: Path, flag: str) -> None:
    """Refuse a target that is a symbolic link, the current folder or a folder above it, or whose
    nearest existing parent is not a folder this process can write in (missing folders below it
    are created when the work starts)."""
    if target.is_symlink():
        raise OutputError(f"{target} is a symbolic link{'' if target.exists() else ' to nothing'}: give the real "
                          f"path, or another {flag}")
    here = Path.cwd().resolve()
    if target.resolve() == here or target.resolve() in here.parents:
        raise OutputError(f"{flag} {target} is the current folder or one above it: name a new folder for the output")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # a dangling link: creating folders through it would fail later
            raise OutputError(f"{parent} is a broken link; choose another output path")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{parent} is a file, not a folder: cannot write {target}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {parent} (permission denied): choose another output path")


def _not_listed(folder: Path) -> list[str]:
    """Entries of an llm_meta folder that its manifest does not list (a user's files put there):
    replacing the folder would delete them."""
    try:
        listed = set(json.loads((folder / MANIFEST).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        listed = set()
    return sorted(p.name for p in folder.iterdir()
                  if p.name not in listed | {MANIFEST} and not OUR_TEMPORARY.match(p.name))


def check_folder(target: Path, overwrite: bool, flag: str = "--output", kinds: tuple[str, ...] = TASK_MODELS
                 ) -> str | None:
    """Raise OutputError unless `target` can be written as an output folder of one of `kinds`
    (format prefixes); return the llm_meta format of what is there now (None: nothing, or an empty
    folder).

    Raises:
        OutputError: `target` is a file, a link, the current folder, a folder llm_meta did not
            write, one of another kind, one holding files its manifest does not list, or one of
            ours while `overwrite` is False; or its parent cannot hold it.
    """
    _check_path(target, flag)
    if not target.exists():
        return None
    if not target.is_dir():
        raise OutputError(f"{target} is a file, not a folder; choose another {flag}")
    if all(OUR_TEMPORARY.match(p.name) for p in target.iterdir()):
        return None  # empty, or holding only what a killed write of ours left
    fmt = folder_format(target)
    if fmt is None:
        raise OutputError(f"{target} exists and is not an llm_meta output folder (no {OWN_FILE} of ours): llm_meta "
                          f"never replaces a folder it did not write; choose another {flag}")
    if fmt.partition("/")[0] not in kinds:
        raise OutputError(f"{target} holds a {describe(fmt)}, not what this command writes: choose another {flag}")
    extra = _not_listed(target)
    if extra:
        raise OutputError(f"{target} holds files llm_meta did not write ({', '.join(extra[:5])}"
                          f"{' ...' if len(extra) > 5 else ''}): move them out, or choose another {flag}")
    if not overwrite:
        raise OutputError(f"{target} holds a {describe(fmt)}; add --overwrite to replace it (Python: overwrite=True), "
                          f"or choose another {flag}")
    return fmt


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_file(target: Path, overwrite: bool, inputs: Iterable[str | Path] = (), flag: str = "--output") -> None:
    """Raise OutputError unless `target` can be written as an output file.

    Raises:
        OutputError: `target` is one of `inputs` or lies in a folder llm_meta wrote (never, even
            with `overwrite`), is a folder or a link, is an existing file while `overwrite` is
            False, or its parent cannot hold it.
    """
    for source in inputs:
        if str(source) != "-" and (_same_file(target, Path(source)) or Path(source).resolve() == target.resolve()):
            raise OutputError(f"{flag} {target} is the command's own input; write the output to another file")
    if target.parent.is_dir() and (fmt := folder_format(target.parent)):
        raise OutputError(f"{flag} {target} is inside {target.parent}, a {describe(fmt)}: write the output elsewhere")
    _check_path(target, flag)
    if target.is_dir():
        raise OutputError(f"{target} is a folder, not a file; choose another {flag}")
    if target.exists() and not overwrite:
        raise OutputError(f"{target} exists; add --overwrite to replace it (Python: overwrite=True), or choose another "
                          f"{flag}")


def lock_path(target: Path) -> Path:
    """The lock file of `target`: in llm_meta's cache (`locks/`, as the Hugging Face cache keeps its
    own), named by the target's absolute path, so nothing is left beside the user's outputs."""
    import hashlib

    from llm_meta.io.atomic import cache_dir

    key = hashlib.sha256(str(target.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return cache_dir() / "locks" / f"{key}.lock"


_HELD: dict[str, list] = {}  # resolved target -> [lock, depth]: a process re-entering its own claim


def _check_enclosing(target: Path) -> None:
    """Refuse when another llm-meta process is writing a folder that holds `target` (a meta-training
    run while `target` is its adapter, say). Only folders that have a lock file are tried, and
    the lock is released at once: nothing is created for the others."""
    for folder in target.resolve().parents:
        if str(folder) in _HELD or not lock_path(folder).exists():
            continue
        _acquire(lock_path(folder), f"{target} is inside {folder}, which another llm-meta process is writing; wait "
                 f"for it to finish, or choose another output").release()


def _acquire(path: Path, busy: str) -> FileLock:
    """The lock at `path`, taken at once or refused with the message `busy` (no waiting: a second
    writer is told, not queued)."""
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OutputError(busy) from None
    return lock


@contextlib.contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold the write lock of `target` (`lock_path`) for the block, re-entrant within one process;
    the missing parent folders of `target` are created.

    Raises:
        OutputError: another process holds it or a folder above it; the lock cannot be created.
    """
    key = str(target.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    try:
        lock_path(target).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create llm_meta's lock folder {lock_path(target).parent} ({err.strerror}): set "
                          f"LLM_META_CACHE to a folder you can write") from None
    _check_enclosing(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = _acquire(lock_path(target), f"{target} is being written by another llm-meta process; wait for it to "
                    f"finish, or choose another output (lock: {lock_path(target)})")
    _HELD[key] = [lock, 1]
    try:
        yield
    finally:
        del _HELD[key]
        lock.release()


@contextlib.contextmanager
def claim(target: str | Path, kind: str = "folder", overwrite: bool = False, inputs: Iterable[str | Path] = (),
          flag: str = "--output", kinds: tuple[str, ...] = TASK_MODELS) -> Iterator[Path]:
    """Check that `target` can be written (`check_folder` for a folder of `kinds` / `check_file`),
    lock it, check again under the lock (another process may have written it meanwhile), and hold
    the lock for the block: wrap the whole command in it, so a refusal comes before the work.

    Raises:
        OutputError: see `check_folder`, `check_file` and `locked`.
    """
    target = Path(target)
    check = (lambda: check_folder(target, overwrite, flag, kinds)) if kind == "folder" else \
        (lambda: check_file(target, overwrite, list(inputs), flag))
    check()
    with locked(target):
        check()
        yield target


def write_marker(folder: Path, fmt: str, **fields: object) -> None:
    """The `llm_meta.json` that marks `folder` as ours (written whole, then renamed)."""
    from llm_meta.io.atomic import atomic_file

    with atomic_file(folder / OWN_FILE) as tmp:
        tmp.write_text(json.dumps({"format": fmt, **fields}, indent=1), encoding="utf-8")


def _legacy_run(target: Path, fmt: str, known: tuple[str, ...]) -> str | None:
    """`fmt` at version 0 for a run folder an earlier llm_meta wrote without a top-level marker: it
    holds only entries the recipe writes (`known`) and the trained output of one (an adapter of
    ours, or cached benchmark scores). None otherwise. Such a folder may be continued, never cleared."""
    entries = [p.name for p in target.iterdir() if not OUR_TEMPORARY.match(p.name)]
    ours = folder_format(target / "adapter") is not None or any((target / "scores").glob("*.json")) or \
        any((target / "starts").glob("*/DONE"))
    return f"{fmt.partition('/')[0]}/0" if entries and set(entries) <= set(known) and ours else None


@contextlib.contextmanager
def claim_run(target: str | Path, fmt: str, known: tuple[str, ...], resume: bool | None = False,
              overwrite: bool = False, main_process: bool = True, barrier=lambda: None) -> Iterator[Path]:
    """Claim a run folder (meta-training, benchmark) that the command fills while it runs, for the block.

    A run folder that exists is continued only when asked: `resume` True (`--resume`) continues
    it, False refuses it unless `overwrite` (`--overwrite`), which first removes the earlier run's
    own entries (`known`: names the recipe writes; anything else in the folder is left alone);
    `resume` None continues one of ours without being asked (the benchmark, whose folder is a
    cache of content-keyed results). `resume` True on a folder with no run is an error. A run of
    an earlier llm_meta, with no marker at its top, may be continued but not cleared. With
    several processes (Accelerate), each checks, `barrier` waits for all, and the main process
    alone locks, clears and marks the folder (`fmt`, via `write_marker`).

    Raises:
        OutputError: a file, a link, a folder llm_meta did not write or another kind of llm_meta
            folder, a run of ours without `--resume` / `--overwrite`, `--resume` with nothing to
            resume, both flags at once, or another process writing the folder.
    """
    target = Path(target)
    what = FORMAT_NAMES[fmt.partition("/")[0]]
    if resume and overwrite:
        raise OutputError("--resume and --overwrite together: --resume continues the run in the folder, --overwrite "
                          "starts it again; choose one")

    def check() -> str | None:
        _check_path(target, "output_dir")
        if not target.exists():
            existing = None
        elif not target.is_dir():
            raise OutputError(f"{target} is a file, not a folder; choose another output_dir")
        elif all(OUR_TEMPORARY.match(p.name) for p in target.iterdir()):
            existing = None
        else:
            existing = folder_format(target) or _legacy_run(target, fmt, known)
            if existing is None:
                raise OutputError(f"{target} exists and is not an llm_meta output folder (no {OWN_FILE} of ours): "
                                  f"llm_meta never writes into a folder it did not write; choose another output_dir")
            if existing.partition("/")[0] != fmt.partition("/")[0]:
                raise OutputError(f"{target} holds a {describe(existing)}, not a {what}; choose another output_dir")
            if overwrite and existing.endswith("/0"):
                raise OutputError(f"{target} holds a {what} of an earlier llm_meta (no {OWN_FILE} at its top): "
                                  f"--overwrite cannot tell its files from yours; clear it yourself, or choose "
                                  f"another output_dir")
        if existing is None and resume:
            raise OutputError(f"--resume: {target} holds no {what} to resume; run without --resume to start one")
        if existing is not None and resume is False and not overwrite:
            raise OutputError(f"{target} holds a {what}: add --resume to continue it, or --overwrite to start it again "
                              f"(or choose another output_dir)")
        return existing

    check()
    barrier()
    with locked(target) if main_process else contextlib.nullcontext():
        if main_process:
            if check() is not None and overwrite:
                import shutil

                for name in known:
                    path = target / name
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    elif path.exists() or path.is_symlink():
                        path.unlink()
            target.mkdir(parents=True, exist_ok=True)
            if folder_format(target) != fmt:
                write_marker(target, fmt)
        barrier()
        yield target
