"""Tasks: labelled text datasets loaded with `datasets`, from the registry, local files or the Hub.

A task spec is one of
  - a registry name (`llm_meta/tasks.yaml`, shipped in the package: bundled offline datasets
    from installed packages),
  - a local csv/tsv/jsonl/json/parquet file, or a folder holding train/dev/test files,
  - `hf:<id>[:<config>]` for the Hugging Face Hub.
All three end in the same `load_dataset` call and the same checks, so the Hub path is exercised
by the local-file tests. Every split is normalised to two string columns, `text` and `label`.

A user's file is read exactly as written, by one set of rules for every command (`read_inputs`
gives `predict` the same rules for its unlabelled files): a UTF-8 byte-order mark is dropped,
CRLF line ends are line ends, and every CSV/TSV cell is a string (`01`, `true`, `NA`, `null`
stay those strings: no type inference, no missing-value guessing). JSON scalars that are not
strings are written back in JSON's own spelling (`1` -> "1", `true` -> "true"); a JSON null or
a missing field is a missing text (skipped with a warning) or a missing label (an error naming
the row). Rows are numbered from 1, the header not counted.

Longer than the house's ~300 lines on purpose: every reader and its rules are in this one file,
so no command can read a user's file by other rules (the fault this module was made to end).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import html
import json
import logging
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import yaml

from llm_meta.io.atomic import atomic_folder, cache_dir, content_key
from llm_meta.errors import ColumnError, TaskError  # noqa: F401 (raised here; importable from here too)
from llm_meta.data.registry import load_registry, source_path

log = logging.getLogger(__name__)

FAMILIES_PATH = Path(__file__).resolve().parent / "families.yaml"  # domain rules of task families
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# The task name of examples given in memory (lists, a Dataset, a frame): not a dataset a card may name.
IN_MEMORY = "examples"
SPLIT_ALIASES = {"train": "train", "dev": "validation", "validation": "validation", "valid": "validation", "test": "test"}
CLASS_ROLES = ("meta_train", "meta_val", "meta_test")


def bom_codec(encoding: str) -> str:
    """The codec to read a file declared as `encoding` with: utf-8-sig for UTF-8, so a byte-order
    mark (what spreadsheet programs write first) is dropped rather than glued to the first field."""
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig") else encoding


def text_codec(path: Path, encoding: str = "utf-8") -> str:
    """The codec every reader opens the text file `path` with, after checking that the whole file
    decodes with it (in blocks: any file size).

    A UTF-16 byte-order mark (FF FE or FE FF: Excel's "Unicode Text" export) says the file is
    UTF-16, and it is read as such; otherwise `encoding` (UTF-8 by default, a UTF-8 byte-order mark
    dropped: `bom_codec`).

    Raises:
        TaskError: one line naming the file, the first byte that does not decode (its offset in
            the whole file and its line) and what to do.
    """
    with path.open("rb") as f:
        head = f.read(3)
    boms = {b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}
    utf16 = boms.get(head[:2])
    codec = "utf-16" if utf16 else bom_codec(encoding)
    # Checked without the byte-order mark, so an error's position counts from the file's first byte.
    skip = 2 if utf16 else 3 if codec == "utf-8-sig" and head == codecs.BOM_UTF8 else 0
    check = utf16 or ("utf-8" if codec == "utf-8-sig" else codec)
    decoder, offset, lines = codecs.getincrementaldecoder(check)(), skip, 0
    with path.open("rb") as f:
        f.seek(skip)
        while True:
            block = f.read(1 << 20)
            held = len(decoder.getstate()[0])  # bytes of a character cut by the previous block
            try:
                lines += decoder.decode(block, final=not block).count("\n")
            except UnicodeDecodeError as err:
                at = offset - held + err.start
                line = lines + codecs.decode(err.object[: err.start], check).count("\n") + 1
                what = "UTF-16 text (its byte-order mark says UTF-16)" if utf16 else \
                    f"{encoding.upper().replace('UTF8', 'UTF-8')} text"
                todo = "re-save it as UTF-8" if utf16 else \
                    "the file may be in Windows-1252 or Latin-1: re-save it as UTF-8 (e.g. Excel: Save As > CSV UTF-8)"
                raise TaskError(f"{path}: not valid {what}: byte 0x{err.object[err.start]:02x} at byte offset {at} "
                                f"(line {line}) does not decode ({err.reason}); {todo}") from err
            if not block:
                return codec
            offset += len(block)


def not_decodable(path: Any, encoding: str, err: UnicodeDecodeError) -> TaskError:
    """The one-line error for a file that is not valid text in `encoding` (when `text_codec` could
    not run first, e.g. inside a parser)."""
    return TaskError(f"{path}: not valid {encoding.removesuffix('-sig')} text ({err.reason} at byte {err.start}); "
                     f"re-save it as UTF-8")


@dataclass
class Task:
    """A labelled text dataset: splits with string `text` and `label` columns."""

    name: str
    splits: dict[str, datasets.Dataset]
    source: str
    role: str = "user"  # meta_train | held_out | user
    class_roles: dict[str, list[str]] = field(default_factory=dict)  # meta_train/meta_val/meta_test -> labels
    description: str = ""
    duplicates_dropped: dict[str, int] = field(default_factory=dict)  # split -> rows whose text an earlier split has

    @property
    def label_names(self) -> list[str]:
        return sorted({label for ds in self.splits.values() for label in ds["label"]})

    def split(self, name: str) -> datasets.Dataset:
        """The split `name` (train, validation or test; dev and valid mean validation). Raises TaskError
        for a split the task does not have, naming those it has."""
        key = SPLIT_ALIASES.get(name, name)
        if key not in self.splits:
            raise TaskError(f"task '{self.name}' has no '{name}' split (it has: {', '.join(self.splits)})")
        return self.splits[key]

    def classes(self, role: str | None) -> list[str]:
        """Labels usable in a role: all of them for role None, else the registry's class split."""
        if role is None:
            return self.label_names
        if role not in CLASS_ROLES:
            raise TaskError(f"unknown class role '{role}' (valid: {', '.join(CLASS_ROLES)})")
        if not self.class_roles:
            return self.label_names if role == "meta_train" else []
        return self.class_roles[role]


def load_task(spec: str, text_column: str = "text", label_column: str = "label", min_classes: int = 2) -> Task:
    """Load a task from a registry name, a local file or folder, or `hf:<id>[:<config>]`.
    `min_classes`: fewer classes in a file is an error (2 to learn from; 1 for a test set)."""
    registry = load_registry()
    if spec in registry:
        return _load_registered(spec, registry[spec])
    name, raw, source = load_raw(spec, f"not a registry name ({', '.join(registry)})")
    return _make_task(name, raw, text_column, label_column, source=source, min_classes=min_classes)


def mapped_columns(column_mapping: dict[str, str] | None, columns: dict[str, str]) -> dict[str, str]:
    """role -> column name: `columns` (e.g. {"text": "text", "label": "label"}) with SetFit's
    `column_mapping` ({data column: role}, e.g. {"utterance": "text", "intent": "label"}) over it.

    Raises:
        ValueError: a mapping to a role that is not one of `columns`' keys.
    """
    mapped = dict(columns)
    for column, role in (column_mapping or {}).items():
        if role not in mapped:
            raise ValueError(f"column_mapping maps '{column}' to '{role}'; the roles are {', '.join(columns)}")
        mapped[role] = column
    return mapped


def as_task(data: Any, labels: Sequence[Any] | None = None, text_column: str = "text",
            label_column: str = "label", min_classes: int = 2) -> Task:
    """A Task from whatever holds the examples: a list of texts with `labels` (class names; numbers
    are read as their JSON spelling, 1 -> "1"), a `datasets.Dataset` or a pandas DataFrame with
    `text_column`/`label_column`, a registry name, file or folder (`load_task`), or a Task.
    In-memory rows get a file's checks (empty texts skipped with a warning, empty labels refused,
    repeated rows named; at least 2 classes).

    Raises:
        TaskError: texts and labels of different lengths, an empty label, fewer than 2 classes.
        ColumnError: a Dataset or DataFrame without the named columns.
        TypeError: `labels` with a file, or data of another type.
    """
    if isinstance(data, Task):
        return data
    if isinstance(data, (str, Path)):
        if labels is not None:
            raise TypeError("labels come from the file's label column; give either a file or texts with labels")
        return load_task(str(data), text_column, label_column, min_classes)
    if labels is not None:
        texts, labels = list(data), list(labels)
        if len(texts) != len(labels):
            raise TaskError(f"{len(texts)} texts but {len(labels)} labels: give one label per text")
        ds, text_column, label_column = datasets.Dataset.from_dict({"text": texts, "label": labels}), "text", "label"
    else:
        ds = table_of(data, "examples must be texts with labels")
    return _make_task(IN_MEMORY, ds, text_column, label_column, source="the examples given", min_classes=min_classes)


def table_of(data: Any, what: str) -> datasets.Dataset:
    """`data` as a Dataset when it is one or a pandas DataFrame (read without importing pandas).

    Raises:
        TypeError: anything else, with `what` the caller's other accepted forms.
    """
    if isinstance(data, datasets.Dataset):
        return data
    if hasattr(data, "columns") and hasattr(data, "to_dict"):
        return datasets.Dataset.from_pandas(data, preserve_index=False)
    raise TypeError(f"{what}, a datasets.Dataset, a pandas DataFrame or a file path, not {type(data).__name__}")


def load_raw(spec: str, other: str = "") -> tuple[str, datasets.DatasetDict, str]:
    """(name, splits, source) of `hf:<id>[:<config>]` or a local file/folder, through `load_dataset`."""
    if spec.startswith("hf:"):
        hub_id, _, config = spec[3:].partition(":")
        try:
            return spec, datasets.load_dataset(hub_id, config or None), f"hub:{hub_id}"
        except Exception as err:  # datasets raises many types for a missing/unreachable dataset
            raise TaskError(f"could not load Hub dataset '{hub_id}': {str(err).splitlines()[0]}") from err
    path = Path(spec)
    if path.exists():
        return path.stem if path.is_file() else path.name, _load_files(path), str(path)
    raise TaskError(f"unknown task '{spec}': {other + ', ' if other else ''}not an existing file or folder, "
                    f"and not of the form hf:<dataset id>[:<config>]")


def _load_files(path: Path, encoding: str = "utf-8") -> datasets.DatasetDict:
    """Load one data file (as the train split) or a folder of train/dev/test files."""
    if path.is_file():
        files = {"train": path}
    else:
        files = {}
        for f in sorted(path.iterdir()):
            split = SPLIT_ALIASES.get(f.stem.lower())
            if split and f.suffix.lower() in FILE_BUILDERS:
                files[split] = f
        if "train" not in files:
            raise TaskError(f"folder {path} has no train file (expected train.csv/.tsv/.jsonl/.json/.parquet)")
    suffixes = {f.suffix.lower() for f in files.values()}
    if len(suffixes) != 1 or next(iter(suffixes)) not in FILE_BUILDERS:
        raise TaskError(f"{path}: unsupported or mixed file types {sorted(suffixes)}; use one of {list(FILE_BUILDERS)}")
    suffix = suffixes.pop()
    for split, f in files.items():
        if f.stat().st_size == 0:
            raise TaskError(f"{f}: the file is empty")
    if FILE_BUILDERS[suffix] == "json":
        return datasets.DatasetDict({split: _read_json(f, text_codec(f, encoding)) for split, f in files.items()})
    kwargs: dict[str, Any] = {}
    if FILE_BUILDERS[suffix] == "csv":
        codec = _one_codec(files.values(), encoding)
        kwargs = csv_options(suffix, codec, files.values())
    try:
        return datasets.load_dataset(FILE_BUILDERS[suffix], data_files={k: str(v) for k, v in files.items()}, **kwargs)
    except UnicodeDecodeError as err:
        raise not_decodable(path, encoding, err) from err
    except Exception as err:  # pandas/pyarrow parse errors come in many types
        cause = err.__cause__ or err
        if isinstance(cause, UnicodeDecodeError):
            raise TaskError(f"{path}: not valid {encoding} text ({cause.reason}); re-save it as UTF-8") from err
        if "corresponds to no data" in str(cause):
            raise TaskError(f"{path}: the dataset has no rows") from err
        raise TaskError(f"{path}: could not be parsed as {FILE_BUILDERS[suffix]}: {str(cause).splitlines()[0]}") from err


def _one_codec(files: Any, encoding: str) -> str:
    """`text_codec` of every file, which must be the same (one reader reads them all)."""
    found = {str(f): text_codec(Path(f), encoding) for f in files}
    if len(set(found.values())) > 1:
        raise TaskError(f"the files {', '.join(found)} are in different encodings ({', '.join(found.values())}); "
                        f"save them all as UTF-8")
    return next(iter(found.values()))


def csv_options(suffix: str, codec: str, files: Any) -> dict[str, Any]:
    """The `datasets` csv builder's options for a .csv or .tsv, the same in every reader.

    Every cell a string with no missing-value guessing ("01", "true", "NA" stay as written). A .csv
    has CSV's quoting. A .tsv has it only when the whole file parses as quoted CSV with tabs
    (`tsv_quoted`: what pandas' `to_csv(sep="\t")` writes, and the bundled intent sets are); any
    other .tsv is plain tab-separated text in which a double quote is an ordinary character (inch
    marks, quoted words, an unbalanced quote), as tools that do not quote write it: read with
    CSV's quoting, one stray quote merged the following lines into one text.
    """
    if suffix == ".tsv":
        delimiter, quoting = "\t", csv.QUOTE_MINIMAL if tsv_quoted(files, codec) else csv.QUOTE_NONE
    else:
        delimiter, quoting = ",", csv.QUOTE_MINIMAL
    return {"keep_default_na": False, "encoding": codec, "delimiter": delimiter, "quoting": quoting,
            "features": _string_features(files, codec, delimiter, quoting)}


def tsv_quoted(files: Any, codec: str) -> bool:
    """Whether every file parses as CSV-quoted tab-separated text: a field that opens with a quote
    closes it before the next tab or line end, with inner quotes doubled (`csv` in strict mode)."""
    csv.field_size_limit(2**31 - 1)  # a long document is one field, not an error
    try:
        for f in files:
            with open(f, encoding=codec, newline="") as handle:
                for _ in csv.reader(handle, delimiter="\t", strict=True):
                    pass
    except csv.Error:
        return False
    return True


def _string_features(files: Any, encoding: str, delimiter: str, quoting: int) -> datasets.Features:
    """All-string features for the CSV files' header (which must be the same in every file)."""
    headers = []
    for f in files:
        try:
            with open(f, encoding=encoding, newline="") as handle:
                headers.append(next(csv.reader(handle, delimiter=delimiter, quoting=quoting), []))
        except UnicodeDecodeError as err:
            raise not_decodable(f, encoding, err) from err
    if any(h != headers[0] for h in headers):
        raise TaskError(f"the files {', '.join(map(str, files))} do not share one header: {headers}")
    # An empty header cell (the index column pandas' to_csv writes) is named the way pandas reads it.
    headers[0] = [name or f"Unnamed: {i}" for i, name in enumerate(headers[0])]
    duplicated = sorted({c for c in headers[0] if headers[0].count(c) > 1})
    if duplicated:
        raise TaskError(f"{next(iter(files))}: column name(s) {duplicated} appear more than once in the header")
    return datasets.Features({name: datasets.Value("string") for name in headers[0]})


def _read_json(path: Path, codec: str = "utf-8-sig") -> datasets.Dataset:
    """A .jsonl file (one object per line) or a .json file (a list of objects, or {"data": [...]}).

    Read with the standard `json` module, not `load_dataset("json")`: datasets 5.x stores a column
    of mixed types (a string label "01" among numbers, a null text) as JSON text and decodes "01"
    back as the number 1, changing the user's data. Here every scalar cell becomes the string the
    user wrote (`cell_text`), None stays missing, and list cells (NER token/tag columns) are kept.
    """
    text = path.read_text(encoding=codec)
    try:
        if path.suffix.lower() == ".jsonl":
            rows = []
            for lineno, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
                if line.strip():  # split at \n only: U+2028 and U+0085 may be inside a JSON string
                    rows.append((lineno, json.loads(line)))
        else:
            loaded = json.loads(text)
            loaded = loaded.get("data", loaded) if isinstance(loaded, dict) else loaded
            if not isinstance(loaded, list):
                raise TaskError(f"{path}: expected a list of objects (or {{\"data\": [...]}}), got {type(loaded).__name__}")
            rows = list(enumerate(loaded, start=1))
    except json.JSONDecodeError as err:
        where = f"line {lineno}" if path.suffix.lower() == ".jsonl" else f"line {err.lineno}"
        raise TaskError(f"{path}: could not be parsed as json ({where}: {err.msg})") from err
    bad = next(((n, r) for n, r in rows if not isinstance(r, dict)), None)
    if bad:
        raise TaskError(f"{path}: row at line/item {bad[0]} is {type(bad[1]).__name__}, expected an object with fields")
    if not rows:
        raise TaskError(f"{path}: the dataset has no rows")
    columns = list(dict.fromkeys(key for _, row in rows for key in row))
    data = {}
    for column in columns:
        values = [row.get(column) for _, row in rows]
        if all(v is None or isinstance(v, list) for v in values):
            data[column] = values  # token / tag lists
        else:  # a mapping or a list among scalars is kept as its JSON text
            data[column] = [json.dumps(v) if isinstance(v, (list, dict)) else cell_text(v) for v in values]
    return datasets.Dataset.from_dict(data)


def cell_text(value: Any) -> str | None:
    """A cell as the string the user wrote: str as is, None as missing, other JSON scalars in JSON's
    own spelling (1 -> "1", 1.5 -> "1.5", true -> "true"). Raises TypeError for lists and mappings."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise TypeError(f"{type(value).__name__} {value!r}")


def read_inputs(source: str, text_column: str = "text") -> list[str | None]:
    """Texts to label, by the rules of `load_task`, all at once (`iter_inputs` reads them in chunks)."""
    return [text for chunk in iter_inputs(source, text_column) for text in chunk]


def iter_inputs(source: str, text_column: str = "text", chunk: int = 4096) -> Iterator[list[str | None]]:
    """Texts to label, in order, `chunk` at a time, by the rules of `load_task`: a .txt file (one
    text per line) or stdin ('-'), else a .csv/.tsv/.jsonl/.json/.parquet file's `text_column`. A
    missing text (JSON null, a row without the field) is None, so outputs stay aligned with the
    input rows. Text files, stdin, JSON lines, CSV and TSV are read as they are consumed (memory
    bounded by `chunk`, whatever the file's length); a .json array or a .parquet file is read whole.
    An empty file (0 bytes) gives no texts.

    Raises:
        TaskError: a missing file, a missing column, an undecodable file, or a non-scalar text.
    """
    if source == "-":
        import sys

        yield from _batched((line.rstrip("\r\n").lstrip("\ufeff") if i == 0 else line.rstrip("\r\n")
                             for i, line in enumerate(sys.stdin)), chunk)
        return
    path = Path(source)
    if not path.is_file():
        raise TaskError(f"input file {source} does not exist")
    if path.stat().st_size == 0:
        return  # an empty file has no texts, whatever its format: an empty output, not an error
    suffix = path.suffix.lower()
    if suffix not in FILE_BUILDERS or suffix == ".jsonl":
        codec = text_codec(path)
        # Universal newlines: \n, \r\n and \r end a line; U+2028 / U+0085 inside a text do not.
        with path.open(encoding=codec) as f:
            lines = (line.removesuffix("\n") for line in f)
            if suffix == ".jsonl":
                lines = _jsonl_texts(lines, source, text_column, chunk)
            yield from _batched(lines, chunk)
        return
    if FILE_BUILDERS[suffix] != "csv":  # a JSON array, a parquet file: read whole
        ds = _load_files(path)["train"]
        if text_column not in ds.column_names:
            raise ColumnError(source, "text", text_column, ds.column_names)
        texts = cell_texts(ds[text_column], source, "text")
        yield from (texts[i : i + chunk] for i in range(0, len(texts), chunk))
        return
    options = csv_options(suffix, text_codec(path), [path])
    if not options["features"]:
        return  # no header either (a file holding only a byte-order mark or blank lines): no texts
    if text_column not in options["features"]:
        raise ColumnError(source, "text", text_column, list(options["features"]))
    streamed = datasets.load_dataset("csv", data_files={"train": str(path)}, streaming=True, **options)["train"]
    row = 0
    quiet = logging.getLogger("datasets")  # the error is ours to report, once (datasets logs it too)
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        for batch in streamed.iter(batch_size=chunk):
            yield cell_texts(batch[text_column], source, "text", start=row)
            row += len(batch[text_column])
    except Exception as err:  # pandas parse errors come in many types
        raise TaskError(f"{source}: could not be parsed as {suffix[1:]} (at or after row {row + 1}): "
                        f"{str(err.__cause__ or err).splitlines()[0]}") from err
    finally:
        quiet.level = level


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _jsonl_texts(lines: Iterable[str], source: str, text_column: str, window: int) -> Iterator[str | None]:
    """The `text_column` of each object of a JSON-lines stream (blank lines skipped), by `_read_json`'s
    rules; a column no object of the first `window` rows has is an error."""
    seen: set[str] | None = set()
    held: list[str | None] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskError(f"{source}: could not be parsed as json (line {lineno}: {err.msg})") from err
        if not isinstance(row, dict):
            raise TaskError(f"{source}: row at line/item {lineno} is {type(row).__name__}, expected an object with fields")
        try:
            text = cell_text(row.get(text_column))
        except TypeError as err:
            raise TaskError(f"{source} line {lineno}: text is {err}, expected a string or a number") from err
        if seen is not None:  # until the column is found, hold the rows to check it exists
            seen |= set(row)
            held.append(text)
            if text_column in seen:
                yield from held
                seen, held = None, []
            elif len(held) >= window:
                break
            continue
        yield text
    if seen is not None and held:
        raise ColumnError(source, "text", text_column, sorted(seen))


def cell_texts(values: list[Any], where: str, role: str, start: int = 0) -> list[str | None]:
    """`cell_text` of every cell of a column, with a one-line error naming the row (from 1; the
    column's first cell is row `start` + 1)."""
    out = []
    for i, value in enumerate(values):
        try:
            out.append(cell_text(value))
        except TypeError as err:
            raise TaskError(f"{where} row {start + i + 1}: {role} is {err}, expected a string or a number") from err
    return out


def _load_registered(name: str, entry: dict[str, Any]) -> Task:
    path = source_path(name, entry)
    text_column = entry.get("text_column", "text")
    if path.suffix == ".zip":
        raw = _load_files(_unzipped(path, entry["files"]))
    else:
        raw = _load_files(path, encoding=entry.get("encoding", "utf-8"))
    if "domain" in entry:
        raw = datasets.DatasetDict({k: in_domain(ds, entry["domain"], text_column) for k, ds in raw.items()})
    if entry.get("clean"):
        raw = raw.map(lambda row: {text_column: _clean_text(row[text_column])})
    if "split" in entry:
        raw = _split_single(raw["train"], **entry["split"])
    task = _make_task(name, raw, text_column, entry.get("label_column", "label"),
                      source=f"{entry['source']}:{entry['path']}", user_file=False)
    task.role = entry.get("role", "meta_train")
    task.description = entry.get("description", "")
    task.duplicates_dropped = drop_seen_texts(task)
    if "class_split" in entry:
        task.class_roles = split_classes(task.label_names, **entry["class_split"])
    return task


def load_families(path: Path = FAMILIES_PATH) -> dict[str, dict[str, Any]]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def shares_texts(a: str, b: str) -> bool:
    """Whether two different registered tasks are read from the same corpus file without being
    disjoint domains of one family (e.g. tweet_sentiment and tweets_claritin share texts; two
    tweets_* domains do not). Tasks that are not registered never count as shared."""
    registry = load_registry()
    if a == b or a not in registry or b not in registry:
        return False
    ea, eb = registry[a], registry[b]
    if (ea["source"], ea["path"]) != (eb["source"], eb["path"]):
        return False
    fa, fb = ea.get("domain", "").partition("/")[0], eb.get("domain", "").partition("/")[0]
    return not (fa and fa == fb)


def in_domain(ds: datasets.Dataset, domain: str, text_column: str) -> datasets.Dataset:
    """The rows of `ds` in `domain` ("<family>/<name>" of llm_meta/families.yaml): the text matches
    that domain's pattern and no other pattern of its family. Raises TaskError for an unknown domain."""
    family, _, wanted = domain.partition("/")
    families = load_families()
    if family not in families or wanted not in families[family]["domains"]:
        raise TaskError(f"unknown domain '{domain}' (families.yaml has: "
                        f"{', '.join(f'{f}/{d}' for f, spec in families.items() for d in spec['domains'])})")
    patterns = {d: re.compile(p) for d, p in families[family]["domains"].items()}

    def only_wanted(text: str | None) -> bool:
        hits = [d for d, p in patterns.items() if p.search((text or "").lower())]
        return hits == [wanted]
    return ds.filter(only_wanted, input_columns=text_column)


def _clean_text(text: str | None) -> str | None:
    """A registered corpus's text without the quotes around it and with HTML entities decoded."""
    if text is None:
        return None
    text = text.strip()
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return html.unescape(text)


def _unzipped(archive: Path, members: dict[str, str]) -> Path:
    """A folder with the zip's `members` extracted as <split><suffix> (train.tsv, test.tsv, ...), once,
    in the llm_meta cache, keyed by the archive's content and the members taken."""
    import zipfile

    key = hashlib.sha256(f"{content_key([archive])}:{sorted(members.items())}".encode()).hexdigest()[:12]
    folder = cache_dir() / "data" / f"{archive.stem}-{key}"
    names = {member: f"{split}{Path(member).suffix}" for split, member in members.items()}  # member -> file

    def whole(f: Path) -> bool:
        return all((f / name).is_file() for name in names.values())
    if not whole(folder):
        with atomic_folder(folder, whole) as tmp, zipfile.ZipFile(archive) as zf:  # or another process's
            for member, name in names.items():
                (tmp / name).write_bytes(zf.read(member))
    return folder


def drop_seen_texts(task: Task) -> dict[str, int]:
    """Remove from the validation split every text of train, and from test every text of train
    or validation, in place; return how many rows each split lost.

    Held-out scores must come from texts never seen in training or selection: some corpora repeat
    texts (the merged tweet corpus), and a random split then puts copies on both sides.
    """
    seen = set(task.splits["train"]["text"]) if "train" in task.splits else set()
    dropped = {}
    for split in ("validation", "test"):
        if split not in task.splits:
            continue
        ds = task.splits[split]
        keep = [i for i, text in enumerate(ds["text"]) if text not in seen]
        dropped[split] = len(ds) - len(keep)
        if dropped[split]:
            log.info("task '%s': dropped %d %s row(s) whose text is also in an earlier split", task.name,
                     dropped[split], split)
            task.splits[split] = ds.select(keep)
        seen |= set(ds["text"])
    return dropped


def _split_single(ds: datasets.Dataset, dev: float, test: float, seed: int) -> datasets.DatasetDict:
    """Deterministic train/validation/test split of a dataset shipped as one file."""
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    n_test, n_dev = int(len(ds) * test), int(len(ds) * dev)
    return datasets.DatasetDict({
        "train": ds.select(sorted(order[n_test + n_dev:])),
        "validation": ds.select(sorted(order[n_test : n_test + n_dev])),
        "test": ds.select(sorted(order[:n_test])),
    })


def split_classes(labels: list[str], meta_val: float, meta_test: float, seed: int) -> dict[str, list[str]]:
    """Split a dataset's classes into disjoint meta-train / meta-val / meta-test sets, reproducibly."""
    shuffled = sorted(labels)
    random.Random(seed).shuffle(shuffled)
    n_val, n_test = round(len(labels) * meta_val), round(len(labels) * meta_test)
    return {
        "meta_val": sorted(shuffled[:n_val]),
        "meta_test": sorted(shuffled[n_val : n_val + n_test]),
        "meta_train": sorted(shuffled[n_val + n_test :]),
    }


def _make_task(name: str, raw: datasets.DatasetDict, text_column: str, label_column: str, source: str,
               user_file: bool = True, min_classes: int = 2) -> Task:
    """A Task of normalised splits; a user's file (not a registered corpus) is also checked for
    repeated rows, texts with two labels and labels that differ only by whitespace or case."""
    if isinstance(raw, datasets.Dataset):
        raw = datasets.DatasetDict({"train": raw})
    splits = {}
    for split, ds in raw.items():  # a single file is one split, named by the file alone
        where = source if len(raw) == 1 else f"{source} [{split}]"
        splits[SPLIT_ALIASES.get(split, split)] = _normalise(ds, where, text_column, label_column, user_file)
    task = Task(name=name, splits=splits, source=source)
    if user_file:
        warn_label_spellings(task.label_names, source)
    if len(task.label_names) < min_classes:
        raise TaskError(f"{source}: label column '{label_column}' has {len(task.label_names)} class(es) "
                        f"({', '.join(task.label_names)}); a classification task needs at least 2")
    return task


def load_rows(spec: str, text_column: str = "text", label_column: str = "label") -> tuple[list[str], list[str]]:
    """(texts, labels) of the train split of a local file/folder or `hf:<id>`, with the checks of a
    task but any number of classes: new examples for online adaptation may all be of one class."""
    _, raw, source = load_raw(spec)
    if isinstance(raw, datasets.Dataset):
        raw = datasets.DatasetDict({"train": raw})
    split = next((s for s in raw if SPLIT_ALIASES.get(s, s) == "train"), None)
    if split is None:
        raise TaskError(f"{source}: no train split (splits: {', '.join(raw)})")
    ds = _normalise(raw[split], source if len(raw) == 1 else f"{source} [{split}]", text_column, label_column)
    warn_label_spellings(sorted(set(ds["label"])), source)
    return list(ds["text"]), list(ds["label"])


def _normalise(ds: datasets.Dataset, where: str, text_column: str, label_column: str,
               check_rows: bool = True) -> datasets.Dataset:
    """Check one split and bring it to string `text` / `label` columns (rows numbered from 1).

    Missing or empty texts are skipped with a warning giving their count and the first row; a
    missing or empty label is an error naming the row, because guessing a class is never right.
    With `check_rows`, repeated rows and texts with two labels are named (`warn_repeated_rows`).
    """
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in ds.column_names:
            raise ColumnError(where, role, column, ds.column_names)
    if len(ds) == 0:
        raise TaskError(f"{where}: the dataset has no rows")
    texts = cell_texts(ds[text_column], where, "text")
    feature = ds.features[label_column]
    labels = [feature.int2str(y) for y in ds[label_column]] if isinstance(feature, datasets.ClassLabel) \
        else cell_texts(ds[label_column], where, "label")
    empty_labels = [i for i, y in enumerate(labels) if y is None or not y.strip()]
    if empty_labels:
        raise TaskError(f"{where} row {empty_labels[0] + 1}: empty label ({len(empty_labels)} row(s) have an "
                        f"empty label); give every row a label or remove it")
    keep = [i for i, t in enumerate(texts) if t is not None and t.strip()]
    if check_rows:
        warn_repeated_rows([texts[i] for i in keep], [labels[i] for i in keep], [i + 1 for i in keep], where)
    if len(keep) < len(texts):
        first = next(i for i, t in enumerate(texts) if t is None or not t.strip())
        log.warning("%s: skipped %d empty or whitespace-only text(s) (first at row %d; a missing text counts as "
                    "empty)", where, len(texts) - len(keep), first + 1)
    if not keep:
        raise TaskError(f"{where}: every text is empty")
    return datasets.Dataset.from_dict({"text": [texts[i] for i in keep], "label": [labels[i] for i in keep]})


def _shown(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")


def warn_repeated_rows(texts: list[str], labels: list[str], rows: list[int], where: str) -> None:
    """Warn, naming the texts and rows, about rows repeated exactly (kept as written: each copy
    counts, in a support set used whole and in scoring; K shots are drawn from distinct texts)
    and about a text labelled with two or more classes (kept: the file says so; fix it if wrong)."""
    seen: dict[str, dict[str, list[int]]] = {}
    for text, label, row in zip(texts, labels, rows):
        seen.setdefault(text, {}).setdefault(label, []).append(row)
    copies = {t: sum(len(r) - 1 for r in by.values()) for t, by in seen.items()}
    copies = {t: n for t, n in copies.items() if n}
    if copies:
        first = next(iter(copies))
        at = ", ".join(str(r) for r in next(r for r in seen[first].values() if len(r) > 1))
        log.warning("%s: %d exact duplicate row(s), extra copies of %d text(s) (e.g. %s at rows %s); kept as written: "
                    "each copy counts as a row", where, sum(copies.values()), len(copies), _shown(first), at)
    conflicts = [(t, by) for t, by in seen.items() if len(by) > 1]
    if conflicts:
        shown = "; ".join(f"{_shown(t)} is labelled " + " and ".join(f"{label!r} (row {r[0]})" for label, r in by.items())
                          for t, by in conflicts[:3])
        log.warning("%s: %d text(s) have more than one label: %s%s; kept as written; fix the file if a label is "
                    "wrong", where, len(conflicts), shown, " ..." if len(conflicts) > 3 else "")


def warn_label_spellings(labels: list[str], where: str) -> None:
    """Warn about labels that differ only by whitespace or case ('positive' / 'positive ' /
    'Positive'): they are kept as written, as separate classes, and the warning says so."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(" ".join(label.split()).casefold(), []).append(label)
    alike = [g for g in groups.values() if len(g) > 1]
    if alike:
        log.warning("%s: labels that differ only by whitespace or case: %s; kept as written, so the task has %d "
                    "classes; fix the file if they are one class", where,
                    "; ".join(" / ".join(repr(x) for x in g) for g in alike), len(labels))


def task_fingerprint(task: Task) -> str:
    """A short hash of the task's data, so results and caches can be traced to exact inputs."""
    h = hashlib.sha256()
    for split in sorted(task.splits):
        ds = task.splits[split]
        h.update(split.encode())
        for text, label in zip(ds["text"], ds["label"]):
            h.update(text.encode())
            h.update(b"\t")
            h.update(label.encode())
            h.update(b"\n")
    return h.hexdigest()[:16]
