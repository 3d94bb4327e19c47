"""llm_meta: few-shot fine-tuning of language models by meta-learning LoRA adapters.

The everyday verbs:

    from llm_meta import FewShotClassifier
    clf = FewShotClassifier.from_pretrained("all-MiniLM-L6-v2").fit(texts, labels)  # or an adapter folder
    clf.predict(["where is my card?"])  # -> ["card_arrival"]
    clf.save_pretrained("my_model")     # FewShotClassifier.from_pretrained("my_model") loads it
    clf.evaluate("my_intents_test.csv")  # one file: scored whole, with the columns adapted on
    clf = llm_meta.continue_adapt(clf, ["cancel my order"], ["cancel"], new_classes=["cancel"])  # online
    clf = llm_meta.adapt(task="banking77", shots=5)  # K examples per class drawn from a task
    llm_meta.meta_train("recipes/configs/meta_train.yaml", "outer.steps=30")  # a meta-learned start
    from llm_meta import meta  # the algorithm core, for any torch model (examples/meta_core.py)

The names below are imported when first used (PEP 562), so `import llm_meta.io.outputs` or the
`llm-meta` command's argument checks do not wait for torch and transformers to load.
"""

import importlib
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {
    "AdaptConfig": "llm_meta.classifier", "FewShotClassifier": "llm_meta.classifier", "adapt": "llm_meta.classifier",
    "Episode": "llm_meta.data.episodes", "EpisodeSampler": "llm_meta.data.episodes", "Examples": "llm_meta.data.episodes",
    "ContinueConfig": "llm_meta.online", "continue_adapt": "llm_meta.online",
    "Task": "llm_meta.data.tasks", "load_task": "llm_meta.data.tasks", "ModelConfig": "llm_meta.modeling.body",
    "InnerConfig": "llm_meta.meta.core", "FewShotTagger": "llm_meta.tagger", "TaggerConfig": "llm_meta.tagger",
    "adapt_tagger": "llm_meta.tagger", "meta_train": "llm_meta.meta_training",
}
_MODULES = {"meta"}  # `from llm_meta import meta`: the algorithm core (llm_meta.meta)
__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"llm_meta.{name}")
    raise AttributeError(f"module 'llm_meta' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_MODULES])
