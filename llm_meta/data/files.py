"""Reading a user's files: CSV/TSV, JSON/JSONL and Parquet through `datasets`, and the Hub's `hf:` ids.

A user's file is read exactly as written, by one set of rules for every command (`read_inputs`
gives `predict` the same rules for its unlabelled files): a UTF-8 byte-order mark is dropped,
CRLF line ends are line ends, and every CSV/TSV cell is a string (`01`, `true`, `NA`, `null`
stay those strings: no type inference, no missing-value guessing). JSON scalars that are not
strings are written back in JSON's own spelling (`1` -> "1", `true` -> "true"); a JSON null or
a missing field is a missing text (skipped with a warning) or a missing label (an error naming
the row). Rows are numbered from 1, the header not counted.

Every reader and its rules are in this one module, so no command can read a user's file by other
rules (the fault it was made to end); `llm_meta.data.tasks` makes tasks of what it reads.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets

from llm_meta.errors import ColumnError, TaskError

log = logging.getLogger(__name__)

# The split names a folder's files may carry, and the split each one is.
SPLIT_ALIASES = {"train": "train", "dev": "validation", "validation": "validation", "valid": "validation", "test": "test"}


FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


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
        return path.stem if path.is_file() else path.name, load_files(path), str(path)
    raise TaskError(f"unknown task '{spec}': {other + ', ' if other else ''}not an existing file or folder, "
                    f"and not of the form hf:<dataset id>[:<config>]")


def load_files(path: Path, encoding: str = "utf-8") -> datasets.DatasetDict:
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
        ds = load_files(path)["train"]
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
