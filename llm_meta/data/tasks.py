"""Tasks: labelled text datasets loaded with `datasets`, from the registry, local files or the Hub.

A task spec is one of
  - a registry name (`llm_meta/data/tasks.yaml`, shipped in the package: bundled offline datasets
    from installed packages),
  - a local csv/tsv/jsonl/json/parquet file, or a folder holding train/dev/test files
    (read by `llm_meta.data.files`, one set of rules for every command),
  - `hf:<id>[:<config>]` for the Hugging Face Hub.
All three end in the same `load_dataset` call and the same checks, so the Hub path is exercised
by the local-file tests. Every split is normalised to two string columns, `text` and `label`.
"""

from __future__ import annotations

import hashlib
import html
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import yaml

from llm_meta.data.files import SPLIT_ALIASES, cell_texts, load_files, load_raw
from llm_meta.data.registry import load_registry, source_path
from llm_meta.errors import ColumnError, TaskError  # noqa: F401 (raised here; importable from here too)
from llm_meta.io.atomic import atomic_folder, cache_dir, content_key

log = logging.getLogger(__name__)


FAMILIES_PATH = Path(__file__).resolve().parent / "families.yaml"  # domain rules of task families


# The task name of examples given in memory (lists, a Dataset, a frame): not a dataset a card may name.
IN_MEMORY = "examples"




CLASS_ROLES = ("meta_train", "meta_val", "meta_test")


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
        return sorted({label for split in self.splits for label in self.rows(split)[1]})

    def split(self, name: str) -> datasets.Dataset:
        """The split `name` (train, validation or test; dev and valid mean validation). Raises TaskError
        for a split the task does not have, naming those it has."""
        key = SPLIT_ALIASES.get(name, name)
        if key not in self.splits:
            raise TaskError(f"task '{self.name}' has no '{name}' split (it has: {', '.join(self.splits)})")
        return self.splits[key]

    def rows(self, name: str) -> tuple[list[str], list[str]]:
        """(texts, labels) of split `name` in one batch read (iterating a column goes row by row through
        the dataset's formatter: ~20x slower on 10,000 rows). Raises TaskError like `split`."""
        batch = self.split(name).select_columns(["text", "label"])[:]
        return batch["text"], batch["label"]

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


def _load_registered(name: str, entry: dict[str, Any]) -> Task:
    path = source_path(name, entry)
    text_column = entry.get("text_column", "text")
    if path.suffix == ".zip":
        raw = load_files(_unzipped(path, entry["files"]))
    else:
        raw = load_files(path, encoding=entry.get("encoding", "utf-8"))
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
        h.update(split.encode())
        for text, label in zip(*task.rows(split)):
            h.update(b"%s\t%s\n" % (text.encode(), label.encode()))
    return h.hexdigest()[:16]
