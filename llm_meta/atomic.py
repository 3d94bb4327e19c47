"""Files and folders that appear whole: built under a temporary sibling name, then renamed.

A crash never leaves half a score file, archive, cache shard, converted model or unpacked data
folder at the final name, and two processes building the same thing never mix their parts: the
temporary name carries the process id, and the rename (`os.replace`) is atomic on one file system.
Adapter and checkpoint folders, which must also keep the previous version until the new one is in
place, use `llm_meta.checkpoint`'s own two-rename scheme instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


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


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final` to fill; when the block ends without an error,
    it is renamed to `final`. For write-once caches: if another process finished `final` first, its
    folder is kept and this one dropped.

    Raises:
        OSError: the rename failed and `final` is not a folder (e.g. a file is in the way).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed process that had this id
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
