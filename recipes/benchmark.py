"""Benchmark: meta-learned starts vs transfer fine-tuning and simple baselines on held-out tasks.

    llm-meta benchmark --config recipes/configs/benchmark_quick.yaml [key.sub=value ...]

Reads top to bottom: train the starts (FOMAML, Reptile, transfer; one run per meta-seed, reused
when already on disk), fix the evaluation episodes (generated once per task/protocol/K/seed,
hashed, cached), score every method on exactly those episodes with the same adaptation budget
and head initialisation (each run's scores cached, so an interrupted benchmark resumes), then write
a markdown report, a JSON file with every number, plots, and `kept.tar.gz`: the scores and the
starts' fingerprints, without their tensors, from which a run elsewhere resumes (`keep_run`).

Methods: prototype (frozen, no steps), linear_probe (head only), finetune (LoRA + head from the
untrained start), transfer / fomaml / maml / metasgd / reptile (LoRA + head from the trained
start), protonet (nearest prototype from the ProtoNet-trained start, no steps), hypernet (the adapter a
trained hypernetwork writes from the support set, no steps), hypernet_adapt (that adapter + the
shared adaptation), hypernet_fomaml (generator trained through FOMAML, + adaptation). Each row
also gets its wall time per episode (generate/adapt + score the queries).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from tqdm import tqdm

from llm_meta.bench.config import SELECT, Config, method_spec, shared_inner, start_algorithms, start_family
from llm_meta.bench.scores import (cached_episodes, candidate_ids, episodes_hash, episodic_episodes, fullway_episodes,
                                   load_or_score, ner_episodes, protocol_key, read_scores, score_candidates, score_file,
                                   start_candidates)
from llm_meta.bench.starts import (KEPT, code_fingerprint, has_tensors, keep_run, load_start, params_fingerprint,
                                   runtime, start_dir, train_start, untrained_start)
from llm_meta.config import to_dict
from llm_meta.data.episodes import WordExamples
from llm_meta.data.tasks import load_task
from llm_meta.eval.evaluation import episode_score
from llm_meta.eval.report import (ScoreRecord, benchmark_report, contrast_statistics, plot_scores, primary_contrast,
                                  records_json)
from llm_meta.eval.statistics import UNIT, Outcomes, text_index
from llm_meta.io.atomic import write_atomic
from llm_meta.io.outputs import claim_run
from llm_meta.progress import progress_bar

__all__ = ["Config", "main"]  # what `llm-meta benchmark` reads
BENCHMARK_FORMAT = "llm_meta.benchmark/1"  # the output folder's own llm_meta.json
# What a benchmark writes into its folder: `--overwrite` removes these (and nothing else) first.
BENCHMARK_ENTRIES = ("starts", "scores", "episodes", "report.md", "results.json", "accuracy_vs_k.png", KEPT)


def main(cfg: Config, trust_remote_code: bool = False) -> dict:
    """Run the benchmark of `cfg` in `cfg.output_dir` (continuing one that is there); its results.
    `trust_remote_code`: let the base model's repo run its own code (the caller's choice only).

    Raises:
        OutputError: output_dir is not a folder the benchmark may write (`llm_meta.io.outputs.claim_run`).
        ValueError: no meta-seed, a method without a training config, or a primary contrast naming no
            method run.
    """
    if not cfg.meta_seeds:  # every start, the untrained one too, is made per meta-seed
        raise ValueError("meta_seeds is empty: give at least one (meta_seeds=[0])")
    algorithms = start_algorithms(cfg)  # reads every training config once
    specs = {m: method_spec(m, algorithms) for m in cfg.methods}
    missing = sorted({start for start, _ in specs.values()} - {"untrained"} - set(cfg.train_configs))
    if missing:
        raise ValueError(f"no training config for start(s) {missing}: add train_configs.<name>: <yaml file>")
    primary_contrast(cfg, None)  # a primary naming a method not run fails now, not after the training
    with claim_run(cfg.output_dir, BENCHMARK_FORMAT, BENCHMARK_ENTRIES, resume=None,
                   overwrite=cfg.overwrite) as out:
        return run(cfg, specs, out, trust_remote_code)


def run(cfg: Config, specs: dict[str, tuple], out: Path, trust_remote_code: bool = False) -> dict:
    """The benchmark itself, in the folder `main` has claimed."""

    # Starts: one untrained LoRA and one trained adapter per (training method, meta-seed). The
    # untrained start of meta-seed s is the exact step-0 start of that seed's training runs. A start
    # kept without its tensors (`keep_run`) is known by its fingerprint and selection only, and is
    # loaded (trained again) below only if a score it enters is not in out/scores.
    starts, fingerprints, trained = {}, {}, {}
    for seed in cfg.meta_seeds:
        body, starts[("untrained", seed)] = untrained_start(cfg.model, seed, trust_remote_code)
        fingerprints[("untrained", seed)] = params_fingerprint(starts[("untrained", seed)])
    names = sorted({start for start, _ in specs.values()} - {"untrained"})

    def load(name: str, seed: int, need: str = "record") -> None:
        run_dir = train_start(cfg, name, seed, out, need=need, trust_remote_code=trust_remote_code)
        starts[(name, seed)], fingerprints[(name, seed)], trained[f"{name}/seed{seed}"] = load_start(body, run_dir)
    for name in names:
        for seed in cfg.meta_seeds:
            load(name, seed)

    # Fixed evaluation settings: (protocol, task, K) -> episodes, hashed and cached on disk.
    settings = {}
    for task in map(load_task, cfg.episodic.tasks):
        for k in cfg.episodic.shots:
            settings[("episodic", task.name, k)] = cached_episodes(
                out, f"episodic-{task.name}-k{k}", protocol_key(cfg.episodic),
                lambda t=task, k=k: episodic_episodes(cfg.episodic, t, k))
    for task in map(load_task, cfg.fullway.tasks):
        for k in cfg.fullway.shots:
            settings[("fullway", task.name, k)] = cached_episodes(
                out, f"fullway-{task.name}-k{k}", protocol_key(cfg.fullway),
                lambda t=task, k=k: fullway_episodes(cfg.fullway, t, k))
    if cfg.ner.split.data:
        name = Path(cfg.ner.split.data).stem
        for k in cfg.ner.shots:
            settings[("ner", name, k)] = cached_episodes(out, f"ner-{name}-k{k}", protocol_key(cfg.ner),
                                                         lambda k=k: ner_episodes(cfg.ner, k), WordExamples)

    # Score every method on every setting: per-episode outcomes of each meta-seed's run, one record
    # per (method, setting). Each (start, adaptation, episodes) run is kept in out/scores, so an
    # interrupted benchmark resumes and adding a method or a meta-seed scores only what is new.
    primary = primary_contrast(cfg, settings)
    units = [(m, s) for m in cfg.methods for s in settings]
    texts = {key: text_index([ep.query.texts for ep in setting["episodes"]]) for key, setting in settings.items()}
    code = [code_fingerprint(), runtime(body)]
    # +select: the class names each trained start's family was meta-trained with (the same for every
    # meta-seed of a start).
    family = {name: start_family(cfg, name)
              for name in sorted({specs[m][0] for m in cfg.methods if m.partition("@")[0].endswith(SELECT)})}

    def selects(method: str) -> bool:
        return method.partition("@")[0].endswith(SELECT)

    def score_path(method: str, key: tuple, seed: int) -> Path:
        start, inner = specs[method][0], specs[method][1](cfg.adapt)
        ids = candidate_ids(fingerprints, start, seed, selects(method))
        shared = [to_dict(shared_inner(method, cfg)), family[start]] if selects(method) else []
        return score_file(out, [*code, to_dict(cfg.model), to_dict(inner), *shared, settings[key]["hash"], *ids])

    def seeds_of(method: str) -> list[int]:
        # The untrained LoRA's random A matters only once LoRA trains (B = 0 until then).
        start, inner = specs[method][0], specs[method][1](cfg.adapt)
        return cfg.meta_seeds if start != "untrained" or (inner.train_lora and inner.steps > 0) else cfg.meta_seeds[:1]
    # Kept starts whose tensors a missing score needs: train them again now, before any score is read,
    # so that every score of the report comes from the tensors it is keyed by. The scores read here
    # are not read again below.
    known = {path: read_scores(path) for m, key in units for s in seeds_of(m) if starts[(specs[m][0], s)] is None
             for path in [score_path(m, key, s)]}
    for name, seed in sorted({(specs[m][0], s) for m, key in units for s in seeds_of(m)
                              if starts[(specs[m][0], s)] is None and known[score_path(m, key, s)] is None}):
        load(name, seed, need="tensors")
    # A kept start trained again as the init of another (`init: start:NAME`) has new tensors on disk:
    # read them, so its fingerprint (hence its scores' keys) and start.json are those of the new run.
    for name, seed in [k for k, params in starts.items() if params is None]:
        if has_tensors(start_dir(out, name, seed)):
            load(name, seed)
    records = []
    for done, (method, key) in enumerate(progress_bar(units, desc="benchmark"), 1):
        start, inner = specs[method][0], specs[method][1](cfg.adapt)
        seeds, episodes, name = seeds_of(method), settings[key]["episodes"], "/".join(map(str, key))
        shared = shared_inner(method, cfg)
        runs = [load_or_score(path, lambda s=s: score_candidates(body, start_candidates(starts, start, s, selects(method)),
                                                                 start, episodes, inner, shared, family.get(start)),
                              known[path] if path in known else read_scores(path))
                for s in seeds for path in [score_path(method, key, s)]]
        record = ScoreRecord(method, name, Outcomes([run for run, _, _, _ in runs], *texts[key]),
                             {s: [episode_score(o) for o in run] for s, (run, _, _, _) in zip(seeds, runs)},
                             sum(t for _, t, _, _ in runs) / (len(seeds) * len(episodes)),
                             all(hit for _, _, hit, _ in runs), episodes_hash(episodes),
                             {s: picks for s, (_, _, _, picks) in zip(seeds, runs)} if selects(method) else {})
        records.append(record)
        # One line per unit even without a terminal (tqdm draws no bar in a log file).
        tqdm.write(f"[{done}/{len(units)}] {method} on {name}: {100 * sum(record.by_seed) / len(seeds):.1f} "
                   f"({record.seconds:.2f} s/episode{', cached' if record.cached else ''})", file=sys.stderr)

    estimates, contrasts = contrast_statistics(cfg, settings, records, primary)
    report = benchmark_report(cfg, settings, estimates, contrasts, trained, records)
    write_atomic(out / "report.md", report)
    results = {"config": to_dict(cfg), "starts": trained,
               "hashes": {"/".join(map(str, k)): v["hash"] for k, v in settings.items()},
               **records_json(records), "interval_unit": UNIT,
               "estimates": {m: {k: dataclasses.asdict(e) for k, e in per.items()} for m, per in estimates.items()},
               "contrasts": contrasts}
    write_atomic(out / "results.json", json.dumps(results, indent=1))
    keep_run(out, out / KEPT)  # small enough to carry to another machine (or commit) and resume from there
    plot_scores(cfg.methods, settings, estimates, out / "accuracy_vs_k.png")
    print(report)
    return results


if __name__ == "__main__":
    from llm_meta.cli import main as cli_main

    cli_main(["benchmark", *sys.argv[1:]])
