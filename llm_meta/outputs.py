"""Where a command may write. Files are data, outputs are sacred.

A command writes only where the user said, and never deletes or replaces what llm_meta did not
write there:

- a folder target that exists, is not empty and was not written by llm_meta (no `llm_meta.json`
  of ours at its top) is refused; one of ours is replaced only with `overwrite` (`--overwrite`);
- a file target that exists is replaced only with `overwrite`, and never when it is one of the
  command's own inputs;
- a missing parent folder is created; a parent that is a file, or a folder that cannot be
  written, is refused;
- all of this is checked before the work starts (`claim`), not after it, and a lock beside the
  target (`filelock`, as the Hugging Face stack uses for its cache) makes a second process
  writing the same target fail at once instead of mixing its files with the first one's.

Replacing is then done by `llm_meta.atomic` (files) and `llm_meta.checkpoint` (folders): under
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

OWN_FILE = "llm_meta.json"
# The hidden names llm_meta writes under before renaming (llm_meta.atomic, llm_meta.checkpoint).
OUR_TEMPORARY = re.compile(r"^\..+\.(tmp|old)-\d+-[0-9a-f]{8}$")  # every folder llm_meta writes has one at its top, with a "format" of ours
FORMAT_PREFIX = "llm_meta."


def folder_format(folder: Path) -> str | None:
    """The llm_meta format of `folder` ("llm_meta.classifier/1", "llm_meta.run/1", ...), or None when
    llm_meta did not write it. A meta-training run of an earlier llm_meta has no `llm_meta.json` at
    its top, but its `adapter/` has one: it counts as a run; a benchmark folder of an earlier
    llm_meta (or one unpacked from a kept archive) is known by its cached scores or trained starts."""
    for marker, fmt in ((folder / OWN_FILE, None), (folder / "adapter" / OWN_FILE, "llm_meta.run/0")):
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and str(data.get("format", "")).startswith(FORMAT_PREFIX):
            return fmt or str(data["format"])
    if any((folder / "scores").glob("*.json")) or any((folder / "starts").glob("*/DONE")):
        return "llm_meta.benchmark/0"
    return None


def _check_parent(target: Path) -> None:
    """The nearest existing folder above `target` must be a folder we can write in (missing
    folders below it are created when the work starts)."""
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # a dangling link: creating folders through it would fail later
            raise OutputError(f"{parent} is a broken link; choose another output path")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{parent} is a file, not a folder: cannot write {target}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {parent} (permission denied): choose another output path")


def check_folder(target: Path, overwrite: bool, flag: str = "--output") -> str | None:
    """Raise OutputError unless `target` can be written as an output folder; return the llm_meta
    format of what is there now (None: nothing, or an empty folder).

    Raises:
        OutputError: `target` is a file, a folder llm_meta did not write, or one it wrote while
            `overwrite` is False; or its parent cannot hold it.
    """
    _check_parent(target)
    if not target.exists() and not target.is_symlink():
        return None
    if not target.is_dir():
        raise OutputError(f"{target} is a file, not a folder; choose another {flag}")
    if all(OUR_TEMPORARY.match(p.name) for p in target.iterdir()):
        return None  # empty, or holding only what a killed write of ours left
    fmt = folder_format(target)
    if fmt is None:
        raise OutputError(f"{target} exists and is not an llm_meta output folder (no {OWN_FILE} of ours): llm_meta "
                          f"never replaces a folder it did not write; choose another {flag}")
    if not overwrite:
        raise OutputError(f"{target} holds an llm_meta output ({fmt}); add --overwrite to replace it, or choose "
                          f"another {flag}")
    return fmt


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_file(target: Path, overwrite: bool, inputs: Iterable[str | Path] = (), flag: str = "--output") -> None:
    """Raise OutputError unless `target` can be written as an output file.

    Raises:
        OutputError: `target` is one of `inputs` (never, even with `overwrite`), a folder, an
            existing file while `overwrite` is False, or its parent cannot hold it.
    """
    for source in inputs:
        if str(source) != "-" and (_same_file(target, Path(source)) or
                                   Path(source).resolve() == target.resolve()):
            raise OutputError(f"{flag} {target} is the command's own input; write the output to another file")
    _check_parent(target)
    if target.is_dir():
        raise OutputError(f"{target} is a folder, not a file; choose another {flag}")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise OutputError(f"{target} exists; add --overwrite to replace it, or choose another {flag}")


def lock_path(target: Path) -> Path:
    """The lock file of `target`: in llm_meta's cache (`locks/`, as the Hugging Face cache keeps its
    own), named by the target's absolute path, so nothing is left beside the user's outputs."""
    import hashlib

    from llm_meta.atomic import cache_dir

    key = hashlib.sha256(str(target.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return cache_dir() / "locks" / f"{key}.lock"


_HELD: dict[str, list] = {}  # resolved target -> [lock, depth]: a process re-entering its own claim


@contextlib.contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold the write lock of `target` (`lock_path`) for the block, re-entrant within one process;
    the missing parent folders of `target` are created.

    Raises:
        OutputError: another process holds it.
    """
    key = str(target.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path(target).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path(target)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OutputError(f"{target} is being written by another llm-meta process; wait for it to finish, or choose "
                          f"another output (lock: {lock_path(target)})") from None
    _HELD[key] = [lock, 1]
    try:
        yield
    finally:
        del _HELD[key]
        lock.release()


@contextlib.contextmanager
def claim(target: str | Path, kind: str = "folder", overwrite: bool = False, inputs: Iterable[str | Path] = (),
          flag: str = "--output") -> Iterator[Path]:
    """Check that `target` can be written (`check_folder` / `check_file`), lock it, check again
    under the lock (another process may have written it meanwhile), and hold the lock for the
    block: wrap the whole command in it, so a refusal comes before the work.

    Raises:
        OutputError: see `check_folder`, `check_file` and `locked`.
    """
    target = Path(target)
    check = (lambda: check_folder(target, overwrite, flag)) if kind == "folder" else \
        (lambda: check_file(target, overwrite, list(inputs), flag))
    check()
    with locked(target):
        check()
        yield target


def write_marker(folder: Path, fmt: str, **fields: object) -> None:
    """The `llm_meta.json` that marks `folder` as ours (written whole, then renamed)."""
    from llm_meta.atomic import atomic_file

    with atomic_file(folder / OWN_FILE) as tmp:
        tmp.write_text(json.dumps({"format": fmt, **fields}, indent=1), encoding="utf-8")


@contextlib.contextmanager
def claim_run(target: str | Path, fmt: str, what: str, known: tuple[str, ...], resume: bool | None = False,
              overwrite: bool = False, main_process: bool = True, barrier=lambda: None) -> Iterator[Path]:
    """Claim a run folder (meta-training, benchmark) that the command fills while it runs, for the block.

    A run folder that exists is continued only when asked: `resume` True (`--resume`) continues
    it, False refuses it unless `overwrite` (`--overwrite`), which first removes the earlier run's
    own entries (`known`: names the recipe writes; anything else in the folder is left alone);
    `resume` None continues one of ours without being asked (the benchmark, whose folder is a
    cache of content-keyed results). `resume` True on a folder with no run is an error. With
    several processes (Accelerate), each checks, `barrier` waits for all, and the main process
    alone locks, clears and marks the folder (`fmt`, via `write_marker`).

    Raises:
        OutputError: a file, a folder llm_meta did not write or another kind of llm_meta folder,
            a run of ours without `--resume` / `--overwrite`, `--resume` with nothing to resume,
            both flags at once, or another process writing the folder.
    """
    target = Path(target)
    if resume and overwrite:
        raise OutputError("--resume and --overwrite together: --resume continues the run in the folder, --overwrite "
                          "starts it again; choose one")
    kind = fmt.partition("/")[0]

    def check() -> str | None:
        existing = check_folder(target, overwrite=True, flag="output_dir")  # refuses files and foreign folders
        if existing is not None and existing.partition("/")[0] != kind:
            raise OutputError(f"{target} holds an llm_meta {existing}, not a {what}; choose another output_dir")
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
