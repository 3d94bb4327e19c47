"""Issue 59's start benchmark, as benchmarks/starts.yaml declares it: which start, for a text task
nobody trained on.

    .venv/bin/python benchmarks/starts.py build [--starts a,b] [--seeds 0,1,2]   # the starts, timed
    .venv/bin/python benchmarks/starts.py run [--tasks t,...] [--rows r,...] [--shots 8] [--seeds 0]
    .venv/bin/python benchmarks/starts.py table

`build` meta-trains every declared start into runs/start_bench/ (a family start once, under
family/; a start with `seeds: all` once per meta-seed, under seed<s>/), each with its wall time in
build.json; a start already built is kept. `run` adapts every row on every held-out task, K and
support draw as `llm-meta adapt` would (quality.py's test sample and per-text scores), and writes
benchmarks/results/starts.json after each draw (a rerun goes on where it stopped). `table` prints
the declared contrasts with crossed-bootstrap intervals and Holm-adjusted verdicts.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import quality  # noqa: E402  (its environment settings, test sample and scores)
import numpy as np  # noqa: E402

from llm_meta.classifier import AdaptConfig  # noqa: E402
from llm_meta.eval.statistics import (UNIT, Outcomes, crossed_bootstrap, crossed_bootstrap_mean, holm,  # noqa: E402
                                      replicates_for, verdict)
from llm_meta.meta.adaptation import own_adaptation  # noqa: E402
from llm_meta.saving.checkpoint import read_start  # noqa: E402
from llm_meta.start_library import StartRecipe, build_start, start_recipes  # noqa: E402

PROTOCOL = ROOT / "benchmarks" / "starts.yaml"
BENCH = ROOT / "runs" / "start_bench"
OUT = ROOT / "benchmarks" / "results" / "starts.json"


def protocol() -> dict[str, Any]:
    return yaml.safe_load(PROTOCOL.read_text(encoding="utf-8"))


def seeds_of(spec: dict[str, Any], proto: dict[str, Any]) -> list[int]:
    """The meta-seeds a start is built for: every declared one, or the family seed."""
    return list(proto["meta_seeds"]) if spec.get("seeds") == "all" else [proto["family_seed"]]


def start_folder(name: str, seed: int, proto: dict[str, Any]) -> Path:
    """Where start `name` of meta-seed `seed` is built: family/NAME or seed<s>/NAME."""
    per_seed = proto["starts"][name].get("seeds") == "all"
    return BENCH / (f"seed{seed}" if per_seed else "family") / name


def recipe_of(name: str, proto: dict[str, Any]) -> StartRecipe:
    """The start's recipe: one of recipes/configs/starts.yaml, or its own meta-training config."""
    spec = proto["starts"][name]
    if "recipe" in spec:
        return start_recipes(ROOT / "recipes/configs/starts.yaml")[spec["recipe"]]
    return StartRecipe(family="all", config=spec["config"], about=f"{name} (benchmarks/starts.yaml)")


def build(names: list[str], seeds: list[int] | None, proto: dict[str, Any]) -> None:
    """Build every start of `names` for its meta-seeds (those of `seeds` only, if given), one at a time."""
    for name in names:
        for seed in seeds_of(proto["starts"][name], proto):
            if seeds is not None and seed not in seeds:
                continue
            folder = start_folder(name, seed, proto)
            if (folder / "adapter" / "llm_meta.json").is_file():
                print(f"{name} seed {seed}: built before ({folder})", flush=True)
                continue
            os.environ["LLM_META_STARTS"] = str(folder.parent)
            build_start(name, f"seed={seed}", recipes={name: recipe_of(name, proto)})
            took = json.loads((folder / "build.json").read_text())["build_seconds"]
            print(f"{name} seed {seed}: built in {took / 60:.1f} min -> {folder}", flush=True)


