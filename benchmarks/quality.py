"""The quality suite: `llm_meta.adapt` from the untrained start on a diverse set of bundled tasks,
the way a user adapts to a new task, with intervals a reader can trust.

    .venv/bin/python benchmarks/quality.py [--variants default,top2] [--shots 8] [--draws 5]
                                           [--tasks banking77,...] [--out benchmarks/results/quality.json]

For each task, variant, K and support draw d (seed d): K examples per class from the train split,
`adapt` with the variant's config, then every text of a fixed sample of the test split (the
whole split, capped at 2,000 texts; the same texts for every variant and draw) is labelled.
Reported per task: accuracy with a 95% crossed-bootstrap interval over draws and test texts
(`llm_meta.eval.statistics`), macro-F1 (mean over draws, with its lowest and highest draw), and seconds
per adaptation (model load excluded). A variant other than the first is also given as its paired
difference from the first (same draws, same texts).

Tasks (intents, topics, sentiment in three domains, long documents, NER): every one is read from
the offline packages; none of them is a meta-training task of any start here (this is the untrained
start). `yahoo_long`/`dbpedia_long`/`drug_reviews_long` are the same tasks read at 256 tokens, their real
length (SetFit reads MiniLM's and MPNet's own 256 and 384).
`wnut16` is NER on WNUT-16's four held-out entity types (movie, musicartist, product, sportsteam;
recipes/configs/benchmark_ner.yaml): `adapt_tagger` (`llm-meta adapt --ner`) with K mentions per
type drawn from the sentences that hold them, scored on the others by micro entity F1 (seqeval's
exact spans and types; entities of other types count as O), its interval resampling draws and
sentences alike.
Variants: default = `AdaptConfig()` (`TaggerConfig()` for NER) as `llm-meta adapt` runs it (LoRA on
every layer); top2 = LoRA on the top 2 layers only (`model.lora_layers=2`, the default until the
suite measured it); mpnet = the default with the all-mpnet-base-v2 body (`make install`
installs it); steps30, lr3e-3, no_label_names, len128, windows = one setting of the default
changed (30 steps, lr 3e-3, no label names, 128 tokens, long texts read in windows): candidates
for a default, to be run beside it on every task before one is adopted. Add others in VARIANTS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _key in ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY"):  # the table, not the libraries' bars and notices
    os.environ.setdefault(_key, "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

from llm_meta.io.atomic import write_atomic  # noqa: E402
from llm_meta.classifier import AdaptConfig, adapt  # noqa: E402
from llm_meta.config import to_dict  # noqa: E402
from llm_meta.meta.token_heads import entity_counts  # noqa: E402
from llm_meta.eval.metrics import classification_metrics  # noqa: E402
from llm_meta.data.ner import NerConfig, io_to_bio, load_ner, split_ner  # noqa: E402
from llm_meta.data.conll import Sentence, entity_type  # noqa: E402
from llm_meta.eval.statistics import UNIT, Outcomes, crossed_bootstrap  # noqa: E402
from llm_meta.tagger import TaggerConfig, adapt_tagger, support_sentences  # noqa: E402
from llm_meta.data.tasks import Task, load_task  # noqa: E402

TEST_CAP = 2000  # test texts per task (a fixed random sample of a larger split)
# name -> (registry task, kind, model overrides)
SUITE: dict[str, tuple[str, str, dict[str, Any]]] = {
    "banking77": ("banking77", "intents, 77 classes", {}),
    "hwu": ("hwu", "intents, 64 classes", {}),
    "mcid": ("mcid", "intents, 16 classes", {}),
    "stackoverflow": ("stackoverflow", "topics, 20 classes", {}),
    "yahoo": ("yahoo", "topics, 10 classes", {}),
    "dbpedia": ("dbpedia", "topics, 219 classes", {}),
    "tweets_airline": ("tweets_airline", "sentiment, 3 classes", {}),
    "tweets_apple": ("tweets_apple", "sentiment, 3 classes", {}),
    "drug_reviews": ("drug_reviews", "sentiment, 3 classes", {}),
    "yahoo_long": ("yahoo", "topics, long documents (256 tokens)", {"max_length": 256}),
    "dbpedia_long": ("dbpedia", "topics, long documents (256 tokens)", {"max_length": 256}),
    "drug_reviews_long": ("drug_reviews", "sentiment, long reviews (256 tokens)", {"max_length": 256}),
    "wnut16": ("wnut16", "NER, 4 held-out entity types", {}),
}
NER_TASKS = {"wnut16": ["movie", "musicartist", "product", "sportsteam"]}  # name -> held-out types


def _model(**changes: Any) -> Callable[[Any], Any]:
    """A variant that changes `cfg.model` (of an AdaptConfig or a TaggerConfig)."""
    return lambda cfg: dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))


def _inner(**changes: Any) -> Callable[[Any], Any]:
    """A variant that changes `cfg.inner` (the adaptation)."""
    return lambda cfg: dataclasses.replace(cfg, inner=dataclasses.replace(cfg.inner, **changes))


# Candidates for a default are variants: run them next to "default" on every suite task.
VARIANTS: dict[str, Callable[[Any], Any]] = {
    "default": lambda cfg: cfg,
    "top2": _model(lora_layers=2),
    "mpnet": _model(name="all-mpnet-base-v2"),
    "steps30": _inner(steps=30),
    "lr3e-3": _inner(lr=3e-3),
    "no_label_names": _inner(label_examples=0),
    "len128": _model(max_length=128),
    "windows": _model(long_texts="windows"),
}


def test_sample(task: Task, cap: int = TEST_CAP) -> tuple[list[str], list[str]]:
    """(texts, labels) of the test split, or of a fixed random `cap` of them (seed 0)."""
    ds = task.split("test")
    rows = sorted(random.Random(0).sample(range(len(ds)), cap)) if len(ds) > cap else range(len(ds))
    texts, labels = ds["text"], ds["label"]
    return [texts[i] for i in rows], [labels[i] for i in rows]


def scored(predicted: list[str], labels: list[str]) -> dict[str, Any]:
    """Per-text correctness, accuracy and macro-F1 of predicted class names against the test labels."""
    index = {name: i for i, name in enumerate(sorted(set(predicted) | set(labels)))}
    metrics = classification_metrics([index[p] for p in predicted], [index[y] for y in labels])
    return {"correct": [int(p == y) for p, y in zip(predicted, labels)], **metrics}


def run_draws(results: dict[str, Any], out_path: Path, key: str, entry: dict[str, Any],
              one: Callable[[int], dict[str, Any]], draws: int, describe: Callable[[dict[str, Any]], str]) -> None:
    """Draws len(runs) .. draws-1 of row `key` (`one(draw)` each), the JSON rewritten whole after each
    draw, so an interrupted run loses at most the draw in progress and a rerun goes on from there."""
    runs = results.get(key, {}).get("runs", [])
    for draw in range(len(runs), draws):
        runs.append(one(draw))
        print(f"{key} draw {draw}: {describe(runs[-1])}", flush=True)
        results[key] = {**entry, "runs": runs}
        write_atomic(out_path, json.dumps(results))


def run_one(task: Task, model_overrides: dict[str, Any], variant: str, shots: int, draw: int,
            texts: list[str], labels: list[str]) -> dict[str, Any]:
    """One support draw: adapt, label the test sample, and score it."""
    cfg = AdaptConfig(task=task.name, shots=shots, seed=draw)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model_overrides))
    clf = adapt(task=task, cfg=VARIANTS[variant](cfg))
    start = time.perf_counter()
    predicted = [clf.labels[i] for i in clf.predict_proba(texts).argmax(1).tolist()]
    return {**scored(predicted, labels), **timed(clf.metadata), "predict_seconds": round(time.perf_counter() - start, 2)}


def timed(metadata: dict[str, Any]) -> dict[str, Any]:
    """A task model's adaptation seconds without loading the body (load_seconds: the loading, every
    candidate's body with adapter=auto), and the start it chose, if it chose one (adapter=auto, or a
    given adapter's choice) with the seconds the choice took and how many candidates it judged by
    their fit (0 when the family's labels decided)."""
    selection = metadata.get("start_selection")
    chosen = {"start_chosen": selection["chosen"], "select_seconds": metadata["adapt_timings"].get("start_selection"),
              "candidates_fitted": len(selection.get("leave_one_out_fit") or {})} if selection else {}
    load = metadata["adapt_timings"].get("model_load", 0.0)
    return {"adapt_seconds": metadata["adapt_seconds"] - load, "load_seconds": load, **chosen}


def run_ner(name: str, variant: str, shots: int, draw: int, test: list[Sentence]) -> dict[str, Any]:
    """One support draw of an NER task: adapt a tagger, tag every test sentence not in its support,
    and keep per-sentence entity counts (true positives, false positives, false negatives)."""
    cfg = VARIANTS[variant](TaggerConfig(data=SUITE[name][0], types=NER_TASKS[name], shots=shots, seed=draw))
    tagger = adapt_tagger(cfg)
    support, labels = support_sentences(load_ner(cfg.data), cfg)
    seen = {tuple(words) for words in support.texts}
    ids = [i for i, s in enumerate(test) if tuple(s.tokens) not in seen]
    start = time.perf_counter()
    predicted = tagger.tag([test[i].tokens for i in ids])
    index = {t: y for y, t in enumerate(labels)}
    references = [[index.get(entity_type(t), 0) for t in test[i].tags] for i in ids]  # other types: O
    counts = [entity_counts(io_to_bio(p, labels), io_to_bio(r, labels)) for p, r in zip(predicted, references)]
    tp, fp, fn = np.sum(counts, axis=0)
    return {"counts": counts, "text_ids": ids, "micro_f1": float(2 * tp / max(2 * tp + fp + fn, 1)),
            **timed(tagger.metadata), "predict_seconds": round(time.perf_counter() - start, 2)}


def ner_test(name: str) -> list[Sentence]:
    """Every sentence of the NER task that holds a held-out type (support draws come from these too)."""
    return split_ner(NerConfig(data=SUITE[name][0], held_out_types=NER_TASKS[name]))[0]["test"]


def summarise(runs: list[dict[str, Any]], reference: list[dict[str, Any]] | None, n_texts: int) -> dict[str, Any]:
    """Accuracy (micro entity F1 for NER) with its crossed interval over draws and texts, the paired
    difference from `reference` (the same draws), macro-F1 for classification."""
    def outcomes(rs: list[dict[str, Any]]) -> Outcomes:
        if "counts" in rs[0]:  # NER: [Q, 3] entity counts per query sentence
            return Outcomes(values=[[np.asarray(r["counts"], dtype=float).reshape(-1, 3) for r in rs]],
                            text_ids=[np.asarray(r["text_ids"]) for r in rs], n_texts=n_texts)
        return Outcomes(values=[[np.asarray(r["correct"], dtype=float)[:, None] for r in rs]],
                        text_ids=[np.arange(n_texts)] * len(rs), n_texts=n_texts)

    statistic = "micro_f1" if "counts" in runs[0] else "accuracy"
    out = {"statistic": statistic, "accuracy": crossed_bootstrap(outcomes(runs), statistic=statistic).__dict__,
           "adapt_seconds": float(np.mean([r["adapt_seconds"] for r in runs]))}
    if statistic == "accuracy":
        f1 = [r["macro_f1"] for r in runs]
        out.update(macro_f1=float(np.mean(f1)), macro_f1_range=[min(f1), max(f1)])
    if reference is not None:
        out["difference"] = crossed_bootstrap(outcomes(runs), outcomes(reference), statistic=statistic).__dict__
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(SUITE))
    parser.add_argument("--variants", default="default,top2")
    parser.add_argument("--shots", type=int, nargs="+", default=[8])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/quality.json"))
    parser.add_argument("--table", action="store_true", help="only print the table of what --out holds")
    parser.add_argument("--readme", action="store_true", help="only print README.md's short table (adapt vs SetFit) at K = --shots")
    parser.add_argument("--targets", action="store_true", help="only print adapt against SetFit, per body, task by task, at K = --shots")
    args = parser.parse_args()
    variants = args.variants.split(",")
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}  # a rerun continues
    # The configs the rows were made with: tests/test_quality_suite.py keeps the default equal to it.
    if args.table:
        return table(results, variants)
    if args.readme:
        return readme_table(results, shots=args.shots[0])
    if args.targets:
        return targets(results, shots=args.shots[0])
    configs = results.setdefault("configs", {})
    configs.update({v: to_dict(VARIANTS[v](AdaptConfig())) for v in variants if v in VARIANTS})
    configs.update({f"ner_{v}": to_dict(VARIANTS[v](TaggerConfig())) for v in variants if v in VARIANTS})
    for name in args.tasks.split(","):
        registry_name, kind, overrides = SUITE[name]
        if name in NER_TASKS:
            test = ner_test(name)
            n_texts, one = len(test), lambda variant, shots, draw: run_ner(name, variant, shots, draw, test)
        else:
            task = load_task(registry_name)
            texts, labels = test_sample(task)
            n_texts, one = len(texts), lambda variant, shots, draw: run_one(task, overrides, variant, shots, draw,
                                                                            texts, labels)
        metric = "micro F1" if name in NER_TASKS else "accuracy"
        for shots in args.shots:
            for variant in variants:
                entry = {"task": name, "kind": kind, "shots": shots, "variant": variant, "test_texts": n_texts}
                run_draws(results, out_path, f"{name}/K{shots}/{variant}", entry,
                          lambda draw: one(variant, shots, draw), args.draws,
                          lambda r: f"{metric} {100 * (r['micro_f1'] if 'counts' in r else np.mean(r['correct'])):.1f}, "
                                    f"{r['adapt_seconds']:.1f} s")
    table(results, variants)


