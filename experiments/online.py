"""Online adaptation: add one new class with K examples to a model adapted on all the others.

    .venv/bin/python experiments/online.py [--task banking77] [--shots 5] [--seeds 0 1 2] [--steps 0 5]

For each seed: draw K examples of every class of the task's train split, hold one class out (a
different one per seed), adapt the untrained start on the rest with the default `llm-meta adapt`
procedure, save it, then time loading it + `continue_adapt` with the held-out class's K examples
+ saving the result (what `llm-meta adapt --continue` does). Scored on the full test split:
accuracy on the old classes' test texts before (N-1-way) and after (N-way, so the new class can
take some of them), and the new class's recall. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import llm_meta  # noqa: E402
from llm_meta.classifier import AdaptConfig, FewShotClassifier  # noqa: E402
from llm_meta.data.episodes import support_set  # noqa: E402
from llm_meta.eval.evaluation import mean_ci  # noqa: E402
from llm_meta.online import ContinueConfig, continue_adapt  # noqa: E402


def accuracy(clf: FewShotClassifier, texts: list[str], labels: list[str]) -> float:
    return sum(p == y for p, y in zip(clf.predict(texts), labels)) / max(1, len(labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="banking77")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 5])
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    task = llm_meta.load_task(args.task)
    test = task.split("test")
    rows: dict[int, dict[str, list[float]]] = {s: {"old_before": [], "old_after": [], "new": [], "sec": []}
                                               for s in args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            support, labels = support_set(task, args.shots, seed=seed)
            new_class = random.Random(f"online:{seed}").choice(labels)
            old = [(t, labels[y]) for t, y in zip(support.texts, support.labels) if labels[y] != new_class]
            new = [t for t, y in zip(support.texts, support.labels) if labels[y] == new_class]
            path = Path(tmp) / f"old-{seed}.csv"
            with path.open("w", newline="") as f:
                csv.writer(f).writerows([("text", "label"), *old])
            llm_meta.adapt(support=str(path), cfg=AdaptConfig(seed=seed)).save(Path(tmp) / f"model-{seed}")
            old_test = [(t, y) for t, y in zip(test["text"], test["label"]) if y != new_class]
            new_test = [t for t, y in zip(test["text"], test["label"]) if y == new_class]
            before = accuracy(FewShotClassifier.load(Path(tmp) / f"model-{seed}"), *map(list, zip(*old_test)))
            for steps in args.steps:
                t0 = time.perf_counter()
                clf = continue_adapt(FewShotClassifier.load(Path(tmp) / f"model-{seed}"), new, [new_class] * len(new),
                                     [new_class], ContinueConfig(steps=steps, seed=seed))
                clf.save(Path(tmp) / f"model-{seed}-plus-{steps}")
                seconds = time.perf_counter() - t0
                after = accuracy(clf, *map(list, zip(*old_test)))
                recall = accuracy(clf, new_test, [new_class] * len(new_test))
                for key, value in (("old_before", before), ("old_after", after), ("new", recall), ("sec", seconds)):
                    rows[steps][key].append(value)
                print(f"seed {seed}: +'{new_class}', {steps} steps: old classes {100 * before:.1f} -> "
                      f"{100 * after:.1f}, new class recall {100 * recall:.1f}, {seconds:.1f} s", flush=True)
    print(f"\n| continue steps | old classes before | old classes after | change (paired) | new-class recall | "
          f"load + continue + save |\n|---|---|---|---|---|---|")
    for steps, r in rows.items():
        b, a, n = (mean_ci([100 * x for x in r[k]]) for k in ("old_before", "old_after", "new"))
        d = mean_ci([100 * (x - y) for x, y in zip(r["old_after"], r["old_before"])])
        print(f"| {steps} | {b.mean:.1f} ± {b.half_width:.1f} | {a.mean:.1f} ± {a.half_width:.1f} | "
              f"{d.mean:+.1f} ± {d.half_width:.1f} | {n.mean:.1f} ± {n.half_width:.1f} | {sum(r['sec']) / len(r['sec']):.1f} s (max {max(r['sec']):.1f}) |")


if __name__ == "__main__":
    main()