def auto_folder(row: dict[str, Any], seed: int, proto: dict[str, Any]) -> Path:
    """The starts folder an `adapter: auto` row sees at meta-seed `seed`: links to its declared
    starts and nothing else (one folder per set of starts, so rows never see each other's)."""
    folder = BENCH / "auto" / f"seed{seed}-{'+'.join(sorted(row['starts']))}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in row["starts"]:
        link, target = folder / name, start_folder(name, seed, proto)
        if not (target / "adapter" / "llm_meta.json").is_file():
            raise SystemExit(f"start {name} of meta-seed {seed} is not built: benchmarks/starts.py build first")
        if not link.is_symlink():
            link.symlink_to(target.resolve(), target_is_directory=True)
    return folder


def row_seeds(row: dict[str, Any], proto: dict[str, Any]) -> list[int]:
    """The meta-seeds a row has runs for: its start's; for `auto`, every declared one if any of its
    starts is built per meta-seed, else the family seed; else one."""
    if "start" in row:
        return seeds_of(proto["starts"][row["start"]], proto)
    if row.get("adapter") == "auto":  # one run per meta-seed if any of its starts is built per meta-seed
        per_seed = any(proto["starts"][name].get("seeds") == "all" for name in row["starts"])
        return list(proto["meta_seeds"]) if per_seed else [proto["family_seed"]]
    return [0]


def configure(cfg: Any, row: dict[str, Any], seed: int, proto: dict[str, Any]) -> Any:
    """`cfg` (an AdaptConfig or TaggerConfig) as the row declares it, at meta-seed `seed`."""
    if "model" in row:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **row["model"]))
    if "start" in row:
        adapter = start_folder(row["start"], seed, proto) / "adapter"
        if not (adapter / "llm_meta.json").is_file():
            raise SystemExit(f"start {row['start']} of meta-seed {seed} is not built: benchmarks/starts.py build first")
        cfg = dataclasses.replace(cfg, adapter=str(adapter))
        if isinstance(cfg, AdaptConfig):  # as given, adapted as its algorithm was trained
            cfg = dataclasses.replace(cfg, select_start="off",
                                      inner=own_adaptation(cfg.inner, read_start(adapter).get("algorithm")))
    if row.get("adapter") == "auto":
        os.environ["LLM_META_STARTS"] = str(auto_folder(row, seed, proto))
        cfg = dataclasses.replace(cfg, adapter="auto")
        if isinstance(cfg, AdaptConfig):  # a tagger has one rule (start_choice.choose's "auto")
            cfg = dataclasses.replace(cfg, select_start=row.get("select_start", "auto"))
    return cfg


def run(tasks: list[str], rows: list[str], shots: list[int], seeds: list[int] | None, proto: dict[str, Any],
        out: Path = OUT) -> None:
    """Every (task, K, row, meta-seed, draw) not yet in `out`, written after each draw."""
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["protocol"] = proto
    for name in tasks:
        ner = name == proto["ner_held_out"]
        table = proto["ner_rows"] if ner else proto["rows"]
        if ner:
            test = quality.ner_test(name)
            n_texts = len(test)
        else:
            task = quality.load_task(name)
            texts, labels = quality.test_sample(task, proto["test_cap"])
            n_texts = len(texts)
        for k in shots:
            for row_name in [r for r in rows if r in table]:
                row = table[row_name]
                for seed in row_seeds(row, proto):
                    if seeds is not None and seed not in seeds:
                        continue
                    entry = {"task": name, "shots": k, "row": row_name, "meta_seed": seed, "test_texts": n_texts}

                    quality.VARIANTS["_row"] = lambda cfg: configure(cfg, row, seed, proto)

                    def one(draw: int) -> dict[str, Any]:
                        if ner:
                            return quality.run_ner(name, "_row", k, draw, test)
                        return quality.run_one(task, {}, "_row", k, draw, texts, labels)

                    quality.run_draws(results, out, f"{name}/K{k}/{row_name}/s{seed}", entry, one, proto["draws"],
                                      lambda r: f"{100 * (r['micro_f1'] if 'counts' in r else sum(r['correct']) / len(r['correct'])):.1f}, "
                                                f"{r['adapt_seconds']:.1f} s")


