"""The task kinds: a sequence task (one label per text: intents, topics, sentiment) and a token task
(one label per word: NER). A kind is said once, by the examples' type (`Examples.kind`,
`WordExamples.kind`), and everything that differs between the two is asked of it:

- here, what a kind is: its saved folder format, the Hub's pipeline tag, the metric, how its
  model card names it and the task-model class that loads it;
- `llm_meta.meta.kinds`, what it does on the model: embedding labelled units, the head, the loss,
  the queries' scores (`kind_ops(examples)`).

No other module branches on the kind. The model follows PEFT's `TaskType` (an enumeration) with one
mapping from it to what each kind needs (peft.mapping's MODEL_TYPE_TO_PEFT_MODEL_MAPPING).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskKind:
    """What a kind of task is, apart from the model."""

    name: str  # "sequence" | "token": the key of `KINDS` and of `llm_meta.meta.kinds.OPS`
    folder_format: str  # a task model's "format" in llm_meta.json
    model_class: str  # the task-model class that loads that folder (llm_meta's export)
    pipeline_tag: str  # the Hugging Face Hub's task tag on the model card
    metric: str  # the `evaluate` metric its scores follow (card metadata)
    title: str  # a task model's heading on its card
    unit: str  # what one labelled example is, in plural
    scored_by: str  # what a query set's score is
    usage: str  # the card's example call of `predict`


SEQUENCE = TaskKind("sequence", "llm_meta.classifier/1", "FewShotClassifier", "text-classification", "accuracy",
                    "Task model", "examples", "accuracy", 'print(model.predict(["your text"]))')
TOKEN = TaskKind("token", "llm_meta.tagger/1", "FewShotTagger", "token-classification", "seqeval",
                 "NER task model", "sentences", "entity F1", 'print(model.predict(["Some sentence to tag"]))')
KINDS = {kind.name: kind for kind in (SEQUENCE, TOKEN)}


def kind_of_format(fmt: object) -> TaskKind | None:
    """The kind whose task models are saved as `fmt` ("llm_meta.tagger/1"...), matched on the part
    before the version; None for any other folder (a meta-learned start, a run, not ours)."""
    family = str(fmt).split("/")[0]
    return next((k for k in KINDS.values() if k.folder_format.split("/")[0] == family), None)


def kind_of_start(config: dict) -> TaskKind:
    """The kind a meta-trained start is for, from its recorded meta-training config (llm_meta.json's
    "config"): a run on NER episodes alone (an `ner.data` and no task entry marked `ner: true`, as
    `llm_meta.meta_sources.ner_only` decides; the sequence `tasks` a config inherits are then not
    read) made a start for taggers; any other, for classifiers."""
    ner = config.get("ner") if isinstance(config, dict) else None
    if not (isinstance(ner, dict) and ner.get("data")):
        return SEQUENCE
    tasks = config.get("tasks") or []
    mixed = any(isinstance(t, dict) and t.get("ner") for t in tasks) if isinstance(tasks, list) else False
    return SEQUENCE if mixed else TOKEN
