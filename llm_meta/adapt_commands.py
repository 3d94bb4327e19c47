"""The `llm-meta` commands that adapt: `adapt` (a classifier, `--continue` with new examples, `--ner`
for a tagger) and `generate` (a LoRA written by a hypernetwork, no step). The parser is `llm_meta.cli`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Only light modules at the top: an output refused, or a bad flag, answers before torch and
# transformers are imported (seconds); each command imports what it needs after its checks.
from llm_meta.commands import columns_name_files, with_columns
from llm_meta.errors import CheckpointError
from llm_meta.io.outputs import claim


def cmd_adapt(args: argparse.Namespace) -> None:
    if args.new_class and not args.continue_from:
        raise ValueError("--new-class declares classes added to an adapted model: use it with --continue")
    if args.ner and (args.text_column or args.label_column):
        raise ValueError("--text-column and --label-column name a classification file's columns; --ner reads a "
                         "CoNLL file or a dataset with tokens/ner_tags columns")
    with claim(args.output, overwrite=args.overwrite):  # refused before anything is loaded, not after the work
        if args.ner:
            return _adapt_tagger(args)
        if args.continue_from:
            return _continue(args)
        return _adapt(args)


def _adapt(args: argparse.Namespace) -> None:
    from llm_meta.classifier import AdaptConfig, adapt
    from llm_meta.config import load_config

    cfg = with_columns(load_config(AdaptConfig, args.config, args.overrides), args)
    if args.init is not None:  # hypernet:DIR — the start is the adapter a hypernetwork writes for this task
        if args.adapter is not None or not args.init.startswith("hypernet:"):
            raise ValueError("--init takes hypernet:DIR (a hypernetwork from `llm-meta meta-train "
                             "algorithm=hypernet`), instead of --adapter")
        args.adapter = _hypernet_folder(args.init[len("hypernet:"):])
    if args.adapter is not None:
        cfg.adapter = None if args.adapter.lower() == "none" else args.adapter
    cfg.task, cfg.support = args.task or cfg.task, args.support or cfg.support
    columns_name_files(args, [cfg.task])
    cfg.shots = args.shots if args.shots is not None else cfg.shots
    clf = adapt(cfg=cfg, trust_remote_code=args.trust_remote_code, progress=True)
    clf.save(args.output, overwrite=args.overwrite)
    print(f"adapted {clf.metadata['start']} to '{clf.metadata['task']}': {len(clf.labels)} labels, "
          f"{clf.metadata['support_size']} support examples, {clf.metadata['adapt_seconds']} s -> {args.output}")


def _hypernet_folder(folder: str) -> str:
    from llm_meta.saving.checkpoint import HYPERNET_FILE, read_metadata

    meta = read_metadata(folder)
    if not (Path(folder) / HYPERNET_FILE).is_file():
        from llm_meta.io.outputs import describe

        raise CheckpointError(f"{folder} is a {describe(meta.get('format') or 'llm_meta.adapter')} without a "
                              f"hypernetwork (meta-train one with algorithm=hypernet)")
    return folder


def cmd_generate(args: argparse.Namespace) -> None:
    """A task's adapter from its support set in one forward pass of a hypernetwork: no gradient steps."""
    import dataclasses

    with claim(args.output, overwrite=args.overwrite):
        from llm_meta.classifier import AdaptConfig, adapt, default_adapt_config

        cfg = with_columns(AdaptConfig(support=args.support, adapter=_hypernet_folder(args.hypernet),
                                        inner=dataclasses.replace(default_adapt_config(), steps=0)), args)
        clf = adapt(cfg=cfg, trust_remote_code=args.trust_remote_code)
        clf.save(args.output, overwrite=args.overwrite)
    print(f"generated an adapter for '{clf.metadata['task']}' ({len(clf.labels)} labels, "
          f"{clf.metadata['support_size']} support examples) in {clf.metadata['adapt_seconds']} s -> {args.output}")


