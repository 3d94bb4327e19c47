"""`llm-meta` command: thin argument parsing in front of the library and the recipes' main(cfg).

Longer than the house's ~300 lines on purpose: one short function per command and the whole
parser in one place, so `llm-meta --help` and this file read the same; no logic lives here.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import warnings
from pathlib import Path

# Only light modules at the top: an output refused, or a bad flag, answers before torch and
# transformers are imported (seconds); each command imports what it needs after its checks.
from llm_meta.errors import CheckpointError, ColumnError, ConfigError, ModelLoadError, OutputError, TaskError
from llm_meta.io.outputs import claim


def _quiet_libraries() -> None:
    """Keep the user's terminal for our own progress bars and messages: the libraries' own
    verbosity and bars are switched off through their environment variables, read when they are
    first imported (a variable the user set is kept)."""
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not ours
    for key, value in (("DATASETS_VERBOSITY", "error"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                       ("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(key, value)
    if "datasets" in sys.modules:  # already imported (llm-meta called from Python): tell them directly
        sys.modules["datasets"].disable_progress_bars()
        sys.modules["datasets"].logging.set_verbosity_error()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
        sys.modules["transformers"].utils.logging.set_verbosity_error()


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

    _columns_name_files(args, args.task)
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

    cfg = _with_columns(load_config(AdaptConfig, args.config, args.overrides), args)
    if args.init is not None:  # hypernet:DIR — the start is the adapter a hypernetwork writes for this task
        if args.adapter is not None or not args.init.startswith("hypernet:"):
            raise ValueError("--init takes hypernet:DIR (a hypernetwork from `llm-meta meta-train "
                             "algorithm=hypernet`), instead of --adapter")
        args.adapter = _hypernet_folder(args.init[len("hypernet:"):])
    if args.adapter is not None:
        cfg.adapter = None if args.adapter.lower() == "none" else args.adapter
    cfg.task, cfg.support = args.task or cfg.task, args.support or cfg.support
    _columns_name_files(args, [cfg.task])
    cfg.shots = args.shots if args.shots is not None else cfg.shots
    clf = adapt(cfg=cfg, trust_remote_code=args.trust_remote_code, progress=True)
    clf.save(args.output, overwrite=args.overwrite)
    print(f"adapted {clf.metadata['start']} to '{clf.metadata['task']}': {len(clf.labels)} labels, "
          f"{clf.metadata['support_size']} support examples, {clf.metadata['adapt_seconds']} s -> {args.output}")


def _columns_name_files(args: argparse.Namespace, tasks: list) -> None:
    """Refuse --text-column/--label-column for a bundled task: it has its own columns."""
    from llm_meta.data.registry import load_registry

    bundled = [t for t in tasks if t in load_registry()]
    if bundled and (getattr(args, "text_column", None) or getattr(args, "label_column", None)):
        raise ValueError(f"'{bundled[0]}' is a bundled task with its own columns: --text-column and --label-column "
                         f"name the columns of your own file")


def _with_columns(cfg, args: argparse.Namespace, recorded: dict | None = None):
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

        cfg = _with_columns(AdaptConfig(support=args.support, adapter=_hypernet_folder(args.hypernet),
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
    cfg = _with_columns(load_config(ContinueConfig, args.config, args.overrides), args, recorded)
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
        _columns_name_files(args, [args.task])
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


def _column_flags(p: argparse.ArgumentParser, label: bool = True,
                  default: str = "; for a task model, the column it was adapted with") -> None:
    p.add_argument("--text-column", default=None, metavar="NAME", help=f"the file's text column (default: text"
                   f"{default})")
    if label:
        p.add_argument("--label-column", default=None, metavar="NAME", help=f"the file's label column (default: "
                       f"label{default})")


def _output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output: a folder only if "
                   "llm-meta wrote it, a file never if it is one of the command's inputs")
    _trust_flag(p)


def _trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-remote-code", action="store_true", help="let the base model's repository run its own "
                   "Python code (read it first); never taken from a config or a model folder")
    _threads_flag(p)


def _threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", default=None, metavar="N", help="CPU threads to compute with (default: auto, the "
                   "cores no other process is using at start; or set LLM_META_THREADS)")


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
    _column_flags(p)
    p.set_defaults(func=cmd_episode)

    p = sub.add_parser("meta-train", help="meta-train a LoRA adapter (FOMAML, MAML, Meta-SGD, Reptile, ProtoNet) or a LoRA hypernetwork over episodes")
    p.add_argument("--config", default=None, help="YAML config (recipes/configs/meta_train.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint "
                   "(refused if the checkpoint was trained with another config)")
    p.add_argument("--force", action="store_true", help="with --resume: continue even though the config differs "
                   "from the checkpoint's (the differences are written to log.jsonl)")
    p.add_argument("--overwrite", action="store_true", help="start again in an output_dir that holds a run "
                   "(its checkpoints, adapter and log are removed first)")
    _column_flags(p, default="; for every file in tasks")
    _trust_flag(p)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_recipe, recipe="meta_train")

    p = sub.add_parser("benchmark", help="meta-learned starts vs transfer fine-tuning and baselines on held-out tasks")
    p.add_argument("--config", default=None, help="YAML config (recipes/configs/benchmark_quick.yaml)")
    p.add_argument("--overwrite", action="store_true", help="clear a benchmark output_dir first (by default its "
                   "trained starts and cached scores are reused)")
    _trust_flag(p)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_recipe, recipe="benchmark")

    p = sub.add_parser("sinusoid", help="the sinusoid regression check of the algorithm core (MAML, FOMAML, "
                       "Meta-SGD, Reptile vs joint pretraining), a few minutes on CPU")
    p.add_argument("--config", default=None, help="optional YAML (defaults: recipes/sinusoid.py Config)")
    _threads_flag(p)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_recipe, recipe="sinusoid")

    p = sub.add_parser("config", help="print the fully resolved configuration of a recipe config file "
                       "(base: chains merged, overrides applied, defaults filled in)")
    p.add_argument("--config", default=None, help="YAML config, e.g. recipes/configs/reptile.yaml")
    p.add_argument("--recipe", default=None, choices=["meta-train", "benchmark", "sinusoid"],
                   help="which recipe reads it (default: the one whose keys the file uses)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("adapt", help="adapt a meta-trained adapter (or none) to a new task from K examples per class")
    p.add_argument("--adapter", default=None, help="llm_meta adapter folder, or 'none' for the untrained start")
    p.add_argument("--init", default=None, metavar="hypernet:DIR",
                   help="start from the adapter a trained hypernetwork writes for this task (then adapt)")
    p.add_argument("--task", default=None, help="registry name, local file/folder, or hf:<id>: K per class drawn from it")
    p.add_argument("--support", default=None, help="a small labelled file used whole as the support set")
    p.add_argument("--shots", type=int, default=None, help="K examples per class (default 5)")
    p.add_argument("--output", required=True, help="folder for the adapted task model")
    p.add_argument("--continue", dest="continue_from", default=None, metavar="MODEL_DIR",
                   help="online: add the --support examples (and --new-class classes) to this adapted task model")
    p.add_argument("--new-class", action="append", default=[], metavar="NAME",
                   help="with --continue: a label of --support that is a new class (repeat, or comma-separated; a "
                        "label that holds a comma is taken whole)")
    p.add_argument("--ner", action="store_true", help="an NER task: --task is wnut16, a CoNLL file or a "
                   "tokens/ner_tags dataset; --shots counts mentions per entity type")
    p.add_argument("--config", default=None, help="optional YAML AdaptConfig")
    _column_flags(p)
    _output_flags(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. inner.steps=20 seed=1 text_column=utterance "
                   "(with --continue: steps=5 lr=... text_column=...)")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("generate", help="write a task model from a support set with a trained hypernetwork, "
                       "in one forward pass (no gradient steps)")
    p.add_argument("--hypernet", required=True, help="folder from `llm-meta meta-train` with algorithm=hypernet")
    p.add_argument("--support", required=True, help="labelled file (.csv/.jsonl/...) used whole as the support set")
    p.add_argument("--output", "--out", required=True, help="folder for the task model (a standard PEFT adapter + head)")
    _column_flags(p)
    _output_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("predict", help="label texts with an adapted task model")
    p.add_argument("--model", required=True, help="task model folder written by `llm-meta adapt`")
    p.add_argument("--input", default="-", help=".txt (one text per line), .csv/.tsv/.jsonl, or - for stdin")
    p.add_argument("--output", default=None, help=".jsonl or .csv (default, or -: JSON lines on stdout)")
    _column_flags(p, label=False)
    p.add_argument("--empty", choices=["skip", "error"], default="skip", help="what to do with empty texts")
    _output_flags(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="accuracy and macro-F1 of a task model on a labelled split")
    p.add_argument("--model", required=True)
    p.add_argument("--task", required=True, help="registry name, local file/folder, or hf:<id>")
    p.add_argument("--split", default=None, help="split to score (default: test; a single file is scored whole)")
    p.add_argument("--output", default=None, help="JSON report path (default eval-<task>[-<split>].json)")
    _column_flags(p)
    _output_flags(p)
    p.set_defaults(func=cmd_evaluate)
    for name, command in sub.choices.items():
        # -v after the command too (SUPPRESS: an absent flag leaves the one before the command alone);
        # each command reports its own usage errors.
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="debug logging and full tracebacks")
        command.set_defaults(command_parser=command)
    return parser


OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # key.sub=value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as `main` reads it (the docs' tests parse every documented command with it).
    Exits with argparse's usage message (status 2) on an unknown flag or a missing argument."""
    args, extra = build_parser().parse_known_args(argv)
    # argparse takes one run of key=value words; more of them after a flag are overrides too.
    if extra and "overrides" in args and all(OVERRIDE.match(word) for word in extra):
        args.overrides, extra = [*args.overrides, *extra], []
    if extra:
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    try:
        if "threads" in args:  # a command that computes: chosen before torch is imported
            from llm_meta.threads import configure_threads

            configure_threads(args.threads)
        args.func(args)
    except BrokenPipeError:  # `llm-meta predict ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        sys.exit(0)
    except (ConfigError, TaskError, ModelLoadError, CheckpointError, OutputError, ValueError, OSError,
            FloatingPointError) as err:
        if args.verbose or os.environ.get("LLM_META_DEBUG"):
            raise
        message = err.cli_message() if isinstance(err, ColumnError) else err  # the hint in this command's syntax
        print(f"llm-meta {args.command}: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
