"""The `llm-meta` commands that read tasks and task models: tasks, episode, config, meta-train and
benchmark (the recipes), predict, evaluate. Each checks its arguments and outputs before it
imports torch and transformers; the library does the work. The parser is `llm_meta.cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
from pathlib import Path

# Only light modules at the top: an output refused, or a bad flag, answers before torch and
# transformers are imported (seconds); each command imports what it needs after its checks.
from llm_meta.io.outputs import claim


def cmd_tasks(args: argparse.Namespace) -> None:
    """The registered tasks with their counts: from the cache (under a second) unless a task's files
    changed; a task whose data package is missing is listed with the line that installs it."""
    from llm_meta.data.registry import task_summaries

    def summarise(name: str) -> dict:
        from llm_meta.data.tasks import load_task

        print(f"counting the rows of {name} (once: the counts are cached until its files change)", file=sys.stderr)
        quiet = logging.getLogger("llm_meta.data.tasks")  # the duplicates each task drops are in the table; -v logs them
        level = quiet.level
        quiet.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
        try:
            task = load_task(name)
        finally:
            quiet.setLevel(level)
        roles = "/".join(str(len(task.classes(r))) for r in ("meta_train", "meta_val", "meta_test")) \
            if task.class_roles else "-"
        return {"role": task.role, "classes": len(task.label_names), "roles": roles,
                "rows": {s: len(task.splits[s]) for s in ("train", "validation", "test") if s in task.splits},
                "dropped": "/".join(str(task.duplicates_dropped.get(s, 0)) for s in ("validation", "test")),
                "source": task.source}

    rows, missing = [], []
    for name, summary in task_summaries(summarise).items():
        if "missing" in summary:
            rows.append([name, "(not installed)", "", "", "", "", "", "", summary["source"]])
            missing.append(f"{name}: {summary['missing']}")
            continue
        sizes = summary["rows"]
        rows.append([name, summary["role"], str(summary["classes"]), summary["roles"], str(sizes.get("train", 0)),
                     str(sizes.get("validation", 0)), str(sizes.get("test", 0)), summary["dropped"], summary["source"]])
    header = ["task", "role", "classes", "train/val/test classes", "train", "dev", "test",
              "dev/test dups dropped", "source"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for line in missing:
        print(f"not installed: {line}")


def cmd_episode(args: argparse.Namespace) -> None:
    from llm_meta.data.episodes import EpisodeSampler
    from llm_meta.data.tasks import load_task

    columns_name_files(args, args.task)
    tasks = [load_task(t, args.text_column or "text", args.label_column or "label") for t in args.task]
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
    for flag in ("resume", "overwrite", "force"):  # the command's flags, over the config's keys
        if getattr(args, flag, False):
            setattr(cfg, flag, True)
    if getattr(args, "text_column", None) or getattr(args, "label_column", None):  # meta-train's file tasks
        from llm_meta.meta_config import TaskSource

        cfg.tasks = [_task_columns(t, args, TaskSource) for t in cfg.tasks]
    if getattr(args, "force", False) and not getattr(args, "resume", False):
        raise ValueError("--force accepts a changed config when resuming: use it with --resume")
    if "trust_remote_code" in args:
        module.main(cfg, trust_remote_code=args.trust_remote_code)
    else:
        module.main(cfg)


def _task_columns(entry, args: argparse.Namespace, source_cls):
    """A meta-training task entry (a name or a TaskSource) with the command's columns."""
    import dataclasses

    entry = source_cls(name=entry) if isinstance(entry, str) else entry
    if not entry.name:  # an SMLMT corpus or the NER task: their columns are set in their own sections
        return entry
    return dataclasses.replace(entry, text_column=args.text_column or entry.text_column,
                               label_column=args.label_column or entry.label_column)


RECIPES = ("meta_train", "benchmark", "sinusoid")


def cmd_config(args: argparse.Namespace) -> None:
    """Print the fully resolved configuration (`base:` chains merged, overrides applied, every
    default filled in) as YAML: exactly what the recipe would run with."""
    import dataclasses
    import importlib

    import yaml

    from llm_meta.config import ConfigError, load_config, read_yaml, resolve_config_path, to_dict

    recipe = args.recipe.replace("-", "_") if args.recipe else None
    if recipe is None:  # the recipe whose config has every top-level key of the file
        keys = set(read_yaml(resolve_config_path(args.config))) if args.config else set()
        fitting = [r for r in RECIPES
                   if keys <= {f.name for f in dataclasses.fields(importlib.import_module(f"recipes.{r}").Config)}]
        if not fitting:
            raise ConfigError(f"{args.config} fits no recipe's config ({', '.join(RECIPES)}); name one with --recipe")
        recipe = fitting[0]
    cfg = load_config(importlib.import_module(f"recipes.{recipe}").Config, args.config, args.overrides)
    print(f"# llm-meta {recipe.replace('_', '-')} --config {args.config or '(defaults)'} "
          f"{' '.join(args.overrides)}".rstrip())
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True, width=110, default_flow_style=None), end="")


