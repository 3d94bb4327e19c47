"""Write the reference pages that are made from the code, so they cannot drift from it:
docs/reference/cli.md (every command's --help) and docs/reference/python-api.md (the public names'
signatures and docstrings). tests/test_docs.py fails when a page differs from what this writes.

    .venv/bin/python docs/generate.py
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The public Python API, by module: the package's exports, the tagger, and the algorithm core.
API = {
    "llm_meta": ["adapt", "AdaptConfig", "FewShotClassifier", "continue_adapt", "ContinueConfig", "load_task", "Task",
                 "EpisodeSampler", "Episode", "Examples", "meta_train"],
    "llm_meta.tagger": ["adapt_tagger", "TaggerConfig", "FewShotTagger"],
    "llm_meta.meta": ["trainable", "model_loss", "InnerConfig", "inner_batches", "inner_loop", "maml_gradient",
                      "reptile_gradient", "meta_sgd_rates", "interpolate"],
}


def cli_markdown() -> str:
    """Each command's `--help` at 100 columns (argparse wraps to the terminal's width)."""
    from llm_meta.cli import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        parts = ["# Command-line reference\n\nGenerated from the parser by `docs/generate.py`; "
                 "`llm-meta COMMAND --help` prints the same.\n", f"```\n{parser.format_help()}```\n"]
        parts += [f"## llm-meta {name}\n\n```\n{command.format_help()}```\n" for name, command in commands.items()]
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(parts)


def api_markdown() -> str:
    """Signature and docstring of every public name in API."""
    parts = ["# Python API reference\n\nGenerated from the docstrings by `docs/generate.py`. How to use them: "
             "[your own data](../guides/own-data.md), [NER](../guides/ner.md), "
             "[meta-learning over LoRA](../concepts/meta-learning.md).\n"]
    for module_name, names in API.items():
        module = importlib.import_module(module_name)
        parts.append(f"## `{module_name}`\n")
        for name in names:
            obj = getattr(module, name)
            try:
                signature = str(inspect.signature(obj))
            except (TypeError, ValueError):
                signature = ""
            kind = "class " if inspect.isclass(obj) else ""
            doc = inspect.getdoc(obj) or "(no docstring)"
            parts.append(f"### {kind}`{name}{signature}`\n\n```text\n{doc}\n```\n")
            if inspect.isclass(obj):
                parts += [method_markdown(name, m, f) for m, f in inspect.getmembers(obj, callable)
                          if not m.startswith("_") and not inspect.isclass(f) and getattr(f, "__module__", "").startswith("llm_meta")]
    return "\n".join(parts)


def method_markdown(owner: str, name: str, method: object) -> str:
    doc = inspect.getdoc(method) or "(no docstring)"
    return f"#### `{owner}.{name}{inspect.signature(method)}`\n\n```text\n{doc}\n```\n"


PAGES = {HERE / "reference" / "cli.md": cli_markdown, HERE / "reference" / "python-api.md": api_markdown}

if __name__ == "__main__":
    for path, make in PAGES.items():
        path.write_text(make(), encoding="utf-8")
        print(f"wrote {path.relative_to(HERE.parent)}")