def _continue(args: argparse.Namespace) -> None:
    from llm_meta.classifier import FewShotClassifier
    from llm_meta.config import load_config
    from llm_meta.online import ContinueConfig, continue_adapt
    from llm_meta.data.tasks import load_rows

    from llm_meta.saving.checkpoint import read_metadata

    recorded = read_metadata(args.continue_from).get("adapt_config")  # the columns it was adapted with
    cfg = with_columns(load_config(ContinueConfig, args.config, args.overrides), args, recorded)
    if args.support is None or args.task or args.adapter:
        raise ValueError("--continue takes --support NEW_FILE (the new labelled examples), not --task or --adapter")
    texts, labels = load_rows(args.support, cfg.text_column, cfg.label_column)
    clf = FewShotClassifier.load(args.continue_from, trust_remote_code=args.trust_remote_code)
    # A value that is itself a label of the new file is one class ("shipping, delays"); any other
    # value is a comma-separated list of classes.
    new_classes = [c for value in args.new_class for c in
                   ([value] if value in labels else [v.strip() for v in value.split(",") if v.strip()])]
    clf = continue_adapt(clf, texts, labels, new_classes, cfg)
    clf.save(args.output, overwrite=args.overwrite)
    step = clf.metadata["continued"][-1]
    print(f"continued {args.continue_from} with {step['examples']} examples ({len(new_classes)} new classes, "
          f"{step['steps']} steps, {step['seconds']} s): {len(clf.labels)} labels, {len(clf.support)} stored "
          f"support examples -> {args.output}")


def _adapt_tagger(args: argparse.Namespace) -> None:
    from llm_meta.config import load_config
    from llm_meta.tagger import TaggerConfig, adapt_tagger

    cfg = load_config(TaggerConfig, args.config, args.overrides)
    if args.adapter is not None:
        cfg.adapter = None if args.adapter.lower() == "none" else args.adapter
    cfg.data = args.task or cfg.data
    cfg.shots = args.shots if args.shots is not None else cfg.shots
    tagger = adapt_tagger(cfg, trust_remote_code=args.trust_remote_code, progress=True)
    tagger.save(args.output, overwrite=args.overwrite)
    print(f"adapted {tagger.metadata['start']} to {len(tagger.labels) - 1} entity types of '{cfg.data}' "
          f"({tagger.metadata['support_size']} support sentences, {tagger.metadata['adapt_seconds']} s) -> {args.output}")


def cmd_starts(args: argparse.Namespace) -> None:
    """`starts list`: the starts built on this machine; `starts build NAME`: run its recipe."""
    from llm_meta.start_library import build_start, built_starts, start_recipes, starts_dir

    if args.action == "build":
        adapter = build_start(args.name, *args.overrides, recipes=args.recipes, overwrite=args.overwrite,
                              trust_remote_code=args.trust_remote_code)
        print(f"built start '{args.name}' -> {adapter} (llm-meta adapt --adapter auto ... chooses among the built "
              f"starts; --adapter {adapter} uses this one)")
        return
    rows, recipes = built_starts(), start_recipes(args.recipes)
    print(f"starts in {starts_dir()}:" if rows else f"no start built in {starts_dir()} yet")
    for r in rows:
        if "error" in r:
            print(f"  {r['name']}: not usable, never chosen: {r['error']}")
            continue
        score = f"{100 * r['validation']:.1f} vs {100 * r['step0']:.1f} untrained" if r["validation"] is not None \
            and r["step0"] is not None else "?"
        took = f", built in {r['build_seconds'] / 60:.1f} min" if r["build_seconds"] else ""
        tasks = ", ".join(r["tasks"][:6]) + (" ..." if len(r["tasks"]) > 6 else "")
        serves = " (for NER taggers: adapt --ner --adapter auto)" if r["kind"] != "sequence" else ""
        print(f"  {r['name']} [{r['family']}]{serves}: {r['algorithm']} on {r['body']}, meta-validation {score}, "
              f"{r['size_bytes'] / 2**20:.1f} MB{took}; tasks: {tasks or '?'}")
    built = {r["name"] for r in rows}
    for name, recipe in recipes.items():
        if name not in built:
            print(f"  not built: {name} [{recipe.family}]: {recipe.about} (llm-meta starts build {name})")
