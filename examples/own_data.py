"""Your own task from a few labelled examples: adapt, predict, evaluate, save, reload.

    .venv/bin/python examples/own_data.py [--model all-MiniLM-L6-v2]

A small support file (5 examples for each of 4 intents, from the bundled MCID data so the script
runs anywhere) stands in for yours; with your own CSV, pass its path and column names.
"""

import argparse
import csv
import tempfile
from pathlib import Path

import llm_meta

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="all-MiniLM-L6-v2")  # a bundled name or a model folder
args = parser.parse_args()
work = Path(tempfile.mkdtemp())

# 1. A labelled file with your column names: a few examples per class.
train = llm_meta.load_task("mcid").split("train")
intents = sorted(set(train["label"]))[:4]
rows = [(t, y) for y in intents for t in [t for t, z in zip(train["text"], train["label"]) if z == y][:5]]
with open(work / "support.csv", "w", newline="") as f:
    csv.writer(f).writerows([("utterance", "intent"), *rows])

# 2. Adapt the untrained start (LoRA on every layer + a prototype head, 15 Adam steps) to every row.
clf = llm_meta.FewShotClassifier.from_pretrained(args.model)  # or a meta-trained adapter folder
clf.fit(str(work / "support.csv"), column_mapping={"utterance": "text", "intent": "label"})

# 3. Use it, save it (a plain peft adapter + head), load it back, score it on labelled texts.
print(clf.predict(["how can I donate to help", "hello there"]))  # [label, label]
clf.save_pretrained(work / "my_model")
clf = llm_meta.FewShotClassifier.from_pretrained(work / "my_model")
print(clf.evaluate(str(work / "support.csv"))["accuracy"])  # the columns it was adapted with are reused
