"""How cost grows: adaptation time and memory vs classes x shots and vs max_length, prediction time
vs the number of texts, meta-step time vs way and inner steps.

    .venv/bin/python experiments/cost_table.py [--parts adapt,predict,metastep]

- Adaptation (`llm_meta.adapt`, untrained start, top-2-layer LoRA (`model.lora_layers=2`), 15 steps of 64):
  CLINC's first C classes x K shots at max_length 64 (C = 5 ... 150, K = 5, 10), and Yahoo's 10
  topics x 5 shots at max_length 32 ... 512. Each in a fresh process; seconds of the adapt call
  (model load included, imports not) and its extra peak resident memory (peak RSS after adapting
  minus RSS just before, MiB).
- Prediction: `FewShotClassifier.predict_proba` on N = 100, 1,000, 10,000 CLINC texts (one process).
- Meta-step: `benchmarks/speed.py --algorithms fomaml` at N-way 5 / 20 and 1 / 5 inner steps
  (its own table: seconds per FOMAML meta-step and the plain passes it contains).

Wall-clock seconds on this machine's CPU threads; run nothing else beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from adapt_speed import first_classes  # noqa: E402 (benchmarks/adapt_speed.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRID = [(c, k) for c in (5, 20, 77, 150) for k in (5, 10)]
LENGTHS = [32, 64, 128, 256, 512]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args: argparse.Namespace) -> None:
    import llm_meta
    from llm_meta.classifier import AdaptConfig
    from llm_meta.modeling.body import ModelConfig

    cfg = AdaptConfig(model=ModelConfig(lora_layers=2, max_length=args.max_length))
    before = rss_mib()
    began = time.perf_counter()
    clf = llm_meta.adapt(task=args.task, shots=args.shots, cfg=cfg)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "extra_peak_mib": peak - before, "support": clf.metadata["support_size"],
                      **clf.metadata["adapt_timings"]}))


def run_child(task: str, shots: int, max_length: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--task", task, "--shots", str(shots), "--max-length", str(max_length)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="adapt,predict,metastep", help="which tables (comma-separated)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", default="clinc", help=argparse.SUPPRESS)
    parser.add_argument("--shots", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    parts = args.parts.split(",")
    if "adapt" in parts:
        adapt_tables()
    if "predict" in parts:
        predict_table()
    if "metastep" in parts:
        metastep_table()


def adapt_tables() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print("\nAdaptation vs classes x shots (CLINC, max_length 64)\n")
        print("| classes x shots | support texts (+ label names) | adapt s | of which steps + encoding | extra peak MiB |")
        print("|---|---|---|---|---|")
        for classes, shots in GRID:
            r = run_child(first_classes("clinc", classes, Path(tmp) / f"clinc{classes}", ("train",)), shots, 64)
            print(f"| {classes} x {shots} | {r['support']} (+{2 * classes}) | {r['seconds']:.1f} | "
                  f"{r['adaptation']:.1f} | {r['extra_peak_mib']:.0f} |", flush=True)
        print("\nAdaptation vs max_length (Yahoo, 10 topics x 5 shots)\n")
        print("| max_length | adapt s | of which steps + encoding | extra peak MiB |")
        print("|---|---|---|---|")
        for length in LENGTHS:
            r = run_child("yahoo", 5, length)
            print(f"| {length} | {r['seconds']:.1f} | {r['adaptation']:.1f} | {r['extra_peak_mib']:.0f} |", flush=True)


def predict_table() -> None:
    import llm_meta
    from llm_meta.data.tasks import load_task

    texts = list(load_task("clinc").split("train")["text"])
    clf = llm_meta.adapt(task="clinc", shots=5)
    clf.predict_proba(texts[:256])  # warm-up
    print("\nPrediction vs number of texts (CLINC, max_length 64, the 150-class model)\n")
    print("| texts | seconds | texts/s |")
    print("|---|---|---|")
    for n in (100, 1_000, 10_000):
        began = time.perf_counter()
        clf.predict_proba(texts[:n])
        seconds = time.perf_counter() - began
        print(f"| {n} | {seconds:.2f} | {n / seconds:.0f} |", flush=True)


def metastep_table() -> None:
    print("\nMeta-step vs way and inner steps (FOMAML, CLINC episodes, K = 5, 5 queries per class)\n")
    print("| N-way | inner steps | FOMAML s/episode | plain passes s/episode |")
    print("|---|---|---|---|")
    speed = str(Path(__file__).with_name("speed.py"))
    for n_way in (5, 20):
        for steps in (1, 5):
            out = subprocess.run([sys.executable, speed, "--algorithms", "fomaml", "--episodes", "3", "--n-way",
                                  str(n_way), "--inner-steps", str(steps)], capture_output=True, text=True, check=True)
            row = next(line for line in out.stdout.splitlines() if line.startswith("| fomaml"))
            meta, plain = row.split("|")[2:4]
            print(f"| {n_way} | {steps} | {meta.strip()} | {plain.strip()} |", flush=True)


if __name__ == "__main__":
    main()
