"""A start for a task family: meta-train on some domains, then learn a new one from 8 examples per class.

    .venv/bin/python examples/task_family.py [--model all-MiniLM-L6-v2] [--steps 60]

The bundled sentiment family: tweets about four topics to train on, Coachella tweets to choose the
start on, Apple tweets held out. The full recipe (recipes/configs/sentiment_family_protonet.yaml,
480 steps, ~17 min on 2 cores) is the one measured in docs/guides/task-family.md; this is a short run.
"""

import argparse

import llm_meta

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="all-MiniLM-L6-v2")
parser.add_argument("--steps", type=int, default=60)
args = parser.parse_args()

# 1. Meta-train a ProtoNet start on the family; selection on Coachella keeps the best step (0: none).
run = llm_meta.meta_train("recipes/configs/sentiment_family_protonet.yaml", f"model.name={args.model}",
                          f"outer.steps={args.steps}", f"validate_every={args.steps}", "validation.episodes=2",
                          "test.episodes=0", "output_dir=runs/example_family", overwrite=True)

# 2. A held-out domain from 8 examples per class: the family's start next to the untrained start,
#    on the same support draw, scored on the whole test split.
for start in (run["adapter"], None):
    cfg = llm_meta.AdaptConfig(model=llm_meta.ModelConfig(name=args.model))
    clf = llm_meta.adapt(task="tweets_apple", shots=8, adapter=start, cfg=cfg)
    print(f"{start or 'untrained start'}: accuracy {clf.evaluate('tweets_apple')['accuracy']:.3f}")
