"""The task-family study's tables for experiments/BENCHMARKS.md, from a benchmark's results.json.

    python experiments/family_table.py runs/benchmark_family/results.json [--k 8]

Prints, per held-out domain, accuracy vs K for every method (mean with its crossed-bootstrap 95%
interval, the unit the report states), then the paired differences at one K against every
reference (the report's Holm-adjusted verdicts), each method's mean per meta-seed at that K (when
there is more than one), and the trained starts with their selected steps and training wall times.
Reads only what the benchmark wrote: no model is loaded.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def _fmt(e: dict) -> str:
    return f"{100 * e['mean']:.1f} [{100 * e['low']:.1f}, {100 * e['high']:.1f}]"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines: the header, its rule, one line per row of cells."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    return [line(head), "|" + "---|" * len(head), *map(line, rows)]


def _diff(c: dict | None) -> str:
    if c is None:
        return "-"
    verdict = f"**{c['verdict']}**" if c["primary"] else c["verdict"]
    return f"{100 * c['mean']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}] {verdict}"


def tables(results: dict, k: int) -> str:
    estimates, methods = results["estimates"], results["config"]["methods"]
    settings = [s for s in results["hashes"] if s.startswith("fullway/")]
    by_task: dict[str, list[int]] = defaultdict(list)
    for s in settings:
        _, task, shots = s.split("/")
        by_task[task].append(int(shots))
    out = []
    for task, shots in by_task.items():
        shots = sorted(shots)
        out += [f"**{task}** (accuracy %, all classes, whole test split)", ""]
        out += _table(["method", *(f"K = {s}" for s in shots)],
                      [[m, *(_fmt(estimates[m][f"fullway/{task}/{s}"]) for s in shots)] for m in methods])
        out.append("")
    refs = results["config"]["references"]
    contrasts = {(c["method"], c["reference"], c["setting"]): c for c in results["contrasts"]}
    out += [f"Paired differences at K = {k} (points; Holm-adjusted verdicts, the primary contrast at 5% alone):", ""]
    out += _table(["method", *(f"{task} vs {r}" for task in by_task for r in refs)],
                  [[m, *(_diff(contrasts.get((m, r, f"fullway/{task}/{k}"))) for task in by_task for r in refs)]
                   for m in methods])
    out += _per_seed(results, list(by_task), k)
    out.append("")
    starts = []
    for name, s in results["starts"].items():
        alpha = f" (α = {s['alpha']:g})" if s.get("alpha", 1.0) != 1.0 else ""
        took = f"{s['train_seconds'] / 60:.1f} min" if s.get("train_seconds") else "-"
        starts.append([name, f"{s['selected_step']}{alpha}", f"{100 * s['validation_accuracy']:.1f} / "
                       f"{100 * s['step0_validation_accuracy']:.1f}", took])
    out += _table(["start", "selected step (α)", "validation (selected / its step 0)", "training wall time"], starts)
    return "\n".join(out)


def _per_seed(results: dict, tasks: list[str], k: int) -> list[str]:
    """Lines of each method's mean accuracy per meta-seed at K, in the order of `meta_seeds`: the
    spread the pooled interval above folds in. Empty for a one-seed run."""
    seeds = results["config"]["meta_seeds"]
    if len(seeds) < 2:
        return []
    by_seed = results["mean_by_meta_seed"]

    def cell(means: list[float] | None) -> str:  # None: this K was not run for the domain
        return "-" if means is None else " / ".join(f"{100 * x:.1f}" for x in means)

    rows = [[m, *(cell(by_seed[m].get(f"fullway/{t}/{k}")) for t in tasks)] for m in results["config"]["methods"]]
    caption = (f"Mean per meta-seed at K = {k} (seed {' / '.join(map(str, seeds))}; one value: the start does not "
               "depend on the meta-seed):")
    return ["", caption, "", *_table(["method", *tasks], rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--k", type=int, default=8, help="K of the paired-difference table")
    args = parser.parse_args()
    print(tables(json.loads(open(args.results).read()), args.k))


if __name__ == "__main__":
    main()
