"""The task-family study's accuracy-vs-K table pooled over meta-seeds, from one-seed benchmark runs.

    python experiments/family_pooled.py experiments/results/family_results.json \\
        experiments/results/family_seed1_results.json experiments/results/family_seed2_results.json \\
        --plot experiments/results/family_pooled_accuracy_vs_k.png

Each results.json holds one meta-seed of benchmark_family.yaml. The episodes must be the same
(their hashes are checked); the settings that make a start and its adaptation (`model`, `adapt`,
`train_configs`, `train_overrides`, `start_overrides`, `budget_scale`) are compared and every
difference is printed (keys added to the config after a run read as absent there), so a reader can
judge whether it matters. The benchmark itself pools
meta-seeds only within one run, and the three seeds' runs were made at different commits (their
scores are keyed on the llm_meta sources, so one run would score all of them again, about 3 h on
2 cores). A results.json keeps each episode's accuracy, not its per-text outcomes, so the
intervals here resample meta-seeds and support draws (crossed, as `llm_meta.eval.statistics`
does: seeds separately for each side of a difference, draws shared) but **not test texts**: they
are narrower than the single runs' intervals, which also resample texts. Paired differences of
every method against each of the runs' `references` (finetune vs transfer once, as transfer vs
finetune, as the benchmark does); no primary contrast: Holm over all of them (`llm_meta.eval.statistics.holm`), with enough bootstrap
replicates for Holm to reach 5% (`replicates_for`). Only the methods present in every file are
pooled. Reads only what the benchmarks wrote: no model is loaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from llm_meta.eval.statistics import Estimate, Outcomes, crossed_bootstrap, holm, replicates_for, verdict
from llm_meta.eval.report import plot_scores

COMPARED = ("model", "adapt", "train_configs", "train_overrides", "start_overrides", "budget_scale")


def config_differences(runs: list[dict], seeds: list[int]) -> list[str]:
    """One line per config entry of `COMPARED` (flattened to dotted keys) whose value differs
    between the runs: 'key: seed s = value / ...'."""
    def flat(d: object, prefix: str) -> dict[str, object]:
        if not isinstance(d, dict):
            return {prefix: d}
        return {k: v for key, sub in d.items() for k, v in flat(sub, f"{prefix}.{key}").items()}
    views = [{k: v for name in COMPARED for k, v in flat(r["config"].get(name), name).items()} for r in runs]
    keys = sorted(set().union(*views))
    return [f"{k}: " + " / ".join(f"seed {s} = {v.get(k, 'absent')!r}" for s, v in zip(seeds, views))
            for k in keys if len({json.dumps(v.get(k, "absent"), sort_keys=True) for v in views}) > 1]


def accuracy_outcomes(runs: list[dict], method: str, setting: str) -> Outcomes:
    """Outcomes [meta-seed][support draw] -> [[accuracy]] of `method` on `setting`, one pseudo-query
    per episode with the same id everywhere, so the bootstrap resamples seeds and draws, not texts."""
    values = [[np.array([[a]]) for a in run["scores"][method][setting]] for run in runs]
    draws = {len(v) for v in values}
    if len(draws) != 1:
        raise ValueError(f"{method} on {setting}: the runs have different numbers of support draws {sorted(draws)}")
    return Outcomes(values, [np.zeros(1, dtype=np.int64)] * draws.pop(), 1)


def load_runs(paths: list[str]) -> tuple[list[dict], list[int], list[str], list[str]]:
    """(runs sorted by meta-seed, their seeds, the methods every run scored, the shared full-way
    settings). Raises ValueError unless every run has one meta-seed of its own and the same
    episodes (hashes) on every shared setting."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    seeds = [r["config"]["meta_seeds"] for r in runs]
    if any(len(s) != 1 for s in seeds) or len({s[0] for s in seeds}) != len(runs):
        raise ValueError(f"each results.json must hold one meta-seed of its own (got {seeds})")
    runs, seeds = zip(*sorted(zip(runs, [s[0] for s in seeds]), key=lambda x: x[1]))
    settings = [s for s in runs[0]["hashes"] if s.startswith("fullway/") and all(s in r["hashes"] for r in runs)]
    for s in settings:
        if len({r["hashes"][s] for r in runs}) != 1:
            raise ValueError(f"{s}: the runs scored different episodes")
    methods = [m for m in runs[0]["config"]["methods"] if all(m in r["scores"] for r in runs)]
    return list(runs), list(seeds), methods, settings