def _kind_of(folder: str):
    """The task kind (`llm_meta.data.kinds`) of the task model in `folder`, by its format; a folder
    of no task model is left to the sequence kind's loader, whose error names what it is."""
    from llm_meta.data.kinds import SEQUENCE, kind_of_format
    from llm_meta.saving.checkpoint import read_metadata

    return kind_of_format(read_metadata(folder).get("format")) or SEQUENCE


def _load_model(args: argparse.Namespace):
    """The task model of --model: a FewShotTagger or a FewShotClassifier, by what its folder says."""
    import llm_meta

    cls = getattr(llm_meta, _kind_of(args.model).model_class)
    return cls.load(args.model, trust_remote_code=args.trust_remote_code)


def _output_file(args: argparse.Namespace, path: str | None, inputs: list) -> contextlib.AbstractContextManager:
    """The claim on an output file (checked and locked before the work: `llm_meta.io.outputs`), or
    nothing for stdout."""
    return claim(path, "file", args.overwrite, inputs) if path else contextlib.nullcontext()


SPREADSHEET_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula: one that starts with =, +, -, @, a tab
    or a carriage return gets a leading apostrophe (OWASP's advice against CSV injection). JSON
    lines outputs keep every string exactly as it is."""
    return "'" + cell if cell.startswith(SPREADSHEET_FORMULA) else cell


def cmd_predict(args: argparse.Namespace) -> None:
    """Label --input chunk by chunk as it is read (bounded memory whatever its length), writing the
    rows as they come: to stdout, or to a temporary file renamed to --output at the end."""
    import csv
    import json

    from llm_meta.io.atomic import atomic_file
    from llm_meta.progress import progress_bar

    if args.output == "-":  # as for --input: standard output
        args.output = None
    with _output_file(args, args.output, [args.input]), contextlib.ExitStack() as stack:
        from llm_meta.tagger import FewShotTagger
        from llm_meta.data.files import iter_inputs

        model = _load_model(args)
        tagger = isinstance(model, FewShotTagger)
        text_column = args.text_column or ("text" if tagger else model.columns[0])  # as adapted, unless told
        columns = ["text", "entities"] if tagger else ["text", "label", "probability"]
        out = sys.stdout
        if args.output:
            out = stack.enter_context(stack.enter_context(atomic_file(Path(args.output))).open(
                "w", encoding="utf-8", newline=""))
        writer = csv.writer(out) if args.output and args.output.lower().endswith(".csv") else None
        if writer:
            writer.writerow(columns)
        row, empty, first_empty = 0, 0, 0
        bar = stack.enter_context(progress_bar(desc="predict", unit="text", enabled=bool(args.output), delay=2.0))
        for texts in iter_inputs(args.input, text_column):
            keep = [i for i, t in enumerate(texts) if t is not None and t.strip()]
            if len(keep) < len(texts):
                empty += len(texts) - len(keep)
                first_empty = first_empty or row + next(i for i, t in enumerate(texts) if t is None or not t.strip()) + 1
                if args.empty == "error":
                    raise ValueError(f"an empty or whitespace-only text in {args.input} at line/row {first_empty} (a "
                                     f"missing text counts as empty; --empty skip labels it null)")
            found = model.predict([texts[i] for i in keep], first_row=row + 1) if tagger else \
                model.predict_scored([texts[i] for i in keep])
            answers = dict(zip(keep, found))
            for i, text in enumerate(texts):
                # An empty line has no entities; a missing text gets null, as a classifier's label does.
                values = [text, answers.get(i, [] if text is not None else None)] if tagger else \
                    [text, *answers.get(i, (None, None))]
                if writer is None:
                    out.write(json.dumps(dict(zip(columns, values)), ensure_ascii=False) + "\n")
                elif tagger:
                    writer.writerow([spreadsheet_safe(text or ""),
                                     "" if values[1] is None else json.dumps(values[1], ensure_ascii=False)])
                else:
                    writer.writerow([spreadsheet_safe(text or ""), spreadsheet_safe(values[1] or ""),
                                     "" if values[2] is None else f"{values[2]:.4f}"])
            row += len(texts)
            bar.update(len(texts))
    if empty:
        logging.getLogger("llm_meta").warning(
            "skipped %d empty or whitespace-only text(s) in %s (first at line/row %d; a missing text counts as empty): "
            "%s", empty, args.input, first_empty, "they have no entities (a missing text: null)" if tagger else
            "their label is null")
    if args.output:
        print(f"labelled {row} rows of {args.input} -> {args.output}", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Score a task model on a labelled file or split; the report goes to --output (checked before
    anything is loaded) or, by default, to eval-<task>[-<split>].json (checked once the task is read).
    The file's columns are those the model was adapted with unless --text-column/--label-column."""
    with _output_file(args, args.output, [args.task]):
        columns_name_files(args, [args.task])
        evaluate = {"sequence": _evaluate_classifier, "token": _evaluate_tagger}[_kind_of(args.model).name]
    evaluate(args)


def _evaluate_tagger(args: argparse.Namespace) -> None:
    if args.text_column or args.label_column:
        raise ValueError("this model is an NER tagger: it reads a CoNLL file or tokens/ner_tags columns, "
                         "not --text-column/--label-column")
    # A task name may be hf:org/name or a path: the default file name keeps only its safe characters.
    name = re.sub(r"[^\w.-]+", "_", Path(args.task).stem).strip("_")
    output = args.output or f"eval-{name}-ner.json"
    with _output_file(args, output, [args.task]):
        report = _load_model(args).evaluate(args.task)
        _write_json(Path(output), report)
    print(f"{args.task} [{report['sentences']} sentences]: entity precision {100 * report['precision']:.2f}, "
          f"recall {100 * report['recall']:.2f}, F1 {100 * report['f1']:.2f}  (written to {output})")


def _evaluate_classifier(args: argparse.Namespace) -> None:
    with _output_file(args, args.output, [args.task]):
        from llm_meta.data.episodes import WHOLE_FILE, scored_split
        from llm_meta.data.tasks import SPLIT_ALIASES, load_task
        from llm_meta.saving.checkpoint import read_metadata

        adapted = read_metadata(args.model).get("adapt_config") or {}
        task = load_task(args.task, args.text_column or adapted.get("text_column") or "text",
                         args.label_column or adapted.get("label_column") or "label",
                         min_classes=1)  # a test set may hold one class
        if args.split and len(task.splits) == 1 and SPLIT_ALIASES.get(args.split, args.split) not in task.splits:
            raise ValueError(f"{args.task} is one file, scored whole: leave out --split")
        split = args.split or scored_split(task)
        shown = WHOLE_FILE if len(task.splits) == 1 else split
        name = re.sub(r"[^\w.-]+", "_", task.name).strip("_")
        output = args.output or (f"eval-{name}.json" if shown == WHOLE_FILE else f"eval-{name}-{split}.json")
        with _output_file(args, output, [args.task]):
            report = _load_model(args).evaluate(task, split=split, progress=True)
            _write_json(Path(output), report)
    what = f"{args.task} [{WHOLE_FILE}" if shown == WHOLE_FILE else f"{task.name} [{split}"
    print(f"{what}, {report['examples']} examples]: accuracy {100 * report['accuracy']:.2f}, "
          f"macro-F1 {100 * report['macro_f1']:.2f}  (written to {output})")
    if report["most_confused"]:
        print("most confused (true -> predicted: count):")
        for row in report["most_confused"][:5]:
            print(f"  {row['true']} -> {row['predicted']}: {row['count']}")


def _write_json(path: Path, data: object) -> None:
    import json

    from llm_meta.io.atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")


def columns_name_files(args: argparse.Namespace, tasks: list) -> None:
    """Refuse --text-column/--label-column for a bundled task: it has its own columns."""
    from llm_meta.data.registry import load_registry

    bundled = [t for t in tasks if t in load_registry()]
    if bundled and (getattr(args, "text_column", None) or getattr(args, "label_column", None)):
        raise ValueError(f"'{bundled[0]}' is a bundled task with its own columns: --text-column and --label-column "
                         f"name the columns of your own file")


def with_columns(cfg, args: argparse.Namespace, recorded: dict | None = None):
    """`cfg` (an AdaptConfig or ContinueConfig) with the command's --text-column/--label-column; the
    key=value form (text_column=NAME) is accepted too, and the two must agree. Where neither names
    a column and the config leaves it at its default, `recorded` (a task model's adapt_config) gives it."""
    for key in ("text_column", "label_column"):
        flag = getattr(args, key, None)
        given = [o.split("=", 1)[1] for o in getattr(args, "overrides", []) if o.startswith(f"{key}=")]
        if flag is not None and given and given[-1] != flag:
            raise ValueError(f"--{key.replace('_', '-')} {flag} and {key}={given[-1]} disagree: give one")
        if flag is not None:
            setattr(cfg, key, flag)
        elif not given and recorded and recorded.get(key) and getattr(cfg, key) == getattr(type(cfg)(), key):
            setattr(cfg, key, recorded[key])
    return cfg
