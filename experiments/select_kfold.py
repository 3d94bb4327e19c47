"""Would k-fold *adaptation* choose the start better than the leave-one-out prototype fit? (issue:
task family, item 5: start selection on the support set.)

`adaptation.choose_start` judges each candidate start by its geometry before any step (the
leave-one-out prototype log-probability of the support set). A FOMAML start is trained to be good
*after* the inner steps, not at step 0, so that proxy can prefer the untrained start where the
FOMAML start adapts better: on drug reviews, support draw 0, it did at meta-seeds 0 and 2 and lost
14 and 9 points there. This script measures the alternative that judges what is used:

    k-fold fit (declared before any of its results were seen): the support set is split into 2
    folds stratified by class (each class's examples shuffled with the episode's seed and dealt in
    turn); each candidate is adapted exactly as `llm-meta adapt` adapts (label-name examples
    included) on one fold and scores the other; its fit is the mean log-probability of the held-out
    examples' classes over both folds. The candidate with the best fit is chosen, ties to the
    untrained start. Candidates: the untrained start and the adapter (the halved weight change was
    never chosen for FOMAML at meta-seed 0). Secondary, reported only: the same with held-out
    accuracy instead of log-probability.

Nothing here adapts for the query: a pick between the two candidates takes that candidate's score
from the benchmark's results for the very same episodes (`--reference`, a results.json of
benchmark_family_select.yaml with `finetune` and START rows), so the scores are the benchmark's.
The script checks that the start it loads is the one the reference scored: the leave-one-out picks
it recomputes must equal the reference's `START+select` picks.

    PYTHONPATH=<checkout of the study's code> python experiments/select_kfold.py \
        --config recipes/configs/benchmark_family_select.yaml --reference RESULTS.json \
        --start fomaml --seed 0 --out runs/select_kfold/fomaml-seed0.json [key=value ...]

Trains the start first (as the benchmark would) when its folder has no tensors.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from torch import Tensor

from llm_meta.meta.adaptation import adapt, choose_start
from llm_meta.meta.kinds import predict_logits
from llm_meta.config import load_config
from llm_meta.meta.core import InnerConfig
from llm_meta.data.episodes import Episode, Examples
from llm_meta.modeling.body import Body, Params
from llm_meta.data.tasks import load_task
from llm_meta import bench

FOLDS = 2


def fold_of(labels: list[int], folds: int, seed: int) -> list[int]:
    """[S] fold index of each support example: each class's examples shuffled and dealt in turn, so
    every fold holds about 1/folds of every class."""
    rng, fold = random.Random(seed), [0] * len(labels)
    for c in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == c]
        rng.shuffle(members)
        for j, i in enumerate(members):
            fold[i] = j % folds
    return fold


def held_out_logits(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int) -> tuple[Tensor, Tensor]:
    """(logits [S, N], true classes [S]) of every support example, predicted by `params` adapted with
    `cfg` on the other folds (`fold_of`, FOLDS, `seed`); rows in fold order (fold 0's examples first)."""
    s, fold = episode.support, fold_of(episode.support.labels, FOLDS, seed)
    logits, truth = [], []
    for f in range(FOLDS):
        train = [i for i in range(len(s.texts)) if fold[i] != f]
        held = [i for i in range(len(s.texts)) if fold[i] == f]
        fast = adapt(body, params, Examples([s.texts[i] for i in train], [s.labels[i] for i in train]),
                     episode.n_way, cfg, seed, label_names=episode.label_names)
        logits.append(predict_logits(body, fast, [s.texts[i] for i in held], cfg.scale, cache=False).float().cpu())
        truth.append(torch.tensor([s.labels[i] for i in held]))
    return torch.cat(logits), torch.cat(truth)


def kfold_fit(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int) -> dict[str, float]:
    """Mean held-out log-probability of the true class and held-out accuracy (a fraction) of `params`
    adapted on each fold's complement of the support set (`cfg`, the shared adaptation)."""
    logits, y = held_out_logits(body, params, episode, cfg, seed)
    return {"log_prob": torch.log_softmax(logits, 1)[torch.arange(len(y)), y].mean().item(),
            "accuracy": (logits.argmax(1) == y).float().mean().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--reference", required=True, help="results.json with finetune, START and START+select")
    ap.add_argument("--start", default="fomaml")
    ap.add_argument("--seed", type=int, default=0, help="meta-seed")
    ap.add_argument("--tasks", nargs="*", help="default: the config's fullway tasks")
    ap.add_argument("--out", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(bench.Config, args.config, args.overrides)
    ref = json.loads(Path(args.reference).read_text())
    out = Path(cfg.output_dir)
    body, untrained = bench.untrained_start(cfg.model, args.seed)
    run_dir = bench.train_start(cfg, args.start, args.seed, out, need="tensors")
    trained, fingerprint, _ = bench.load_start(body, run_dir)
    candidates = bench.start_candidates({("untrained", args.seed): untrained, (args.start, args.seed): trained},
                                       args.start, args.seed, select=True)
    inner = cfg.adapt
    record = Path(args.out)
    record.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(record.read_text())["rows"] if record.exists() else []
    done = {(r["task"], r["draw"]) for r in rows}
    for task in map(load_task, args.tasks or cfg.fullway.tasks):
        key = f"fullway/{task.name}/8"
        episodes = bench.fullway_episodes(cfg.fullway, task, 8)
        for draw, ep in enumerate(episodes):
            if (task.name, draw) in done:
                continue
            loo_pick, loo = choose_start(body, candidates, ep.support, ep.n_way, inner, ep.label_names)
            began = time.perf_counter()
            adapt(body, trained, ep.support, ep.n_way, inner, draw, label_names=ep.label_names)
            adapt_s = time.perf_counter() - began
            kfold, kfold_s = {}, {}
            for name in ("untrained", args.start):
                began = time.perf_counter()
                kfold[name] = kfold_fit(body, candidates[name], ep, inner, draw)
                kfold_s[name] = time.perf_counter() - began
            rows.append({"task": task.name, "draw": draw, "loo_pick": loo_pick, "loo": loo, "kfold": kfold,
                         "adapt_seconds": adapt_s, "kfold_seconds": kfold_s,
                         "untrained_score": ref["scores"]["finetune"][key][draw],
                         "start_score": ref["scores"][args.start][key][draw]})
            if f"{args.start}+select" in ref["scores"]:  # the reference's pick, from its scores
                sel = ref["scores"][f"{args.start}+select"][key][draw]
                rows[-1]["reference_pick_score"] = sel
            record.write_text(json.dumps({"start": args.start, "seed": args.seed, "fingerprint": fingerprint,
                                          "rows": rows}, indent=1))
            print(task.name, draw, "loo:", loo_pick, {k: round(v, 3) for k, v in loo.items()}, "kfold:",
                  {k: round(v["log_prob"], 3) for k, v in kfold.items()}, f"adapt {adapt_s:.1f}s",
                  {k: f"{v:.1f}s" for k, v in kfold_s.items()}, flush=True)
    summarise(rows, args.start)


def summarise(rows: list[dict], start: str) -> None:
    """Per task: untrained, start as given, and the start each rule chooses (mean accuracy %)."""
    def score(r: dict, pick: str) -> float:
        return r["untrained_score"] if pick == "untrained" else r["start_score"]

    def same(rs: list[dict]) -> int:  # recomputed leave-one-out picks that give the reference's score
        return sum(r["loo_pick"] in ("untrained", start) and score(r, r["loo_pick"]) == r["reference_pick_score"]
                   for r in rs)

    def kpick(r: dict, what: str) -> str:
        return start if r["kfold"][start][what] > r["kfold"]["untrained"][what] else "untrained"
    print(f"| task | untrained | {start} | leave-one-out pick | k-fold pick (log-prob) | k-fold pick (accuracy) "
          "| k-fold cost / adaptation |")
    print("|---|---|---|---|---|---|---|")
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        mean = lambda f: 100 * sum(map(f, rs)) / len(rs)  # noqa: E731
        picks = [kpick(r, "log_prob") for r in rs]
        cost = sum(sum(r["kfold_seconds"].values()) for r in rs) / sum(r["adapt_seconds"] for r in rs)
        print(f"| {task} | {mean(lambda r: r['untrained_score']):.1f} | {mean(lambda r: r['start_score']):.1f} "
              f"| {mean(lambda r: r['reference_pick_score']):.1f} ({same(rs)}/{len(rs)} recomputed picks agree) "
              f"| {mean(lambda r: score(r, kpick(r, 'log_prob'))):.1f} ({picks.count(start)}/{len(rs)} {start}) "
              f"| {mean(lambda r: score(r, kpick(r, 'accuracy'))):.1f} | {cost:.1f}x |")


if __name__ == "__main__":
    main()