def entry_for(results: dict[str, Any], name: str, shots: int, variant: str) -> dict[str, Any] | None:
    """The runs of a task, K and variant. A peer (SetFit) reads up to its body's own 256+ tokens, so its
    row of a task is also the row of that task's 256-token reading (`drug_reviews` for
    `drug_reviews_long`: the same support draws and test texts), where the comparison is like for like."""
    entry = results.get(f"{name}/K{shots}/{variant}")
    if entry is None and variant.startswith("setfit_") and name.endswith("_long"):
        entry = results.get(f"{name[:-len('_long')]}/K{shots}/{variant}")
    return entry


README_TASKS = ["banking77", "mcid", "stackoverflow", "yahoo", "tweets_apple", "drug_reviews_long", "wnut16"]


def readme_table(results: dict[str, Any], ours: str = "default", peer: str = "setfit_minilm", shots: int = 8) -> None:
    """README.md's table: a few suite tasks, `adapt`'s default next to SetFit with the same body."""
    print("| task | `adapt` | SetFit | `adapt` − SetFit (paired) | seconds, `adapt` / SetFit |")
    print("|---|---|---|---|---|")
    for name in README_TASKS:
        first, other = results.get(f"{name}/K{shots}/{ours}"), entry_for(results, name, shots, peer)
        if first is None:
            continue
        a = summarise(first["runs"], None, first["test_texts"])
        cells = [f"{100 * a['accuracy']['mean']:.1f}", "-", "-", f"{a['adapt_seconds']:.0f} / -"]
        if other is not None and len(other["runs"]) == len(first["runs"]):
            b = summarise(other["runs"], first["runs"], other["test_texts"])
            d = b["difference"]  # other − ours: turned round to ours − other
            capped = " (capped)" if any(r.get("capped") for r in other["runs"]) else ""
            cells[1:] = [f"{100 * b['accuracy']['mean']:.1f}{capped}",
                         f"{-100 * d['mean']:+.1f} [{-100 * d['high']:+.1f}, {-100 * d['low']:+.1f}]",
                         f"{a['adapt_seconds']:.0f} / {b['adapt_seconds']:.0f}"]
        kind = "micro entity F1" if a["statistic"] == "micro_f1" else "accuracy"
        print(f"| {name} ({SUITE[name][1]}; {kind}) | " + " | ".join(cells) + " |")