def sides(contrast: str) -> tuple[str, ...]:
    """("A", "B") of a declared contrast "A vs B"."""
    return tuple(x.strip() for x in contrast.split(" vs "))


def outcomes(results: dict[str, Any], task: str, k: int, row: str, proto: dict[str, Any],
             seeds: list[int] | None = None) -> Outcomes | None:
    """A row's per-text outcomes on a task at K: [meta-seed][draw] -> [texts, 1] correct, or
    [sentences, 3] entity counts for NER; None until every meta-seed (of `seeds`, if given) has
    every draw."""
    table = proto["ner_rows"] if task == proto["ner_held_out"] else proto["rows"]
    entries = [results.get(f"{task}/K{k}/{row}/s{seed}") for seed in row_seeds(table[row], proto)
               if seeds is None or seed in seeds or len(row_seeds(table[row], proto)) == 1]
    if any(e is None or len(e["runs"]) < proto["draws"] for e in entries):
        return None
    runs = [e["runs"][:proto["draws"]] for e in entries]
    n = entries[0]["test_texts"]
    if "counts" in runs[0][0]:
        return Outcomes([[np.asarray(r["counts"], float).reshape(-1, 3) for r in seed] for seed in runs],
                        [np.asarray(r["text_ids"]) for r in runs[0]], n)
    return Outcomes([[np.asarray(r["correct"], float)[:, None] for r in seed] for seed in runs],
                    [np.arange(n)] * len(runs[0]), n)


