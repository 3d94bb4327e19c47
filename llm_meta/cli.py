"""`llm-meta` command: thin argument parsing in front of the library and the recipes' main(cfg)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from llm_meta.checkpoint import CheckpointError
from llm_meta.config import ConfigError
from llm_meta.models import ModelLoadError
from llm_meta.tasks import TaskError


def _quiet_libraries() -> None:
    """Keep the user's terminal for our own progress bars and messages."""
    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not ours
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def cmd_tasks(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from llm_meta.tasks import load_registry, load_task

    rows = []
    for name in tqdm(list(load_registry()), desc="loading tasks", leave=False, disable=None):
        task = load_task(name)
        sizes = {s: len(task.splits[s]) for s in ("train", "validation", "test") if s in task.splits}
        roles = "/".join(str(len(task.classes(r))) for r in ("meta_train", "meta_val", "meta_test")) \
            if task.class_roles else "-"
        rows.append([name, task.role, str(len(task.label_names)), roles, str(sizes.get("train", 0)),
                     str(sizes.get("validation", 0)), str(sizes.get("test", 0)), task.source])
    header = ["task", "role", "classes", "train/val/test classes", "train", "dev", "test", "source"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def cmd_episode(args: argparse.Namespace) -> None:
    from llm_meta.episodes import EpisodeSampler
    from llm_meta.tasks import load_task

    tasks = [load_task(t) for t in args.task]
    sampler = EpisodeSampler(tasks, args.n_way, args.k_shot, args.q_query, split=args.split,
                             class_role=args.classes, seed=args.seed)
    ep = sampler.episode(args.index)
    print(f"episode {args.index} of seed {args.seed}: task {ep.task}, {ep.n_way}-way, "
          f"{len(ep.support)} support / {len(ep.query)} query, hash {ep.fingerprint()}")
    for label, name in enumerate(ep.label_names):
        shots = [t for t, y in zip(ep.support.texts, ep.support.labels) if y == label]
        print(f"  [{label}] {name}: " + " | ".join(s[:60] for s in shots))


def cmd_recipe(args: argparse.Namespace) -> None:
    """Run a recipe's main(cfg) with the config file and key=value overrides."""
    import importlib

    from llm_meta.config import load_config

    module = importlib.import_module(f"recipes.{args.recipe}")
    cfg = load_config(module.Config, args.config, args.overrides)
    if getattr(args, "resume", False):
        cfg.resume = True
    module.main(cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-meta", description="Few-shot fine-tuning of language models "
                                     "by meta-learning LoRA adapters over N-way K-shot episodes.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tasks", help="list the registered tasks with rows, classes and source")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("episode", help="show one sampled N-way K-shot episode")
    p.add_argument("task", nargs="+", help="registry name, local file/folder, or hf:<id>[:<config>]")
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--q-query", type=int, default=5)
    p.add_argument("--split", default="train")
    p.add_argument("--classes", default=None, help="meta_train | meta_val | meta_test (registry class split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index", type=int, default=0)
    p.set_defaults(func=cmd_episode)

    p = sub.add_parser("meta-train", help="meta-train a LoRA adapter (FOMAML, Reptile) over episodes")
    p.add_argument("--config", default=None, help="YAML config (recipes/configs/meta_train.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output dir")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_recipe, recipe="meta_train")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    try:
        args.func(args)
    except (ConfigError, TaskError, ModelLoadError, CheckpointError, ValueError, FileNotFoundError,
            FloatingPointError) as err:
        if args.verbose or os.environ.get("LLM_META_DEBUG"):
            raise
        print(f"llm-meta {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