# (adapt's variant, the peer with the same body)
PEERS = [("default", "setfit_minilm"), ("mpnet", "setfit_mpnet")]


def targets(results: dict[str, Any], shots: int = 8) -> None:
    """`adapt` against SetFit with the same body, for every suite task both ran on the same draws:
    the paired difference (adapt − SetFit, crossed interval) and the seconds of each. Then the mean
    difference over the tasks as `adapt`'s default reads them (64 tokens) and like for like (long
    tasks at 256 tokens, where that row exists), the tasks whose interval lies wholly below 0, and
    those where `adapt` takes more than a fifth of SetFit's time."""
    for ours, peer in PEERS:
        lines, default_read, like_for_like, below, slow = [], [], [], [], []
        for name in SUITE:
            first, other = results.get(f"{name}/K{shots}/{ours}"), entry_for(results, name, shots, peer)
            if not first or not other or len(first["runs"]) != len(other["runs"]):
                continue
            s = summarise(first["runs"], other["runs"], first["test_texts"])
            d, seconds = s["difference"], (s["adapt_seconds"], float(np.mean([r["adapt_seconds"] for r in other["runs"]])))
            lines.append(f"| {name} | {100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] | "
                         f"{seconds[0]:.1f} / {seconds[1]:.1f} ({seconds[0] / seconds[1]:.2f}) |")
            if not name.endswith("_long"):
                default_read.append(d["mean"])
            if not (results.get(f"{name}_long/K{shots}/{ours}") and f"{name}_long" in SUITE):
                like_for_like.append(d["mean"])
            below += [name] if d["high"] < 0 else []
            slow += [name] if seconds[0] > seconds[1] / 5 else []
        if not lines:  # no paired rows for this body at this K
            continue
        print(f"\n`adapt` ({ours}) − SetFit ({peer}), K = {shots}, paired over the same draws and texts:\n")
        print("\n".join(["| task | difference [95%] | seconds, adapt / SetFit |", "|---|---|---|", *lines]))
        if default_read:
            print(f"\nMean over {len(default_read)} tasks at adapt's default reading: "
                  f"{100 * np.mean(default_read):+.1f}; like for like (long tasks at 256 tokens): "
                  f"{100 * np.mean(like_for_like):+.1f} over {len(like_for_like)}. "
                  f"Interval below 0: {', '.join(below) or 'none'}. More than a fifth of SetFit's time: "
                  f"{', '.join(slow) or 'none'}.")


