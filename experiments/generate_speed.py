"""Time to write a task's adapter with the LoRA hypernetwork vs adapting one with gradient steps.

    .venv/bin/python experiments/generate_speed.py [--hypernet runs/hypernet/adapter] [--task banking77] [--shots 5]

Support set: K examples of every class of the task (77-way 5-shot for BANKING77). Times, each the
median of --repeats runs in this process after one warm-up: encoding the support texts and label
names (the task features), the hypernetwork's forward pass, and the whole `generate` path
(`llm_meta.adapt` with 0 steps from the hypernetwork: features + generation + prototype head),
next to the default 15-step adaptation from the same start. Without --hypernet, an untrained
hypernetwork of the default size is used: the time does not depend on the trained values.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import llm_meta  # noqa: E402
from llm_meta.saving.checkpoint import load_adapter_params, save_adapter  # noqa: E402
from llm_meta.classifier import AdaptConfig, default_adapt_config  # noqa: E402
from llm_meta.data.episodes import support_set  # noqa: E402
from llm_meta.meta.hypernet import (HypernetConfig, class_features, count_parameters, generate,  # noqa: E402
                               init_hypernet, split_hypernet)
from llm_meta.modeling.body import ModelConfig, lora_params  # noqa: E402
from llm_meta.modeling.loading import load_body  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hypernet", default=None, help="a hypernet adapter folder (default: untrained, default size)")
    parser.add_argument("--task", default="banking77")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    task = llm_meta.load_task(args.task)
    support, labels = support_set(task, args.shots)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.hypernet
        body = load_body(ModelConfig())
        if folder is None:
            start = lora_params(body)
            folder = save_adapter(body, {**start, **init_hypernet(start, body.hidden_size, HypernetConfig())},
                                  Path(tmp) / "hypernet", {"algorithm": "hypernet", "config": {"model": {}}})
        params = load_adapter_params(body, folder)
        rest, net = split_hypernet(params)
        lora = {k: v for k, v in rest.items() if k in body.lora_names}
        feats = class_features(body, lora, support, len(labels), labels)
        t_features = median_seconds(lambda: class_features(body, lora, support, len(labels), labels), args.repeats)
        with torch.no_grad():
            t_forward = median_seconds(lambda: generate(net, feats, lora), args.repeats)
        csv_path = Path(tmp) / "support.csv"
        csv_path.write_text("text,label\n" + "\n".join(
            '"{}",{}'.format(t.replace('"', '""'), labels[y]) for t, y in zip(support.texts, support.labels)) + "\n")
        zero = dataclasses.replace(default_adapt_config(), steps=0)
        t_generate = median_seconds(lambda: llm_meta.adapt(support=str(csv_path), adapter=str(folder),
                                                           cfg=AdaptConfig(inner=zero)), args.repeats)
        t_adapt = median_seconds(lambda: llm_meta.adapt(support=str(csv_path), adapter=None, cfg=AdaptConfig()),
                                 args.repeats)
    print(f"{len(labels)}-way {args.shots}-shot support ({len(support)} texts + {len(labels)} label names), "
          f"hypernetwork {count_parameters(params) / 1e6:.2f}M parameters, {torch.get_num_threads()} threads\n")
    print("| step | seconds (median) |\n|---|---|")
    print(f"| encode support texts + label names (task features) | {t_features:.2f} |")
    print(f"| hypernetwork forward (write every ΔB) | {t_forward:.3f} |")
    print(f"| `generate`: llm_meta.adapt with 0 steps from the hypernetwork (load, features, write, head) | "
          f"**{t_generate:.2f}** |")
    print(f"| default adaptation, 15 steps (load, head, steps) | {t_adapt:.2f} |")


if __name__ == "__main__":
    main()
