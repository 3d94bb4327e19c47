"""`llm-meta` command: thin argument parsing in front of the library and the recipes' main(cfg).

The whole parser is in this one place, so `llm-meta --help` and this file read the same; the
commands are `llm_meta.commands` and `llm_meta.adapt_commands`; no logic lives here.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings

# Only light modules at the top: an output refused, or a bad flag, answers before torch and
# transformers are imported (seconds); each command imports what it needs after its checks.
from llm_meta.adapt_commands import cmd_adapt, cmd_generate, cmd_starts
from llm_meta.commands import cmd_config, cmd_episode, cmd_evaluate, cmd_predict, cmd_recipe, cmd_tasks
from llm_meta.errors import CheckpointError, ColumnError, ConfigError, ModelLoadError, OutputError, TaskError


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


def _recipe_parser(sub: argparse._SubParsersAction, name: str, help: str, config_help: str) -> argparse.ArgumentParser:
    """A recipe's command, with its --config (the recipe's flags and `_overrides` follow)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--config", default=None, help=config_help)
    return p


def _overrides(p: argparse.ArgumentParser, recipe: str) -> None:
    """A recipe command's key.sub=value overrides, and the recipe it runs."""
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_recipe, recipe=recipe)


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

    p = _recipe_parser(sub, "meta-train", "meta-train a LoRA adapter (FOMAML, MAML, Meta-SGD, Reptile, ProtoNet) or a "
                       "LoRA hypernetwork over episodes", "YAML config (recipes/configs/meta_train.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint "
                   "(refused if the checkpoint was trained with another config)")
    p.add_argument("--force", action="store_true", help="with --resume: continue even though the config differs "
                   "from the checkpoint's (the differences are written to log.jsonl)")
    p.add_argument("--overwrite", action="store_true", help="start again in an output_dir that holds a run "
                   "(its checkpoints, adapter and log are removed first)")
    _column_flags(p, default="; for every file in tasks")
    _trust_flag(p)
    _overrides(p, recipe="meta_train")

    p = _recipe_parser(sub, "benchmark", "meta-learned starts vs transfer fine-tuning and baselines on held-out tasks",
                       "YAML config (recipes/configs/benchmark_quick.yaml)")
    p.add_argument("--overwrite", action="store_true", help="clear a benchmark output_dir first (by default its "
                   "trained starts and cached scores are reused)")
    _trust_flag(p)
    _overrides(p, recipe="benchmark")

    p = _recipe_parser(sub, "sinusoid", "the sinusoid regression check of the algorithm core (MAML, FOMAML, "
                       "Meta-SGD, Reptile vs joint pretraining), a few minutes on CPU",
                       "optional YAML (defaults: recipes/sinusoid.py Config)")
    _threads_flag(p)
    _overrides(p, recipe="sinusoid")

    p = sub.add_parser("config", help="print the fully resolved configuration of a recipe config file "
                       "(base: chains merged, overrides applied, defaults filled in)")
    p.add_argument("--config", default=None, help="YAML config, e.g. recipes/configs/reptile.yaml")
    p.add_argument("--recipe", default=None, choices=["meta-train", "benchmark", "sinusoid"],
                   help="which recipe reads it (default: the one whose keys the file uses)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("starts", help="the meta-learned starts built on this machine: list them, or build one by "
                       "its recipe into the cache")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, about in (("list", "what is built: body, family, training tasks, validation score, size"),
                          ("build", "meta-train one start by its recipe (recipes/configs/starts.yaml) into the cache")):
        q = actions.add_parser(action, help=about)
        q.add_argument("--recipes", default="recipes/configs/starts.yaml", help="the start recipes (YAML)")
        q.set_defaults(func=cmd_starts, command_parser=q)
    q.add_argument("name", help="a start recipe's name (llm-meta starts list shows them)")
    q.add_argument("--overwrite", action="store_true", help="build again over a start built before")
    _trust_flag(q)
    q.add_argument("overrides", nargs="*", metavar="key.sub=value")

    p = sub.add_parser("adapt", help="adapt a meta-trained adapter (or none) to a new task from K examples per class")
    p.add_argument("--adapter", default=None, help="llm_meta adapter folder; 'auto': the untrained start or a "
                   "start built on this machine (llm-meta starts; with --ner, the NER starts), chosen on the support set; "
                   "'none': untrained")
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
