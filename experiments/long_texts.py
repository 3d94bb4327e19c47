"""Long documents: plain truncation against reading them whole as windows, for accuracy and time.

    .venv/bin/python experiments/long_texts.py [--draws 2] [--test 1000]

On the bundled long-text tasks (Yahoo answers: 10 topics; DBpedia: its first 10 classes, as a
local CSV folder), adapts the default untrained start from K = 5 examples per class and scores
`--test` test texts, with: truncate at model.max_length 64 (the default), truncate at 256, and
model.long_texts=windows (windows of 64 tokens overlapping by 16, at most 8 per text). Reports
how many test texts each setting cuts, adaptation seconds, prediction texts/s and accuracy (mean
over `--draws` support draws, each draw listed). Wall-clock seconds on this machine's CPU
threads; run nothing else beside it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import llm_meta  # noqa: E402
from llm_meta.classifier import AdaptConfig  # noqa: E402
from llm_meta.modeling.body import ModelConfig  # noqa: E402
from llm_meta.modeling.forward import warn_truncated  # noqa: E402
from llm_meta.data.tasks import load_task  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from adapt_speed import first_classes  # noqa: E402 (benchmarks/adapt_speed.py)

SETTINGS = {
    "truncate 64 (default)": {},
    "truncate 256": {"max_length": 256},
    "windows 8 x 64": {"long_texts": "windows", "window_overlap": 16, "max_windows": 8},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| task | setting | test texts cut | adapt s | predict texts/s | accuracy % (each draw) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, task in {"yahoo (10 topics)": "yahoo",
                           "dbpedia (10 classes)": first_classes("dbpedia", 10, Path(tmp))}.items():
            data = load_task(task)
            test = data.split("test").select(range(min(args.test, len(data.split("test")))))
            for setting, model in SETTINGS.items():
                adapt_s, rates, accs, cut = [], [], [], 0
                for draw in range(args.draws):
                    cfg = AdaptConfig(model=ModelConfig(lora_layers=2, **model), seed=draw)
                    began = time.perf_counter()
                    clf = llm_meta.adapt(task=data, shots=5, cfg=cfg)
                    adapt_s.append(time.perf_counter() - began)
                    cut = warn_truncated(clf.body, list(test["text"]), "test texts")
                    index = {n: i for i, n in enumerate(clf.labels)}
                    began = time.perf_counter()
                    pred = clf.predict_proba(list(test["text"])).argmax(1).tolist()
                    rates.append(len(test) / (time.perf_counter() - began))
                    accs.append(100 * statistics.mean(p == index[y] for p, y in zip(pred, test["label"])))
                print(f"| {name} | {setting} | {cut} of {len(test)} | {statistics.mean(adapt_s):.1f} | "
                      f"{statistics.mean(rates):.0f} | {statistics.mean(accs):.1f} "
                      f"({', '.join(f'{a:.1f}' for a in accs)}) |", flush=True)


if __name__ == "__main__":
    main()
