"""Progress bars that are never silent: tqdm on a terminal; elsewhere (CI logs, `| tee`, nohup) a
plain line every 30 seconds with the count, elapsed time and ETA, so a long phase always says how
far it is and how long it has left.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # seconds between lines when stderr is not a terminal


class LineStream:
    """A file for tqdm that turns each redraw ("\\r" + bar) into one line of a log, dropping the
    blank redraws tqdm makes when it clears a bar."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.last = stream, ""

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text and text != self.last:  # closing a bar redraws its last state once more
            self.stream.write(text + "\n")
            self.last = text

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable | None = None, desc: str | None = None, enabled: bool = True,
                 **kwargs: Any) -> tqdm:
    """tqdm over `iterable` (kwargs as tqdm's): a live bar on a terminal, a line every
    `LOG_INTERVAL_S` seconds elsewhere, nothing when `enabled` is False."""
    if not enabled:
        return tqdm(iterable, desc=desc, disable=True, **kwargs)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, **kwargs)
    return tqdm(iterable, desc=desc, file=LineStream(sys.stderr), mininterval=LOG_INTERVAL_S,
                maxinterval=LOG_INTERVAL_S, ascii=True, ncols=100, **kwargs)