def table(results: dict[str, Any], variants: list[str]) -> None:
    """One Markdown table: a row per task and K, a column per variant."""
    print(f"\nAccuracy (micro entity F1 for NER; 95% interval: {UNIT}; here one start, so draws and texts), "
          f"macro-F1, seconds per adaptation (*: measured beside other work, not comparable); differences are "
          f"paired against {variants[0]}.\n")
    print("| task | K | test texts | " + " | ".join(variants) + " |")
    print("|---" * (3 + len(variants)) + "|")
    # A K at which none of the compared variants ran (e.g. MPNet at K = 16) is left out, not a column of "-".
    entries = [r for k, r in results.items() if "/" in k]  # the rows' entries, not "configs"
    compared = {r["shots"] for r in entries if r["variant"] in variants[1:]}
    rows = sorted({(r["task"], r["shots"]) for r in entries if len(variants) == 1 or r["shots"] in compared},
                  key=lambda x: (list(SUITE).index(x[0]), x[1]))
    for name, shots in rows:
        first = results.get(f"{name}/K{shots}/{variants[0]}")
        cells = []
        for variant in variants:
            entry = entry_for(results, name, shots, variant)
            if not entry:
                cells.append("-")
                continue
            paired = first and variant != variants[0] and len(first["runs"]) == len(entry["runs"])
            s = summarise(entry["runs"], first["runs"] if paired else None, entry["test_texts"])
            a = s["accuracy"]
            cell = f"{100 * a['mean']:.1f} [{100 * a['low']:.1f}, {100 * a['high']:.1f}], " \
                   + (f"F1 {100 * s['macro_f1']:.1f}, " if "macro_f1" in s else "") + f"{s['adapt_seconds']:.1f} s" \
                   + ("*" if entry.get("timing") == "shared" else "")
            if first and len(entry["runs"]) != len(first["runs"]):  # a row still being run
                cell += f" ({len(entry['runs'])} draws)"
            if "difference" in s:
                d = s["difference"]
                cell += f"; {100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
            cells.append(cell)
        some = next(r for r in entries if r["task"] == name and r["shots"] == shots)
        # NER scores the test sentences outside each draw's support (`text_ids`): fewer as K grows.
        scored_ids = [len(r["text_ids"]) for r in some["runs"] if "text_ids" in r]
        n = f"{some['test_texts']}" + (f" ({np.mean(scored_ids):.0f} scored)" if scored_ids else "")
        print(f"| {name} ({SUITE[name][1]}) | {shots} | {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
