"""Adaptation latency of `llm_meta.adapt`, phase by phase, from a cold process, with the accuracy it buys.

    .venv/bin/python benchmarks/adapt_speed.py [--draws 3] [--variants top2,all_layers,top2_bf16]

Each run is a fresh Python process (so the first adaptation pays every one-off cost a user pays)
that adapts the untrained start to BANKING77 from K = 5 examples per class, with all 77 classes
and with 5 of them (a local CSV folder of those classes' train/test rows), then saves the task
model and scores it on the whole test split. Python and library import time is reported but left
out of the total; model load is its own column. Phases come from the task model's
`adapt_timings` (llm_meta/classifier.py): model_load, data (task read, support draw, truncation
check), adaptation (support encoding for the prototype head + inner-loop steps); save is timed here.

Variants: top2 = LoRA on the top 2 layers (`model.lora_layers=2`, the default from the speed issue
until the quality suite; batches in length-sorted chunks of 8 texts); all_layers = LoRA on all 6
layers (`AdaptConfig`'s default again, docs/quality-suite.md); *_bf16 = model.autocast=bf16
(bf16 matmuls on CPUs with AVX512-BF16/AMX);
top2_unchunked / top2_chunk16 = inner.chunk 0 (each batch in one padded pass, the default before)
/ 16. Wall-clock seconds on this machine's CPU threads; run nothing else
beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def first_classes(name: str, classes: int, folder: Path, splits: tuple[str, ...] = ("train", "test")) -> str:
    """Task `name`'s first `classes` labels (alphabetical), every row of `splits` with one of them,
    written to `folder`/SPLIT.csv (columns text, label); returns the folder for `load_task`."""
    from llm_meta.data.tasks import load_task

    task = load_task(name)
    keep = set(sorted(task.label_names)[:classes])
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        task.split(split).filter(lambda row: row["label"] in keep).to_csv(folder / f"{split}.csv", index=False)
    return str(folder)


VARIANTS = {
    "top2": [],
    "all_layers": ["--all-layers"],
    "top2_bf16": ["--bf16"],
    "all_layers_bf16": ["--all-layers", "--bf16"],
    "top2_unchunked": ["--chunk", "0"],  # each batch in one padded pass (the default before chunk=8)
    "top2_chunk16": ["--chunk", "16"],
}


def child(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    import llm_meta
    from llm_meta.classifier import AdaptConfig
    from llm_meta.modeling.body import ModelConfig

    imported = time.perf_counter() - began
    model = ModelConfig(lora_layers=None if args.all_layers else 2, autocast="bf16" if args.bf16 else "auto")
    began = time.perf_counter()
    cfg = AdaptConfig(model=model, seed=args.draw)
    if args.chunk is not None:
        cfg.inner = dataclasses.replace(cfg.inner, chunk=args.chunk)
    clf = llm_meta.adapt(task=args.task, shots=5, cfg=cfg)
    total = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        clf.save(Path(folder) / "model")
        save = time.perf_counter() - began
    began = time.perf_counter()
    accuracy = clf.evaluate(args.task, split="test")["accuracy"]
    print(json.dumps({"import_s": imported, "adapt_s": total, "save_s": save, **clf.metadata["adapt_timings"],
                      "accuracy": 100 * accuracy, "eval_s": time.perf_counter() - began,
                      "classes": len(clf.labels), "support": clf.metadata["support_size"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--variants", default="top2,all_layers,top2_bf16")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", default="banking77", help=argparse.SUPPRESS)
    parser.add_argument("--draw", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--all-layers", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import platform

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; seconds from a cold process, imports excluded")
    with tempfile.TemporaryDirectory() as tmp:
        tasks = {"77-way 5-shot": "banking77", "5-way 5-shot": first_classes("banking77", 5, Path(tmp))}
        print("| task | variant | total s (mean [min, max]) | model load | data | adaptation | save | accuracy % | "
              "import s (excluded) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, task in tasks.items():
            for variant in args.variants.split(","):
                runs = []
                for draw in range(args.draws):
                    cmd = [sys.executable, __file__, "--child", "--task", task, "--draw", str(draw), *VARIANTS[variant]]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                    runs.append(json.loads(out.strip().splitlines()[-1]))

                def mean(key: str) -> float:
                    return statistics.mean(r[key] for r in runs)

                totals = [r["adapt_s"] + r["save_s"] for r in runs]
                each = ", ".join(f"{r['accuracy']:.2f}" for r in runs)
                print(f"| {label} | {variant} | {statistics.mean(totals):.1f} [{min(totals):.1f}, {max(totals):.1f}] | "
                      f"{mean('model_load'):.1f} | {mean('data'):.1f} | {mean('adaptation'):.1f} | "
                      f"{mean('save_s'):.2f} | {mean('accuracy'):.2f} ({each}) | "
                      f"{mean('import_s'):.1f} |", flush=True)


if __name__ == "__main__":
    main()
