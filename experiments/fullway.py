"""Full-way K-shot adaptation on a held-out dataset: every class, K examples each from train,
scored on the full test split, over several support seeds.

    .venv/bin/python experiments/fullway.py --task banking77 --shots 1 5 --seeds 0 1 2 \
        --start untrained --start runs/meta_train/adapter --start runs/reptile/adapter

Rows per start: the frozen prototype floor (no steps, no label names; the first prototype's 76.8 at
5-shot on BANKING77), and the default `llm-meta adapt` procedure (prototype head + each label
name twice + 15 Adam steps). Wall time is that of `llm_meta.adapt` (support encoding + steps),
not of scoring the test split. Prints a markdown table and writes JSON next to --output.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import llm_meta  # noqa: E402
from llm_meta.meta.algorithms import InnerConfig  # noqa: E402
from llm_meta.classifier import AdaptConfig, default_adapt_config  # noqa: E402
from llm_meta.eval.evaluation import mean_ci  # noqa: E402

PROCEDURES = {
    "prototype floor (0 steps)": InnerConfig(steps=0, label_examples=0),
    "adapt (default: +label names, 15 steps)": default_adapt_config(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="banking77")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--start", action="append", default=None, help="'untrained' or an adapter folder")
    parser.add_argument("--output", default="runs/fullway.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    starts = args.start or ["untrained"]
    task = llm_meta.load_task(args.task)
    results = []
    for start in starts:
        for name, inner in PROCEDURES.items():
            for shots in args.shots:
                accs, times = [], []
                for seed in args.seeds:
                    cfg = AdaptConfig(inner=inner, seed=seed)
                    t0 = time.perf_counter()
                    clf = llm_meta.adapt(task=task, shots=shots, cfg=cfg,
                                         adapter=None if start == "untrained" else start)
                    times.append(time.perf_counter() - t0)
                    accs.append(clf.evaluate(task, "test")["accuracy"])
                results.append({"start": start, "procedure": name, "shots": shots, "accuracies": accs,
                                "adapt_seconds": times, "mean": sum(accs) / len(accs)})
                print(f"{start} | {name} | K={shots} | {[round(100 * a, 1) for a in accs]}", flush=True)
    print(f"\n{args.task}, {len(task.label_names)}-way, full test split ({len(task.split('test'))} texts), "
          f"seeds {args.seeds}")
    print("| start | procedure | K | accuracy (mean ± 95% CI over seeds) | per seed | adapt wall time (s) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ci = mean_ci(r["accuracies"])
        per_seed = " / ".join(f"{100 * a:.1f}" for a in r["accuracies"])
        print(f"| {r['start']} | {r['procedure']} | {r['shots']} | {ci} | {per_seed} | "
              f"{sum(r['adapt_seconds']) / len(r['adapt_seconds']):.1f} |")
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"task": args.task, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
