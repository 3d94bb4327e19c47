"""A registered task cut to its first classes, as a local task folder (CSV per split), for the
speed scripts: the same texts a user's small task would have, at a chosen number of classes."""

from __future__ import annotations

from pathlib import Path


def first_classes(name: str, classes: int, folder: Path, splits: tuple[str, ...] = ("train", "test")) -> str:
    """Task `name`'s first `classes` labels (alphabetical), every row of `splits` with one of them,
    written to `folder`/SPLIT.csv (columns text, label); returns the folder for `load_task`."""
    from llm_meta.tasks import load_task

    task = load_task(name)
    keep = set(sorted(task.label_names)[:classes])
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        task.split(split).filter(lambda row: row["label"] in keep).to_csv(folder / f"{split}.csv", index=False)
    return str(folder)