def report(results: dict[str, Any], proto: dict[str, Any], seeds: list[int] | None = None) -> str:
    """The declared table: every row per held-out task and on their mean, then every declared
    contrast (mean over tasks, paired), Holm-adjusted over all but the primary; NER apart.
    `seeds`: only these meta-seeds of the rows trained per meta-seed (a preliminary table)."""
    tasks, lines = list(proto["held_out"]), [f"Accuracy, % (95% interval: {UNIT}).", ""]
    if seeds is not None:
        lines[:0] = [f"PRELIMINARY: meta-seed(s) {', '.join(map(str, seeds))} only of the rows trained per meta-seed "
                     f"(declared: {', '.join(map(str, proto['meta_seeds']))}).", ""]
    get = functools.partial(outcomes, seeds=seeds)
    contrasts = []
    for k in proto["shots"]:
        lines += [f"K = {k}:", "", "| row | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
        for row in proto["rows"]:
            got = [get(results, t, k, row, proto) for t in tasks]
            cells = [str(crossed_bootstrap(o)) if o is not None else "-" for o in got]
            mean = str(crossed_bootstrap_mean([(o, None) for o in got])) if all(o is not None for o in got) else "-"
            lines.append(f"| {row} | " + " | ".join(cells) + f" | {mean} |")
        lines.append("")
        for text in proto["contrasts"]:
            a, b = sides(text)
            got = [(get(results, t, k, a, proto), get(results, t, k, b, proto)) for t in tasks]
            if all(x is not None and y is not None for x, y in got):
                contrasts.append({"contrast": text, "K": k, "got": got,
                                  "primary": proto["primary"] == f"{text} on mean at K={k}"})
    n_boot = replicates_for(len(contrasts))
    for c in contrasts:
        c["estimate"] = crossed_bootstrap_mean(c.pop("got"), n_boot=n_boot)
    secondary = [c for c in contrasts if not c["primary"]]
    for c, p in zip(secondary, holm([c["estimate"].p for c in secondary])):
        c["p_adjusted"] = p
    lines += ["| contrast (mean over the held-out tasks) | K | difference, points | Holm p | verdict |",
              "|---|---|---|---|---|"]
    for c in contrasts:
        p = c.get("p_adjusted", c["estimate"].p)
        lines.append(f"| {c['contrast']}{' (primary)' if c['primary'] else ''} | {c['K']} | "
                     f"{100 * c['estimate'].mean:+.1f} [{100 * c['estimate'].low:+.1f}, {100 * c['estimate'].high:+.1f}]"
                     f" | {p:.3g} | {verdict(c['estimate'], p)} |")
    for text in proto["per_task"]:
        a, b = sides(text)
        for k in proto["shots"]:
            cells = []
            for t in tasks:
                x, y = get(results, t, k, a, proto), get(results, t, k, b, proto)
                d = crossed_bootstrap(x, y) if x is not None and y is not None else None
                cells.append(f"{t} {100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]" if d else f"{t} -")
            lines += ["", f"{text}, per task, K = {k}: " + "; ".join(cells)]
    ner = proto["ner_held_out"]
    for k in proto["shots"]:  # what the choice took, per task: how often each start over draws and meta-seeds
        for row, spec, among in [(r, spec, tasks) for r, spec in proto["rows"].items()] + \
                [(f"{r} (NER)", spec, [ner]) for r, spec in proto["ner_rows"].items()]:
            if spec.get("adapter") != "auto":
                continue
            runs = {t: [r for key, e in results.items() if key.startswith(f"{t}/K{k}/{row.split()[0]}/")
                        and (seeds is None or int(key.rpartition("/s")[2]) in seeds) for r in e["runs"]] for t in among}
            picks = {t: Counter(r.get("start_chosen", "untrained") for r in runs[t]) for t in among}
            if any(picks.values()):
                lines += ["", f"{row} chose, K = {k}: " + "; ".join(
                    f"{t} " + ", ".join(f"{n} {c}" for n, c in picks[t].most_common()) for t in among if picks[t])]
                # its cost, median over runs: seconds per candidate judged by its fit (runs from before
                # `candidates_fitted` was recorded: every declared start and the untrained one), and the
                # seconds loading every candidate's body
                per = [[r["select_seconds"] / r.get("candidates_fitted", 1 + len(spec["starts"])) for r in runs[t]
                        if r.get("select_seconds") is not None and r.get("candidates_fitted", 1) > 0] for t in among]
                load = [[r["load_seconds"] for r in runs[t] if "load_seconds" in r] for t in among]
                lines.append(f"{row}'s cost, K = {k} (median): " + "; ".join(
                    f"{t} {np.median(p):.2f} s per candidate fitted" + (f", {np.median(ls):.1f} s loading" if ls else "")
                    for t, p, ls in zip(among, per, load) if p))
    for k in proto["shots"]:
        got = {row: get(results, ner, k, row, proto) for row in proto["ner_rows"]}
        cells = [f"{row} {crossed_bootstrap(o, statistic='micro_f1')}" for row, o in got.items() if o is not None]
        for text in proto["ner_contrasts"]:
            a, b = sides(text)
            if got.get(a) is not None and got.get(b) is not None:
                d = crossed_bootstrap(got[a], got[b], statistic="micro_f1")
                cells.append(f"{text} {100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]")
        lines += ["", f"NER ({ner}, micro entity F1), K = {k}: " + ("; ".join(cells) or "-")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["build", "run", "table"])
    parser.add_argument("--starts", default=None, help="build: these starts only (comma-separated)")
    parser.add_argument("--seeds", default=None, help="these meta-seeds only (comma-separated)")
    parser.add_argument("--tasks", default=None)
    parser.add_argument("--rows", default=None)
    parser.add_argument("--shots", type=int, nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    proto = protocol()
    seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
    if args.action == "build":
        return build(args.starts.split(",") if args.starts else list(proto["starts"]), seeds, proto)
    if args.action == "run":
        tasks = args.tasks.split(",") if args.tasks else [*proto["held_out"], proto["ner_held_out"]]
        rows = args.rows.split(",") if args.rows else [*proto["rows"], *proto["ner_rows"]]
        return run(tasks, rows, args.shots or proto["shots"], seeds, proto, args.out)
    print(report(json.loads(args.out.read_text()) if args.out.is_file() else {}, proto, seeds))


if __name__ == "__main__":
    main()
