"""New examples and a new class for an adapted model, without starting over.

    .venv/bin/python examples/online_classes.py [--model all-MiniLM-L6-v2]

A task model keeps its support set; `continue_adapt` gives the new class a head row from its
examples, then takes a few steps on the old support set plus the new examples (the replay keeps
the old classes from being forgotten). The model it starts from is not modified.
"""

import argparse

import llm_meta

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="all-MiniLM-L6-v2")
args = parser.parse_args()

cfg = llm_meta.AdaptConfig(task="mcid", shots=5, model=llm_meta.ModelConfig(name=args.model))
clf = llm_meta.adapt(cfg=cfg)  # 5 examples per class of the bundled MCID intents
print(len(clf.labels), "classes")

new = ["cancel my order please", "I want to cancel what I ordered", "stop my order"]
clf2 = llm_meta.continue_adapt(clf, new, ["cancel_order"] * len(new), new_classes=["cancel_order"])
print(len(clf2.labels), "classes;", clf2.predict(["please cancel the order I made"]))
