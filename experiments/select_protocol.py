"""Does checking a no-step pick under its own protocol fix the choice's off-family misses? (issue:
task family, item 5: start selection on the support set.)

`adaptation.choose_start` judged every candidate by its leave-one-out prototype fit before any step.
A ProtoNet start it keeps is used with no steps, while the untrained start and the halfway point
take the shared 15 steps, which lift them far on 10-way topics: at meta-seed 0 two Yahoo support
sets kept ProtoNet and scored 49.4 and 51.4 where the untrained start scores 65.8 and 59.2
(experiments/BENCHMARKS.md, "ProtoNet's own protocol under the choice, on three meta-seeds").

The rule measured here (`protocol_check` below, declared before any of its results were seen):
when the leave-one-out pick takes fewer steps than the shared adaptation, both it and the
best-fitting candidate that takes the steps are adapted by their own protocols on one of 2 folds of
the support set (stratified by class) and classify the other, both ways round; the pick is replaced
only when the other is significantly more accurate on the examples only one of them gets right
(one-sided exact sign test, p < 0.05). Reported beside it, not chosen: the same check without the
test (replaced whenever the other gets more right).

Nothing here re-scores what the reference scored: each episode takes the benchmark score of the
start and protocol chosen from `--reference` (the results.json of the three-seed `protonet+select`
benchmark, which holds per-meta-seed scores and picks); only a halfway pick the reference never
scored is scored here, as the benchmark scores it. The script checks that it reproduces the
reference: the ProtoNet tensors' fingerprints must equal the kept archive's, the episodes' hashes the
reference's, and the recomputed leave-one-out picks the reference's picks.

    python experiments/select_protocol.py --reference experiments/results/family_select_protonet3_results.json \\
        --kept experiments/results/family_select_protonet3_kept.tar.gz --out runs/select_protocol/rows.json \\
        output_dir=runs/select_protocol

Trains the ProtoNet starts first (as the benchmark would) where their folders have no tensors.
"""

from __future__ import annotations

import argparse
import json
import math
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import stats
from select_kfold import held_out_logits

from llm_meta.meta.adaptation import adapt, choose_start
from llm_meta.data.episodes import whole_split_episode
from llm_meta.config import load_config
from llm_meta.meta.core import InnerConfig
from llm_meta.data.episodes import Episode
from llm_meta.eval.evaluation import episode_outcomes, episode_score
from llm_meta.modeling.body import Body, Params
from llm_meta.data.tasks import load_task
from llm_meta import bench

START, METHOD = "protonet", "protonet+select"
K, DRAWS = 8, 5  # support texts per class, support draws per task and meta-seed
ALPHA = 0.05  # one-sided level of the sign test: replace the no-step pick only on clear evidence


def protocol_check(body: Body, pick: Params, rival: Params, ep: Episode, pick_cfg: InnerConfig,
                   rival_cfg: InnerConfig, seed: int) -> dict:
    """Each start adapted by its own protocol on one fold of the support set classifies the other
    (`select_kfold.held_out_logits`: 2 folds stratified by class, `seed`), both ways round, so every
    support example is predicted once by each; a one-sided exact sign test (`scipy.stats.binomtest`)
    on the examples only one of them gets right asks whether `rival` is more accurate.

    Returns {"held_out", "pick_correct", "rival_correct", "p_value"} (counts of support examples).
    """
    right = {}
    for name, params, cfg in (("pick", pick, pick_cfg), ("rival", rival, rival_cfg)):
        logits, truth = held_out_logits(body, params, ep, cfg, seed)
        right[name] = logits.argmax(1) == truth  # [S] bool, the same example order for both
    rival_only = int((right["rival"] & ~right["pick"]).sum())
    pick_only = int((right["pick"] & ~right["rival"]).sum())
    p_value = float(stats.binomtest(rival_only, rival_only + pick_only, 0.5, alternative="greater").pvalue) \
        if rival_only + pick_only else 1.0
    return {"held_out": len(right["pick"]), "pick_correct": int(right["pick"].sum()),
            "rival_correct": int(right["rival"].sum()), "p_value": p_value}


def kept_fingerprint(archive: Path, seed: int) -> str:
    """The tensors' fingerprint of the reference's ProtoNet start at `seed`, from its kept archive."""
    with tarfile.open(archive) as tar:
        return json.load(tar.extractfile(f"starts/{START}-seed{seed}/start.json"))["params_fingerprint"]


def protonet_candidates(cfg: bench.Config, seed: int, kept: Path) -> tuple[Body, dict[str, Params]]:
    """The body and the candidates `protonet+select` chooses among at meta-seed `seed` (the untrained
    start, the ProtoNet start, their halfway point), the ProtoNet start loaded from
    `cfg.output_dir` (trained first, as the benchmark would, where its folder has no tensors).

    Raises AssertionError when its tensors' fingerprint differs from the kept archive's."""
    body, untrained = bench.untrained_start(cfg.model, seed)
    run_dir = bench.start_dir(Path(cfg.output_dir), START, seed)
    if not bench.has_tensors(run_dir):
        bench.train_start(cfg, START, seed, Path(cfg.output_dir), need="tensors")
    trained, fingerprint, _ = bench.load_start(body, run_dir)
    assert fingerprint == kept_fingerprint(kept, seed), f"seed {seed}: not the reference's start"
    return body, bench.start_candidates({("untrained", seed): untrained, (START, seed): trained}, START, seed,
                                       select=True)


