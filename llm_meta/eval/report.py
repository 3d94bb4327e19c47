"""The benchmark's statistics, report and plot: crossed-bootstrap estimates of every (method,
setting), paired contrasts against the references with Holm-adjusted verdicts (the one declared
primary contrast judged on its own), a markdown report and accuracy-vs-K plots (`plots` extra).
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llm_meta.eval.statistics import UNIT, Estimate, Outcomes, crossed_bootstrap, holm, replicates_for, verdict
from llm_meta.io.atomic import atomic_file

# `cfg` in this module is the benchmark's configuration (`llm_meta.bench.config.Config`, a layer above this one).


@dataclass
class ScoreRecord:
    """One method on one setting ("protocol/task/K"): what the statistics, the report and
    results.json read."""

    method: str
    setting: str
    outcomes: Outcomes  # per-query outcomes of each meta-seed's run: what the bootstrap resamples
    per_seed: dict[int, list[float]]  # meta-seed -> each episode's score
    seconds: float  # wall time per episode (adapt + score the queries), over meta-seeds
    cached: bool  # every run read from the score cache: its time is that of the run that wrote it
    episodes_hash: str  # the episodes scored (`llm_meta.bench.scores.episodes_hash`)
    picked: dict[int, list[str]] = field(default_factory=dict)  # `+select`: meta-seed -> each episode's start

    @property
    def by_seed(self) -> list[float]:
        """The mean score of each meta-seed."""
        return [sum(s) / len(s) for s in self.per_seed.values()]

    @property
    def scores(self) -> list[float]:
        """Each episode's score, averaged over meta-seeds."""
        runs = list(self.per_seed.values())
        return [sum(scores) / len(runs) for scores in zip(*runs)]

    @property
    def chosen(self) -> dict[str, int]:
        """`+select`: episodes (over meta-seeds) that adapted from each candidate."""
        return dict(Counter(c for picks in self.picked.values() for c in picks))


def records_json(records: list[ScoreRecord]) -> dict:
    """results.json's per-(method, setting) tables, each {method: {setting: value}}."""
    def table(value, only=lambda r: True) -> dict:
        out: dict[str, dict] = {}
        for r in records:
            if only(r):
                out.setdefault(r.method, {})[r.setting] = value(r)
        return out
    return {"episodes_seen": table(lambda r: r.episodes_hash), "scores": table(lambda r: r.scores),
            "scores_by_meta_seed": table(lambda r: r.per_seed), "seconds_per_episode": table(lambda r: r.seconds),
            "seconds_cached": table(lambda r: r.cached), "mean_by_meta_seed": table(lambda r: r.by_seed),
            "starts_chosen": table(lambda r: r.chosen, lambda r: bool(r.picked)),
            "starts_chosen_by_meta_seed": table(lambda r: r.picked, lambda r: bool(r.picked))}


def primary_contrast(cfg: Any, settings: dict | None) -> tuple[str, str, str] | None:
    """(method, reference, setting name) of the declared primary contrast, checked; None if none.
    `settings` None: only the method and reference are checked (before any training is spent)."""
    if not cfg.primary:
        return None
    method, _, rest = cfg.primary.partition(" vs ")
    reference, _, setting = rest.partition(" on ")
    method, reference, setting = method.strip(), reference.strip(), setting.strip()
    names = ["/".join(map(str, k)) for k in settings] if settings is not None else [setting]
    if method not in cfg.methods or reference not in cfg.references or setting not in names:
        raise ValueError(f"primary '{cfg.primary}' must read 'METHOD vs REFERENCE on PROTOCOL/TASK/K' with a method of "
                         f"{cfg.methods}, a reference of {cfg.references} and a setting of {names}")
    return method, reference, setting


def statistic_of(protocol: str) -> str:
    return "micro_f1" if protocol == "ner" else "accuracy"


