"""Held-out N-way K-shot episodes: meta-learned starts vs the untrained start, on identical episodes.

    .venv/bin/python experiments/heldout.py --config recipes/configs/meta_train.yaml --episodes 67 \
        --start untrained --start runs/fomaml/adapter --start runs/reptile/adapter

The episodes and the adaptation procedure are the config's `test` and `adapt` sections (5-way
5-shot, 3-way for tweet sentiment, 10 queries per class, from each dataset's test split). Every
start is scored on the same episodes (their combined hash is printed); the table gives mean ± 95%
CI per task and over all episodes, and the paired difference against the untrained start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from llm_meta.saving.checkpoint import load_adapter_params  # noqa: E402
from llm_meta.config import load_config  # noqa: E402
from llm_meta.eval.evaluation import mean_ci, paired_difference, score_episodes  # noqa: E402
from llm_meta.modeling.loading import load_body  # noqa: E402
from llm_meta.modeling.body import lora_params  # noqa: E402
from llm_meta.meta_config import Config  # noqa: E402
from llm_meta.meta_sources import eval_episodes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/configs/meta_train.yaml")
    parser.add_argument("--episodes", type=int, default=67, help="per task")
    parser.add_argument("--start", action="append", default=None, help="'untrained' or an adapter folder")
    parser.add_argument("--output", default="runs/heldout.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config(Config, args.config, [*args.overrides, f"test.episodes={args.episodes}"])
    body = load_body(cfg.model)
    episodes = eval_episodes(cfg.test)
    digest = hashlib.sha256("".join(e.fingerprint() for e in episodes).encode()).hexdigest()[:16]
    starts = args.start or ["untrained"]
    scores = {}
    for start in starts:
        params = lora_params(body) if start == "untrained" else load_adapter_params(body, start)
        scores[start] = score_episodes(body, params, episodes, cfg.adapt, desc=start)
        print(f"{start}: {mean_ci(scores[start])}", flush=True)

    tasks = list(dict.fromkeys(e.task for e in episodes))
    print(f"\n{len(episodes)} episodes ({args.episodes} per task), {cfg.test.n_way}-way {cfg.test.k_shot}-shot "
          f"{cfg.test.q_query}-query from the test splits, adaptation: {cfg.adapt.steps} steps, episodes hash {digest}")
    print("| start | " + " | ".join(tasks) + " | all episodes | paired diff vs untrained (all) |")
    print("|---|" + "---|" * (len(tasks) + 2))
    for start, s in scores.items():
        per_task = [mean_ci([x for x, e in zip(s, episodes) if e.task == t]) for t in tasks]
        diff = "-" if start == "untrained" or "untrained" not in scores else str(paired_difference(s, scores["untrained"]))
        print(f"| {start} | " + " | ".join(map(str, per_task)) + f" | {mean_ci(s)} | {diff} |")
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"episodes_hash": digest, "tasks": [e.task for e in episodes], "scores": scores}, f)


if __name__ == "__main__":
    main()