def best_other(fits: dict[str, float]) -> tuple[float, str]:
    """(d, rival): the ProtoNet start's leave-one-out fit minus the best fit of the other candidates
    (nats per support example; a NaN fit counts as -inf), and that best other candidate (ties: the
    first listed, as in `choose_start`)."""
    others = [n for n in fits if n != START]
    value = {n: float("-inf") if math.isnan(fits[n]) else fits[n] for n in fits}
    rival = max(others, key=lambda n: (value[n], -others.index(n)))
    return value[START] - value[rival], rival


def diff_cell(values: list[float], base: np.ndarray, gain: float) -> str:
    """'mean (difference from `base` [95% percentile bootstrap interval over episodes], share of
    `gain` kept)' in accuracy points, for per-episode accuracies `values` [E] and `base` [E]
    (fractions); the share only where `gain` (a fraction) is positive."""
    diff = np.array(values) - base
    lo, hi = (diff.min(), diff.max()) if np.ptp(diff) == 0 else stats.bootstrap(
        (diff,), np.mean, n_resamples=10_000, method="percentile", random_state=0).confidence_interval
    share = f", {100 * diff.mean() / gain:.0f}%" if gain > 0 else ""
    return f"{100 * np.mean(values):.1f} ({100 * diff.mean():+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{share})"


def protocols(cfg: bench.Config) -> tuple[InnerConfig, InnerConfig]:
    """(own, shared): the adaptation of a kept ProtoNet start (its own protocol: no steps) and of the
    other candidates (the shared 15 steps), as the `protonet+select` benchmark adapts them."""
    own = bench.method_spec(METHOD, bench.start_algorithms(cfg))[1](cfg.adapt)
    return own, bench.shared_inner(METHOD, cfg)


def reference_episodes(cfg: bench.Config, tasks: list[str], reference: dict, k: int = K) -> dict[str, list[Episode]]:
    """The full-way episodes (K = `k`) of each test task, as the benchmark draws them. Raises
    AssertionError when their hash is not the `reference` results' (other draws, data or config)."""
    episodes = {name: bench.fullway_episodes(cfg.fullway, load_task(name), k) for name in tasks}
    for name, eps in episodes.items():
        assert bench.episodes_hash(eps) == reference["hashes"][f"fullway/{name}/{k}"], f"{name}: not the reference's episodes"
    return episodes


