"""Online adaptation: an adapted task model takes new labelled examples, and new classes, without
starting over.

    clf = FewShotClassifier.load("my_model")
    clf = continue_adapt(clf, ["cancel my order please", ...], ["cancel_order", ...], new_classes=["cancel_order"])
    clf.save("my_model_v2")

What happens: each new class gets a prototype row in the head, computed with the current adapted
LoRA from its examples (so before any step it already classifies like ProtoNet), then a few inner
steps run on the stored support set plus the new examples. Replaying the stored set keeps the old
classes from being forgotten; the new examples join the stored support set, so the next
continuation replays them too.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from llm_meta.classifier import FewShotClassifier, default_adapt_config
from llm_meta.config import from_dict
from llm_meta.data.episodes import Examples
from llm_meta.data.tasks import TaskError
from llm_meta.meta.adaptation import adapt as adapt_params
from llm_meta.meta.core import InnerConfig
from llm_meta.meta.heads import HEAD_KEYS, proto_head
from llm_meta.meta.kinds import labelled_embeddings
from llm_meta.meta.starts import Start


@dataclass
class ContinueConfig:
    """Config of `llm-meta adapt --continue` (and of `continue_adapt`): the model's own adaptation
    settings, with fewer steps."""

    steps: int = 5  # inner steps over stored + new examples (0: only add the new classes' prototype rows)
    lr: float | None = None  # None: the lr the model was adapted with
    seed: int = 0
    text_column: str = "text"  # columns of the --support file
    label_column: str = "label"


def check_new_examples(known: list[str], texts: Sequence[str], labels: Sequence[str],
                       new_classes: Sequence[str]) -> None:
    """Clear errors, before anything is computed, for labels that are neither known nor declared new."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise TaskError("no new examples to continue with")
    empty = sum(1 for t in texts if not t.strip())
    if empty:
        raise TaskError(f"{empty} new example(s) have an empty text")
    already = sorted(set(new_classes) & set(known))
    if already:
        raise TaskError(f"declared new class(es) the model already knows: {', '.join(already)}")
    unknown = sorted(set(labels) - set(known) - set(new_classes))
    if unknown:
        raise TaskError(f"{len(unknown)} label(s) are not known to the model and not declared as new classes: "
                        f"{', '.join(unknown[:20])}{' ...' if len(unknown) > 20 else ''} (declare them with "
                        f"--new-class NAME, or new_classes=[...]; the model knows: {', '.join(known[:20])}"
                        f"{' ...' if len(known) > 20 else ''})")
    missing = sorted(set(new_classes) - set(labels))
    if missing:
        raise TaskError(f"declared new class(es) with no example: {', '.join(missing)}")


def continue_adapt(clf: FewShotClassifier, texts: Sequence[str], labels: Sequence[str],
                   new_classes: Sequence[str] = (), cfg: ContinueConfig | None = None) -> FewShotClassifier:
    """A new classifier that also knows `texts`/`labels` (label names; new ones must be in
    `new_classes`). `clf` is not modified."""
    cfg = cfg or ContinueConfig()
    start_time = time.perf_counter()
    if clf.support is None:
        raise TaskError("this task model has no stored support set (it was saved before online adaptation "
                        "existed): adapt it again with `llm-meta adapt`, then continue")
    check_new_examples(clf.labels, texts, labels, new_classes)
    all_labels = clf.labels + list(new_classes)  # old classes keep their index, so their head rows carry over
    index = {name: i for i, name in enumerate(all_labels)}
    new = Examples(list(texts), [index[y] for y in labels])
    inner = _inner_config(clf, cfg)

    parts = Start.of(clf.params)
    lora, head = parts.lora, {k: parts.head[k] for k in HEAD_KEYS}
    if new_classes:
        # Prototype rows for the new classes under the current LoRA (label names included, as adapt does).
        fresh = Examples([t for t, y in zip(new.texts, new.labels) if y >= len(clf.labels)],
                         [y - len(clf.labels) for y in new.labels if y >= len(clf.labels)])
        if inner.label_examples:
            fresh = fresh.with_label_names(list(new_classes), inner.label_examples)
        rows = proto_head(*labelled_embeddings(clf.body, lora, fresh), len(new_classes))
        head = {k: torch.cat([head[k], rows[k].to(head[k].dtype)]) for k in HEAD_KEYS}
    support = Examples(clf.support.texts + new.texts, clf.support.labels + new.labels)
    if cfg.steps:
        params = adapt_params(clf.body, lora, support, len(all_labels), inner, seed=cfg.seed, head=head,
                              label_names=all_labels)
    else:
        params = {**lora, **head}
    seconds = round(time.perf_counter() - start_time, 2)
    history = clf.metadata.get("continued", []) + [
        {"examples": len(new), "new_classes": list(new_classes), "steps": cfg.steps, "seconds": seconds}]
    meta = {**clf.metadata, "support_size": len(support), "continued": history}
    return FewShotClassifier(clf.body, params, all_labels, clf.scale, meta, support=support)


def _inner_config(clf: FewShotClassifier, cfg: ContinueConfig) -> InnerConfig:
    """The inner loop the model was adapted with (from its metadata), with the continuation's steps/lr."""
    stored = clf.metadata.get("adapt_config", {}).get("inner")
    inner = from_dict(InnerConfig, stored) if stored else default_adapt_config()
    return dataclasses.replace(inner, steps=cfg.steps, lr=inner.lr if cfg.lr is None else cfg.lr)