def k_header(lead: list[str], settings: list[str]) -> str:
    """A markdown table's header and rule: the `lead` columns, then one column per setting's K."""
    cols = [*lead, *(f"K = {s.split('/')[2]}" for s in settings)]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="one-meta-seed results.json files of benchmark_family.yaml")
    ap.add_argument("--plot", help="write accuracy vs K (pooled means and intervals) to this PNG")
    ap.add_argument("--json", help="write every estimate and contrast to this file")
    ap.add_argument("--bootstrap", type=int, default=2000, help="replicates for each method's interval (the "
                    "paired differences take enough for Holm to reach 5%%, `replicates_for`)")
    args = ap.parse_args()
    runs, seeds, methods, settings = load_runs(args.results)
    left = sorted({m for r in runs for m in r["scores"]} - set(methods))
    references = [r for r in runs[0]["config"]["references"] if r in methods]
    contrasts = [(m, ref, s) for s in settings for ref in references
                 for m in methods if m != ref and not (m in references and references.index(m) < references.index(ref))]
    n_boot = replicates_for(len(contrasts))
    outcomes = {(m, s): accuracy_outcomes(runs, m, s) for m in methods for s in settings}
    estimates = {(m, s): crossed_bootstrap(outcomes[m, s], n_boot=args.bootstrap) for m in methods for s in settings}
    diffs = [crossed_bootstrap(outcomes[m, s], outcomes[ref, s], n_boot=n_boot) for m, ref, s in contrasts]
    adjusted = holm([d.p for d in diffs])
    print(f"meta-seeds {seeds}; methods pooled: {', '.join(methods)}"
          + (f"; not in every run: {', '.join(left)}" if left else ""))
    print(f"{len(contrasts)} paired differences, Holm-adjusted, {n_boot} replicates; texts not resampled")
    for line in config_differences(runs, seeds):
        print("config differs:", line)
    print()
    tasks = list(dict.fromkeys(s.split("/")[1] for s in settings))
    for task in tasks:
        ks = [s for s in settings if s.split("/")[1] == task]
        print(f"**{task}** (accuracy %, mean over meta-seeds x support draws [95% interval])\n")
        print(k_header(["method"], ks))
        for m in methods:
            print(f"| {m} | " + " | ".join(str(estimates[m, s]) for s in ks) + " |")
        print("\nper meta-seed (" + " / ".join(map(str, seeds)) + ")\n")
        print(k_header(["method"], ks))
        for m in methods:
            print(f"| {m} | " + " | ".join(" / ".join(f"{100 * np.mean(r['scores'][m][s]):.1f}" for r in runs)
                                           for s in ks) + " |")
        print()
    cell = {c: (d, p) for c, d, p in zip(contrasts, diffs, adjusted)}
    for task in tasks:
        ks = [s for s in settings if s.split("/")[1] == task]
        print(f"**{task}**, paired differences (points [95% interval]; Holm verdict where not a tie)\n")
        print(k_header(["method", "vs"], ks))
        for ref in references:
            for m in methods:
                if (m, ref, ks[0]) not in cell:
                    continue
                row = []
                for s in ks:
                    d, p = cell[m, ref, s]
                    v = verdict(d, p)
                    row.append(f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
                               + (f" **{v}**" if v != "tie" else ""))
                print(f"| {m} | {ref} | " + " | ".join(row) + " |")
        print()
    if args.plot:
        panels = [tuple(s.split("/")[:2]) + (int(s.split("/")[2]),) for s in settings]
        plot_scores(methods, panels,
                        {m: {s: estimates[m, s] for s in settings} for m in methods}, Path(args.plot))
    if args.json:
        def est(e: Estimate) -> dict:
            return {"mean": e.mean, "low": e.low, "high": e.high, "p": e.p}
        Path(args.json).write_text(json.dumps({
            "meta_seeds": seeds, "methods": methods, "interval_unit": "crossed bootstrap over meta-seeds and "
            "support draws (texts not resampled)", "estimates": {m: {s: est(estimates[m, s]) for s in settings}
                                                                for m in methods},
            "contrasts": [{"method": m, "reference": ref, "setting": s, **est(d), "p_adjusted": p,
                           "verdict": verdict(d, p)} for (m, ref, s), d, p in zip(contrasts, diffs, adjusted)]},
            indent=1))


if __name__ == "__main__":
    main()
