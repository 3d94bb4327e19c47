"""The everyday job: adapt a (meta-learned or untrained) start to a new task from K examples per
class, then predict and evaluate. The same `adapt` inner loop as meta-training does the work.

    clf = FewShotClassifier.from_pretrained("all-MiniLM-L6-v2").fit(texts, labels)  # every example used
    clf = llm_meta.adapt(task="my_intents.csv", shots=5, adapter="runs/meta_train/adapter")  # K per class drawn
    clf.save("my_model")
    FewShotClassifier.load("my_model").predict(["where is my card?"])  # -> ["card_arrival"]

A saved task model is the folder of `llm_meta.task_model` (format `llm_meta.classifier/1`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch

from llm_meta.config import from_dict, to_dict
from llm_meta.data.episodes import WHOLE_FILE, Examples, scored_split, support_set
from llm_meta.data.kinds import SEQUENCE
from llm_meta.data.tasks import (IN_MEMORY, SPLIT_ALIASES, Task, TaskError, as_task, load_task, mapped_columns,
                                 task_fingerprint)
from llm_meta.eval.metrics import classification_metrics
from llm_meta.meta.adaptation import adapt as adapt_params
from llm_meta.meta.core import InnerConfig
from llm_meta.meta.kinds import predict_logits
from llm_meta.meta.training import environment
from llm_meta.modeling.body import Body, ModelConfig, Params, lora_params
from llm_meta.modeling.forward import warn_truncated
from llm_meta.modeling.loading import load_body, recorded_model_config, start_model_config
from llm_meta.saving.checkpoint import load_adapter_params, read_start
from llm_meta.start_choice import AUTO, adapter_candidates, built_candidates, choose
from llm_meta.task_model import (SUPPORT_FILE, PretrainedMixin, load_task_model, read_support, save_task_model,
                                 write_support)


log = logging.getLogger(__name__)


CLASSIFIER_FORMAT = SEQUENCE.folder_format
SELECT_START = ("auto", "names", "support", "off")


def default_adapt_config() -> InnerConfig:
    """Adaptation defaults: 15 Adam steps at lr 1e-3 on batches of 64, prototype head plus each
    label name twice as an extra example (the best measured on BANKING77 by the first prototype), each
    batch run as length-sorted chunks of 8 texts: the same gradient, but a batch of short intents
    with one long text in it was ~75% padding (2.1-2.6x faster adaptation, experiments/BENCHMARKS.md "Adaptation
    latency"). Sequence tasks only: NER configs set chunk 0 (their loss is a mean over words)."""
    return InnerConfig(steps=15, lr=1e-3, batch_size=64, head_init="proto", label_examples=2, chunk=8)


@dataclass
class AdaptConfig:
    """Config of `llm-meta adapt` (and of `llm_meta.adapt`)."""

    task: str | None = None  # registry name, local file/folder, or hf:<id>: K examples per class drawn from it
    support: str | None = None  # or: a small labelled file used whole as the support set
    # an llm_meta adapter folder (meta-trained start); None: untrained LoRA; "auto": the untrained start
    # or a start built on this machine (`llm-meta starts build`), chosen on the support set (start_choice)
    adapter: str | None = None
    shots: int = 5
    split: str = "train"
    seed: int = 0
    text_column: str = "text"
    label_column: str = "label"
    # When adapter is None (else the adapter's): LoRA on every layer. The quality suite (K = 8, 5
    # draws; docs/quality-suite.md) scored LoRA on the top 2 layers lower on every task: 0.5-3.4
    # accuracy points on the 11 classification rows at 64 tokens or the real length, 4.9 on drug
    # reviews at 256 tokens, 6.2 entity F1 on NER; for 1.6-3.8x less time, so the faster placement
    # is an option (model.lora_layers=2), not the default.
    model: ModelConfig = field(default_factory=ModelConfig)
    # ...and `model.*` keys given in a config or on the command line go on top of that default
    # (config.from_dict); from Python, ModelConfig(...) is taken as written.
    inner: InnerConfig = field(default_factory=default_adapt_config)
    # With an adapter or "auto" (LoRA-only adapters; Meta-SGD rates and hypernetworks keep their own
    # procedure), the rule of llm_meta.start_choice:
    # auto: a task whose class names are all among those a start was meta-trained on is of its
    #   family (adaptation.in_family): that start is used as its algorithm trained it (a ProtoNet
    #   start: no steps, adaptation.own_adaptation); any other task gets `support`'s choice, because
    #   a start meta-trained on another task family can be worse than none;
    # names: as auto, and class names matched to a start's by meaning count as its family's
    #   (start_choice.match_names: liked/disliked to positive/negative), the match logged and recorded;
    # support: choose the start on the support set itself, among the untrained start and the adapter
    #   (and its weight change halved), or every built start with "auto" (adaptation.leave_one_out_fit),
    #   then adapt it with `inner`;
    # off: use the adapter as given, with `inner`.
    select_start: Literal["auto", "names", "support", "off"] = "auto"


@dataclass
class FewShotClassifier(PretrainedMixin):
    """An adapted model: body with adapted LoRA, a head, and its label names; or, from
    `from_pretrained` of a body or a meta-trained adapter, a start (body None) that `fit` adapts."""

    body: Body
    params: Params  # LoRA + head tensors
    labels: list[str]
    scale: float
    metadata: dict[str, Any] = field(default_factory=dict)
    support: Examples | None = None  # what it was adapted on (labels index `labels`); replayed when continuing
    fit_config: AdaptConfig | None = None  # a start's adaptation, until `fit` (from_pretrained of a body or adapter)
    trust_remote_code: bool = False  # the caller's choice, kept for `fit`
    config_class: ClassVar[type] = AdaptConfig

    # ---- use ----
    @torch.no_grad()
    def predict_proba(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        """Class probabilities [len(texts), n_labels]; columns follow `self.labels`.

        Raises:
            ValueError: a start that has not been fitted yet (`from_pretrained` of a body or adapter).
        """
        if self.body is None:
            raise ValueError("this classifier is a start, not yet adapted: call fit(texts, labels) first")
        if isinstance(texts, str):  # a string is a sequence too: it would be labelled character by character
            raise TypeError("predict takes a list of texts, not one string: predict([text])")
        if not texts:
            return torch.empty(0, len(self.labels))
        desc = f"predict ({len(texts)} texts)" if progress else None
        # cache=False: texts to label are seen once; keeping their frozen-layer states would only grow memory.
        # The truncation warning comes after the pass, counted from its own tokenisation.
        return predict_logits(self.body, self.params, texts, self.scale, batch_size, desc, cache=False,
                              what="texts to label").softmax(-1).cpu()

    def predict(self, texts: list[str], progress: bool = False) -> list[str]:
        """The most probable label of each text."""
        return [label for label, _ in self.predict_scored(texts, progress)]

    def predict_scored(self, texts: list[str], progress: bool = False) -> list[tuple[str, float]]:
        """(most probable label, its probability) for each text."""
        probs = self.predict_proba(texts, progress=progress)
        best = probs.argmax(1)
        return [(self.labels[i], float(probs[n, i])) for n, i in enumerate(best.tolist())]

    # ---- fit: a start adapted to the user's examples (from_pretrained: PretrainedMixin) ----
    def fit(self, texts: Any, labels: Sequence[Any] | None = None, text_column: str = "text",
            label_column: str = "label", progress: bool = False, column_mapping: dict[str, str] | None = None
            ) -> "FewShotClassifier":
        """Adapt to these examples, every one of them in the support set (a few per class), and
        return self, ready to predict. `texts`: a list of texts with `labels` (class names), or a
        `datasets.Dataset`, a pandas DataFrame or a file with `text_column`/`label_column`
        (`llm_meta.data.tasks.as_task`), or SetFit's `column_mapping={"utterance": "text", "intent": "label"}`. The start is the one `from_pretrained` was given; on an adapted
        model, the start it was adapted from, recorded in its metadata (to add examples to what it
        knows, use `llm_meta.continue_adapt`). `adapt` does the work (`select_start` and all).

        Raises:
            TaskError, ColumnError: as for a support file (empty labels, one class, a missing column).
        """
        cfg = self.fit_config
        if cfg is None:  # an adapted model: its own start and adaptation, as recorded
            cfg = from_dict(AdaptConfig, self.metadata.get("adapt_config", {}))
        columns = mapped_columns(column_mapping, {"text": text_column, "label": label_column})
        text_column, label_column = columns["text"], columns["label"]
        data = as_task(texts, labels, text_column, label_column)
        fitted = adapt(support=data, cfg=dataclasses.replace(cfg, task=None, support=None), text_column=text_column,
                       label_column=label_column, trust_remote_code=self.trust_remote_code, progress=progress)
        self.body, self.params, self.labels, self.scale = fitted.body, fitted.params, fitted.labels, fitted.scale
        self.metadata, self.support, self.fit_config = fitted.metadata, fitted.support, cfg
        return self

    @property
    def columns(self) -> tuple[str, str]:
        """(text column, label column) of the file it was adapted on: what `evaluate` and
        `llm-meta predict` read from a file unless told otherwise."""
        cfg = self.metadata.get("adapt_config") or {}
        return cfg.get("text_column") or "text", cfg.get("label_column") or "label"

    def evaluate(self, task: Any, labels: Sequence[Any] | None = None, split: str | None = None,
                 progress: bool = False, text_column: str | None = None, label_column: str | None = None,
                 column_mapping: dict[str, str] | None = None) -> dict[str, Any]:
        """Accuracy and macro-F1 (through `evaluate`) on labelled texts, plus the most confused pairs.

        `task`: what `fit` reads (texts with `labels`, a Dataset, a DataFrame, a file), a Task, or a
        registry name or folder; files and frames are read with `text_column`/`label_column` or
        `column_mapping` (default: the columns this model was adapted with, `columns`). `split`:
        default "test", or the whole file when `task` is one file (its only split) or examples given
        in memory; the report's "split" says which.

        Raises:
            TaskError: a missing split or column, or labels this model does not know.
        """
        columns = mapped_columns(column_mapping, {"text": text_column or self.columns[0],
                                                  "label": label_column or self.columns[1]})
        task = as_task(task, labels, columns["text"], columns["label"], min_classes=1)  # a test set may hold one class
        split = split or scored_split(task)
        if len(task.splits) == 1 and split not in task.splits and SPLIT_ALIASES.get(split, split) not in task.splits:
            raise TaskError(f"{task.source} is one file, scored whole: leave out the split ({split!r})")
        ds = task.split(split)
        shown = task.source if len(task.splits) == 1 else f"task '{task.name}' ({split})"
        unknown = sorted(set(ds["label"]) - set(self.labels))
        if unknown:
            raise TaskError(f"{shown} has {len(unknown)} label(s) this model does not know: "
                            f"{', '.join(unknown[:20])}{' ...' if len(unknown) > 20 else ''} "
                            f"(the model knows: {', '.join(self.labels[:20])}{' ...' if len(self.labels) > 20 else ''})")
        index = {name: i for i, name in enumerate(self.labels)}
        refs = [index[y] for y in ds["label"]]
        preds = self.predict_proba(ds["text"], progress=progress).argmax(1).tolist()
        confused = Counter((self.labels[r], self.labels[p]) for r, p in zip(refs, preds) if r != p)
        return {
            "task": task.name, "source": task.source,
            "split": ("all given" if task.name == IN_MEMORY else WHOLE_FILE) if len(task.splits) == 1 else split,
            "examples": len(refs),
            **classification_metrics(preds, refs),
            "most_confused": [{"true": t, "predicted": p, "count": c} for (t, p), c in confused.most_common(10)],
        }

    # ---- disk ----
    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the task model folder atomically (PEFT adapter + head + labels + metadata).

        Raises:
            OutputError: `folder` exists and was not written by llm_meta, or was and `overwrite`
                is False; or another process is writing it (`llm_meta.io.outputs`).
        """
        if self.body is None:
            raise ValueError("this classifier is a start, not yet adapted: call fit(texts, labels) before saving it")
        extra = {} if self.support is None else {SUPPORT_FILE: lambda path: write_support(path, self.support, self.labels)}
        return save_task_model(self.body, self.params, self.labels, self.scale, self.metadata, CLASSIFIER_FORMAT,
                               folder, extra, overwrite)

    @classmethod
    def load(cls, folder: str | Path, trust_remote_code: bool = False) -> "FewShotClassifier":
        """Load a task model folder written by `save` (checksums, file list and tensors verified).
        `trust_remote_code`: the caller's choice only (the folder's metadata is never asked)."""
        body, params, labels, scale, meta, folder = load_task_model(
            folder, CLASSIFIER_FORMAT, "a task model (make one with `llm-meta adapt`)", trust_remote_code)
        clf = cls(body, params, labels, scale, meta)
        if (folder / SUPPORT_FILE).is_file():
            clf.support = read_support(folder / SUPPORT_FILE, clf.labels)
        return clf


def adapt(task: str | Task | None = None, shots: int | None = None, adapter: str | Path | None = None,
          support: str | Task | None = None, cfg: AdaptConfig | None = None, trust_remote_code: bool = False,
          text_column: str | None = None, label_column: str | None = None, progress: bool = False
          ) -> FewShotClassifier:
    """Adapt a start (an llm_meta adapter folder, or the untrained LoRA) to a new task.

    Give `task` (K = `shots` examples per class are drawn from its train split) or `support`
    (a labelled file, or a Task such as `llm_meta.data.tasks.as_task(texts, labels)`, used whole). Arguments given here override the same fields of `cfg`
    (see `AdaptConfig`); `cfg` itself is not modified. `trust_remote_code`: let the base model's
    repo run its own code (the caller's choice only; no config or adapter folder can set it).
    `text_column`/`label_column`: the file's columns (recorded in the model: `FewShotClassifier.columns`).
    `progress`: a bar over the adaptation's steps (`llm-meta adapt` shows it).
    Raises ValueError for both or neither of a task and a support file, an unknown `select_start`, or
    `select_start=off` with `adapter="auto"`.
    """
    cfg = dataclasses.replace(cfg or AdaptConfig())
    cfg.text_column, cfg.label_column = text_column or cfg.text_column, label_column or cfg.label_column
    if task is not None:
        cfg.task = task if isinstance(task, str) else task.name
    if shots is not None:
        cfg.shots = shots
    if adapter is not None:
        cfg.adapter = str(adapter)
    given = support if isinstance(support, Task) else None  # in-memory examples: recorded by their source
    if support is not None:
        cfg.support = support.source if given else support
    if (cfg.task is None) == (cfg.support is None):
        raise ValueError("give either a task (K examples per class are drawn from it) or a support file, not both")
    if cfg.select_start not in SELECT_START:  # a config file or the command line checks it already
        raise ValueError(f"select_start must be {', '.join(SELECT_START[:-1])} or off, not {cfg.select_start!r}")
    if cfg.adapter == AUTO and cfg.select_start == "off":
        raise ValueError("adapter=auto chooses a start on the support set: select_start=off needs a named adapter")
    start_time = time.perf_counter()
    timings: dict[str, float] = {}  # seconds per phase, in llm_meta.json (benchmarks/adapt_speed.py reads them)

    last = start_time

    def lap(phase: str) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[phase], last = round(now - last, 3), now

    if cfg.adapter not in (None, AUTO):
        meta = read_start(cfg.adapter)
        cfg.model = start_model_config(recorded_model_config(meta["config"]["model"]), cfg.model,
                                       AdaptConfig().model, cfg.adapter)
        trained_steps = meta["config"].get("inner", {}).get("steps")
        if meta.get("algorithm") == "metasgd" and trained_steps != cfg.inner.steps:
            log.warning("this Meta-SGD adapter's learned rates were meta-trained for %s inner steps; adapting with "
                        "%d (set inner.steps=%s to match; more steps with learned rates can diverge)",
                        trained_steps, cfg.inner.steps, trained_steps)
    if cfg.adapter == AUTO:  # the untrained start, then every start built on this machine for this body
        candidates = built_candidates(cfg.model, AdaptConfig().model, cfg.seed, trust_remote_code)
        body, params = candidates[0].body, candidates[0].params
    else:
        body = load_body(cfg.model, seed=cfg.seed, trust_remote_code=trust_remote_code)
        params = lora_params(body) if cfg.adapter is None else load_adapter_params(body, cfg.adapter)
        candidates = ([] if cfg.adapter is None or cfg.select_start == "off" or set(params) != set(body.lora_names)
                      else adapter_candidates(body, params, cfg.model, cfg.adapter, meta))
    lap("model_load")
    if cfg.support is not None:
        data = given or load_task(cfg.support, cfg.text_column, cfg.label_column)
        labels = data.label_names
        index = {name: i for i, name in enumerate(labels)}
        texts, given_labels = data.rows("train")
        examples = Examples(texts, [index[y] for y in given_labels])
    else:
        data = task if isinstance(task, Task) else load_task(cfg.task, cfg.text_column, cfg.label_column)
        examples, labels = support_set(data, cfg.shots, cfg.split, cfg.seed)
    lap("data")
    chosen, selection, inner, names, model = cfg.adapter or "untrained", None, cfg.inner, labels, cfg.model
    if candidates:  # Meta-SGD rates and hypernetworks keep their own procedure (no candidates)
        choice = choose(candidates, examples, labels, cfg.inner, cfg.select_start)
        cand, inner, names, selection = choice.candidate, choice.inner, choice.label_names, choice.record
        body, params, model = cand.body, cand.params, cand.model
        chosen = (cand.adapter or cand.name if cfg.adapter == AUTO else
                  {"untrained": "untrained", "adapter": cfg.adapter}.get(cand.name, f"{cand.name} of {cfg.adapter}"))
        if selection:
            lap("start_selection")
    warn_truncated(body, examples.texts, "support texts")  # by the chosen start's max_length
    fast = adapt_params(body, params, examples, len(labels), inner, seed=cfg.seed, label_names=names,
                        progress=progress)
    lap("adaptation")  # support encoding for the prototype head, then the inner-loop steps
    meta = {
        "base_model": model.name, "model": to_dict(model), "start": chosen, "start_selection": selection,
        "task": data.name, "task_hash": task_fingerprint(data), "support_size": len(examples),
        "adapt_config": to_dict(cfg), "adapt_seconds": round(time.perf_counter() - start_time, 2),
        "adapt_timings": timings,
        "environment": environment(),
    }
    log.info("adapted to %s (%d labels, %d support examples) in %.1f s", data.name, len(labels), len(examples),
             meta["adapt_seconds"])
    return FewShotClassifier(body, fast, labels, cfg.inner.scale, meta, support=examples)