def contrast_statistics(cfg: Any, settings: dict, records: list[ScoreRecord], primary: tuple | None
                        ) -> tuple[dict, list[dict]]:
    """Bootstrap estimates of every (method, setting) and of every paired contrast against a
    reference; verdicts Holm-adjusted over every contrast except the pre-declared primary one."""
    outcomes = {(r.method, r.setting): r.outcomes for r in records}
    estimates: dict[str, dict[str, Estimate]] = {m: {} for m in cfg.methods}
    contrasts = []
    pairs = {m: [r for r in cfg.references if r != m and r in cfg.methods] for m in cfg.methods}
    # Enough replicates for the paired differences that Holm over all of them can say "win".
    n_boot = max(cfg.bootstrap, replicates_for(sum(map(len, pairs.values())) * len(settings)))
    for key in settings:
        name, statistic = "/".join(map(str, key)), statistic_of(key[0])
        for method in cfg.methods:
            estimates[method][name] = crossed_bootstrap(outcomes[(method, name)], statistic=statistic,
                                                        n_boot=cfg.bootstrap)
            if key[0] == "ner":  # Few-NERD reports micro F1; the per-episode mean sits beside it
                estimates[method][f"{name}/episode_f1"] = crossed_bootstrap(
                    outcomes[(method, name)], statistic="episode_f1", n_boot=cfg.bootstrap)
            for reference in pairs[method]:
                d = crossed_bootstrap(outcomes[(method, name)], outcomes[(reference, name)], statistic, n_boot)
                contrasts.append({"method": method, "reference": reference, "setting": name, **dataclasses.asdict(d),
                                  "primary": (method, reference, name) == primary, "replicates": n_boot})
    secondary = [c for c in contrasts if not c["primary"]]
    for c, p in zip(secondary, holm([c["p"] for c in secondary])):
        c["p_adjusted"] = p
    for c in contrasts:
        c.setdefault("p_adjusted", c["p"])
        c["verdict"] = verdict(Estimate(c["mean"], c["low"], c["high"], c["p"]), c["p_adjusted"])
    return estimates, contrasts


