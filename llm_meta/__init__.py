"""llm_meta: few-shot fine-tuning of language models by meta-learning LoRA adapters.

The three everyday verbs:

    import llm_meta
    clf = llm_meta.adapt(task="my_intents.csv", shots=5, adapter="runs/meta_train/adapter")
    clf.save("my_model")
    llm_meta.FewShotClassifier.load("my_model").predict(["where is my card?"])
    clf.evaluate("my_intents_test.csv", split="train")
    clf = llm_meta.continue_adapt(clf, ["cancel my order"], ["cancel"], new_classes=["cancel"])  # online
"""

from llm_meta.classifier import AdaptConfig, FewShotClassifier, adapt
from llm_meta.episodes import Episode, EpisodeSampler, Examples
from llm_meta.online import ContinueConfig, continue_adapt
from llm_meta.tasks import Task, load_task

__version__ = "0.1.0"
__all__ = ["AdaptConfig", "ContinueConfig", "Episode", "EpisodeSampler", "Examples", "FewShotClassifier", "Task",
           "adapt", "continue_adapt", "load_task"]
