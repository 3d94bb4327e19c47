"""Token-level tasks (NER): CoNLL-style files and tag-scheme checks.

A CoNLL file has one token per line with its tag in the last whitespace-separated field and a
blank line between sentences (`-DOCSTART-` lines are skipped). Tags are BIO (`B-PER`, `I-PER`,
`O`) or IO (`PER`, `O`). A malformed line is an error naming the file and line; an `I-` tag that
does not continue an entity of its type is *repaired* to `B-` with one warning giving the count
and the first place, because such files are common and the repair is unambiguous.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from llm_meta.tasks import TaskError

log = logging.getLogger(__name__)

TAG = re.compile(r"^(O|[BI]-[^\s]+|[A-Za-z][\w.-]*)$")


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]


def read_conll(path: str | Path, encoding: str = "utf-8") -> list[Sentence]:
    """Sentences of a CoNLL-style file, with BIO tags checked (and repaired, see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"CoNLL file {path} does not exist")
    try:
        lines = path.read_text(encoding=encoding).splitlines()
    except UnicodeDecodeError as err:
        raise TaskError(f"{path}: not valid {encoding} text ({err.reason} at byte {err.start}); "
                        f"re-save it as UTF-8") from err
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    starts: list[int] = []  # first line number of each sentence, for repair messages
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            if tokens:
                sentences.append(Sentence(tokens, tags))
                tokens, tags = [], []
            continue
        if line.startswith("-DOCSTART-"):
            continue
        fields = line.split()
        if len(fields) < 2:
            raise TaskError(f"{path}:{lineno}: expected a token and a tag separated by a tab or spaces, got {line!r}")
        if not TAG.match(fields[-1]):
            raise TaskError(f"{path}:{lineno}: {fields[-1]!r} is not a BIO/IO tag (expected O, B-TYPE, I-TYPE or TYPE)")
        if not tokens:
            starts.append(lineno)
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        sentences.append(Sentence(tokens, tags))
    if not sentences:
        raise TaskError(f"{path}: no sentences (an empty file, or only -DOCSTART- lines)")
    repaired = [(starts[i], j) for i, s in enumerate(sentences) for j in repair_bio(s.tags)]
    if repaired:
        log.warning("%s: repaired %d I- tag(s) that did not continue an entity of their type to B- "
                    "(first: sentence starting at line %d, token %d)", path, len(repaired), *repaired[0])
    return sentences


def repair_bio(tags: list[str]) -> list[int]:
    """Turn `I-X` tags that do not follow `B-X`/`I-X` into `B-X`, in place; return their positions.

    IO tags (no `B-`/`I-` prefix) are left alone: every token of type X is simply X.
    """
    fixed = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-"):
            prev = tags[i - 1] if i else "O"
            if prev not in ("B-" + tag[2:], "I-" + tag[2:]):
                tags[i] = "B-" + tag[2:]
                fixed.append(i)
    return fixed


def entity_types(sentences: list[Sentence]) -> list[str]:
    """The entity types of a tagged corpus (BIO prefixes stripped, O excluded), sorted."""
    return sorted({tag[2:] if tag[:2] in ("B-", "I-") else tag for s in sentences for tag in s.tags} - {"O"})