def pending_episodes(cfg: bench.Config, kept: Path, seeds: list[int], tasks: list[str], split: str,
                     rows: list[dict]) -> Iterator[tuple[int, str, int, Body, dict[str, Params], Episode]]:
    """(meta-seed, task, draw, body, the `protonet+select` candidates, episode) for every full-way
    episode of `tasks` (K = 8 per class from train, 5 draws, the whole `split` as the query) at
    `seeds` that `rows` (resumed rows with "seed", "task", "draw") do not hold yet. The candidates
    are loaded once per meta-seed that has such an episode (`protonet_candidates`)."""
    done = {(r["seed"], r["task"], r["draw"]) for r in rows}
    seeds = [s for s in seeds if any((s, t, d) not in done for t in tasks for d in range(DRAWS))]
    loaded = {name: load_task(name) for name in tasks} if seeds else {}
    for seed in seeds:
        body, candidates = protonet_candidates(cfg, seed, kept)
        for name, task in loaded.items():
            for draw in range(DRAWS):
                if (seed, name, draw) not in done:
                    yield seed, name, draw, body, candidates, whole_split_episode(task, K, "train", split, draw)


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments both ProtoNet-choice scripts take: the benchmark config and its overrides, the
    reference results and kept archive, the meta-seeds and the rows file."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", default="recipes/configs/benchmark_family_select.yaml")
    ap.add_argument("--reference", required=True, help="results.json of the protonet+select benchmark")
    ap.add_argument("--kept", required=True, help="the reference's kept archive (start fingerprints)")
    ap.add_argument("--seeds", default="0,1,2", help="meta-seeds, comma-separated")
    ap.add_argument("--out", required=True, help="the rows (resumed, rewritten after each)")
    ap.add_argument("overrides", nargs="*")
    return ap


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    cfg = load_config(bench.Config, args.config, args.overrides)
    ref = json.loads(Path(args.reference).read_text())
    by_seed, picks = ref["scores_by_meta_seed"], ref["starts_chosen_by_meta_seed"][METHOD]
    own, shared = protocols(cfg)
    record = Path(args.out)
    record.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(record.read_text())["rows"] if record.exists() else []
    done = {(r["seed"], r["task"], r["draw"]) for r in rows}
    episodes = reference_episodes(cfg, cfg.fullway.tasks, ref)
    for seed in map(int, args.seeds.split(",")):
        body, candidates = protonet_candidates(cfg, seed, Path(args.kept))
        for name, eps in episodes.items():
            key = f"fullway/{name}/8"
            for draw, ep in enumerate(eps):
                if (seed, name, draw) in done:
                    continue
                began = time.perf_counter()
                loo_pick, fits = choose_start(body, candidates, ep.support, ep.n_way, shared, ep.label_names)
                pick = plain = loo_pick
                check = None
                if loo_pick == START:  # no steps: check it against the best-fitting candidate that takes them
                    rival = best_other(fits)[1]
                    check = {"pick": START, "rival": rival,
                             **protocol_check(body, candidates[START], candidates[rival], ep, own, shared, draw)}
                    pick = rival if check["p_value"] < ALPHA else START
                    plain = rival if check["rival_correct"] > check["pick_correct"] else START
                choose_s = time.perf_counter() - began
                row = {"seed": seed, "task": name, "draw": draw, "fits": fits, "check": check,
                       "loo_pick": loo_pick, "reference_pick": picks[key][str(seed)][draw], "pick": pick,
                       "plain_pick": plain, "choose_seconds": choose_s,
                       "scores": {"untrained": by_seed["finetune"][key][str(seed)][draw],
                                  START: by_seed[START][key][str(seed)][draw],
                                  "reference": by_seed[METHOD][key][str(seed)][draw]}}
                # a pick the reference never scored: the halfway point where it kept ProtoNet
                for c in {pick, plain} - set(row["scores"]) - {row["reference_pick"]}:
                    row["scores"][c] = episode_score(episode_outcomes(body, candidates[c], ep, shared, seed=draw))
                if check:  # the adaptation the check's cost is measured against
                    began = time.perf_counter()
                    adapt(body, candidates[check["rival"]], ep.support, ep.n_way, shared, draw,
                          label_names=ep.label_names)
                    row["adapt_seconds"] = time.perf_counter() - began
                rows.append(row)
                record.write_text(json.dumps({"rows": rows}, indent=1))
                print(seed, name, draw, "pick", pick, "(leave-one-out:", loo_pick, ")",
                      {k: round(v, 3) for k, v in (check or {}).items() if k in ("pick_correct", "rival_correct",
                                                                                  "p_value")},
                      f"{choose_s:.1f}s", flush=True)
    summarise(rows)


def summarise(rows: list[dict]) -> None:
    """Per task: the untrained start, ProtoNet without steps, the leave-one-out choice (the reference)
    and the choice with the check (and without its test): mean accuracy %, the difference from the
    untrained start with a 95% percentile bootstrap interval over episodes (meta-seed x draw; the
    test texts are not resampled), and the share of ProtoNet's own gain kept; the choice's cost
    (leave-one-out fits and check) over one shared adaptation, on the episodes it checked."""
    def score(r: dict, pick: str) -> float:
        return r["scores"]["reference"] if pick == r["reference_pick"] else r["scores"][pick]

    agree = sum(r["loo_pick"] == r["reference_pick"] for r in rows)
    print(f"recomputed leave-one-out picks equal to the reference's: {agree}/{len(rows)}")
    assert agree == len(rows), "the leave-one-out picks differ from the reference's: not its starts or code"
    print("| task | untrained | ProtoNet, no steps | choice (leave-one-out) | choice + check (p < 0.05) "
          "| choice + check, no test | checks run / switched | choice cost / adaptation (checked episodes) |")
    print("|---|---|---|---|---|---|---|---|")
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        base = np.array([r["scores"]["untrained"] for r in rs])
        gain = np.mean([r["scores"][START] for r in rs]) - base.mean()

        def cell(values: list[float]) -> str:
            return diff_cell(values, base, gain)
        checked = [r for r in rs if r["check"]]
        cost = (sum(r["choose_seconds"] for r in checked) / sum(r["adapt_seconds"] for r in checked)
                if checked else float("nan"))
        print(f"| {task} | {100 * base.mean():.1f} | {cell([r['scores'][START] for r in rs])} "
              f"| {cell([score(r, r['loo_pick']) for r in rs])} | {cell([score(r, r['pick']) for r in rs])} "
              f"| {cell([score(r, r['plain_pick']) for r in rs])} "
              f"| {len(checked)} / {sum(r['pick'] != r['loo_pick'] for r in rs)} "
              f"| {f'{cost:.1f}x' if checked else 'no check'} |")
    for task in dict.fromkeys(r["task"] for r in rows):
        per = {s: np.mean([score(r, r["pick"]) for r in rows if r["task"] == task and r["seed"] == s])
               for s in dict.fromkeys(r["seed"] for r in rows)}
        print(task, "choice + check by meta-seed:", {s: round(100 * float(v), 1) for s, v in per.items()})


if __name__ == "__main__":
    main()