def benchmark_report(cfg: Any, settings: dict, estimates: dict, contrasts: list[dict], trained: dict,
                     records: list[ScoreRecord]) -> str:
    """The markdown report: the protocol, the trained starts, one table per setting (each method's
    estimate, its paired differences and verdicts, seconds per episode), the `+select` choices."""
    record = {(r.method, r.setting): r for r in records}
    primary = next((c for c in contrasts if c["primary"]), None)
    lines = ["# Benchmark report", "",
             f"Adaptation (config `adapt`): {cfg.adapt.steps} {cfg.adapt.optimizer} steps at lr {cfg.adapt.lr}, "
             f"head init {cfg.adapt.head_init}, label names as examples ×{cfg.adapt.label_examples}; a method "
             f"written `METHOD@key=value` changes that key, and prototype, hypernet and ProtoNet-trained rows "
             f"take no steps; methods that train LoRA are averaged over meta-seeds {cfg.meta_seeds}.", "",
             f"**Intervals**: every value is the mean with its {UNIT}; {cfg.bootstrap} replicates "
             f"({contrasts[0]['replicates'] if contrasts else cfg.bootstrap} for the paired differences, enough "
             f"that a Holm-adjusted p-value can fall below 5%). A paired "
             f"difference vs {', '.join(cfg.references)} shares the resampled episodes and texts of both sides. "
             f"NER rows report micro entity F1 over all query sentences of all episodes (Few-NERD), with the "
             f"per-episode mean beside it.", "",
             f"**Verdicts**: {len(contrasts)} comparisons in this report. " + (
                 f"The primary contrast, declared before the run, is {primary['method']} vs {primary['reference']} "
                 f"on {primary['setting']}: {format_difference(primary)} at 5% on its own; the other "
                 f"{len(contrasts) - 1} are Holm-adjusted (family-wise 5%)." if primary else
                 "No primary contrast was declared (config `primary`): every verdict is Holm-adjusted "
                 "(family-wise 5%)."), ""]
    if trained:
        # A start whose selected step is 0 *is* the untrained start: its rows then measure no training.
        lines += ["## Trained starts (selected on meta-validation)", "",
                  "| start | steps trained | selected step | validation score (selected / step 0) | training wall time |",
                  "|---|---|---|---|---|"]
        for name, t in trained.items():
            origin = "the untrained start" if not t.get("init") else f"its init, {Path(t['init']).parent.name}"
            kept = f" ({origin} kept)" if t["selected_step"] == 0 else \
                f" (α = {t['alpha']:g})" if t.get("alpha", 1.0) != 1.0 else ""
            took = f"{t['train_seconds'] / 60:.1f} min" if t.get("train_seconds") else "-"
            lines.append(f"| {name} | {t['steps_trained']} | {t['selected_step']}{kept} | "
                         f"{100 * t['validation_accuracy']:.1f} / {100 * t['step0_validation_accuracy']:.1f} | {took} |")
        lines.append("")
    seed_head, seed_rule = (" mean per meta-seed |", "---|") if len(cfg.meta_seeds) > 1 else ("", "")
    by_key = {(c["method"], c["reference"], c["setting"]): c for c in contrasts}
    for key, setting in settings.items():
        protocol, task, k = key
        episodes = setting["episodes"]
        ner = protocol == "ner"
        # An NER episode's classes include O: say entity types, as the config (ner.n_way) does.
        way = f"{episodes[0].n_way - 1} entity types + O, K={k}" if ner else f"{episodes[0].n_way}-way {k}-shot"
        lines += [f"## {task}, {protocol}, {way} "
                  f"({len(episodes)} episodes, hash {setting['hash']})", "",
                  f"| method | {metric_name(protocol)} |{' per-episode F1 |' if ner else ''} "
                  f"{' | '.join(f'vs {r}' for r in cfg.references)} | s/episode |{seed_head}",
                  "|---|---|" + "---|" * (len(cfg.references) + ner) + "---|" + seed_rule]
        name = "/".join(map(str, key))
        for method in cfg.methods:
            diffs = [format_difference(by_key[(method, r, name)]) if (method, r, name) in by_key else "-" for r in cfg.references]
            per_seed = f" {' / '.join(f'{100 * v:.1f}' for v in record[(method, name)].by_seed)} |" if seed_head else ""
            extra = f" {100 * estimates[method][f'{name}/episode_f1'].mean:.1f} |" if ner else ""
            timing = f"{record[(method, name)].seconds:.2f}{' (cached)' if record[(method, name)].cached else ''}"
            lines.append(f"| {method} | {estimates[method][name]} |{extra} {' | '.join(diffs)} | {timing} |{per_seed}")
        lines.append("")
    picked = [(r.method, r.setting, r.chosen) for r in records if r.picked]
    if picked:
        lines += ["## Starts of the `+select` episodes", "",
                  "Episodes (over meta-seeds) that adapted from each candidate: chosen by the leave-one-out fit "
                  "of the support set before any step, or, marked '(family labels)', the method's start on an "
                  "episode whose class names are its family's.", "",
                  "| method | setting | episodes per start |", "|---|---|---|"]
        lines += [f"| {m} | {s} | {', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))} |" for m, s, counts in picked]
        lines.append("")
    return "\n".join(lines)


def metric_name(protocol: str) -> str:
    return "micro entity F1" if protocol == "ner" else "accuracy"


def format_difference(c: dict) -> str:
    mark = "primary, " if c["primary"] else ""
    return (f"{100 * c['mean']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}] "
            f"({mark}{c['verdict']}, p={c['p_adjusted']:.3g})")


def plot_scores(methods: list[str], settings: dict, estimates: dict, path: Path) -> None:
    """accuracy_vs_k.png, when matplotlib is installed (the `plots` extra); else one warning line:
    the report and the JSON, already written, hold every number the plot shows."""
    try:
        import matplotlib
    except ImportError:
        tqdm.write(f"no {path.name}: matplotlib is not installed (pip install \"llm_meta[plots]\"); the report "
                   "and results.json hold the same numbers", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((p, t) for p, t, _ in settings))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (protocol, task) in zip(axes[0], panels):
        ks = [k for p, t, k in settings if (p, t) == (protocol, task)]
        for method in methods:
            cis = [estimates[method][f"{protocol}/{task}/{k}"] for k in ks]
            ax.errorbar(ks, [100 * c.mean for c in cis],
                        yerr=[[100 * (c.mean - c.low) for c in cis], [100 * (c.high - c.mean) for c in cis]],
                        marker="o", capsize=3, label=method)
        ax.set_title(f"{task} ({protocol})")
        ax.set_xlabel("K (mentions per type)" if protocol == "ner" else "K (examples per class)")
        ax.set_xticks(ks)
        ax.set_ylabel(f"{metric_name(protocol)} (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
