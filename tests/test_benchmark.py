"""The benchmark machinery on a tiny budget: identical episodes for every method, reuse, outputs."""

import dataclasses
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from llm_meta.meta.core import InnerConfig
from llm_meta.modeling.body import ModelConfig
from llm_meta import bench, meta_training
from llm_meta.bench import scores as bench_scores
from llm_meta.eval.report import plot_scores
from recipes import benchmark
from llm_meta.bench.config import Config, EpisodicConfig, FullwayConfig
from tests.test_classifier import toy  # noqa: F401  (fixture: a folder with train/test csv files)
from tests.test_meta_train import ROOT, tiny_overrides

TRAINED = ("fomaml", "hypernet", "hypernet_fomaml", "maml", "metasgd", "protonet", "reptile", "transfer")  # default methods


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory, tiny_bert_dir, toy):  # noqa: F811
    out = tmp_path_factory.mktemp("bench")
    train = [o for o in tiny_overrides(tiny_bert_dir, toy / "train.csv", out / "unused", steps=2)
             if not o.startswith("output_dir=")]
    cfg = Config(output_dir=str(out), meta_seeds=[0, 1], train_overrides=train,
                 model=ModelConfig(name=str(tiny_bert_dir), max_length=48), adapt=InnerConfig(steps=2),
                 episodic=EpisodicConfig(tasks=[str(toy)], n_way=3, shots=[1, 2], q_query=2, episodes=3),
                 fullway=FullwayConfig(tasks=[str(toy)], shots=[1], seeds=[0, 1]))
    first = benchmark.main(cfg)
    return out, cfg, first


def test_every_method_scored_identical_episodes(results_dir):
    out, cfg, results = results_dir
    settings = set(results["hashes"])
    name = Path(cfg.episodic.tasks[0]).name
    assert settings == {f"episodic/{name}/1", f"episodic/{name}/2", f"fullway/{name}/1"}
    for method in cfg.methods:
        assert results["episodes_seen"][method] == results["hashes"]
        assert [len(results["scores"][method][s]) for s in sorted(settings)] == [3, 3, 2]
    # prototype = 0 steps: scores are nearest-prototype accuracies, the same on a rerun
    assert all(0 <= x <= 1 for x in results["scores"]["prototype"][f"episodic/{name}/1"])


def test_rerun_reuses_cached_episodes_and_trained_starts(results_dir):
    out, cfg, first = results_dir
    starts = sorted(p.name for p in (out / "starts").iterdir())
    assert starts == [f"{m}-seed{s}" for m in TRAINED for s in (0, 1)]
    mtimes = {p: p.stat().st_mtime for p in (out / "starts").rglob("adapter_model.safetensors")}
    again = benchmark.main(cfg)
    assert again["hashes"] == first["hashes"]
    assert again["scores"] == first["scores"]  # deterministic on CPU given the same episodes and starts
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes  # nothing retrained


def test_rerun_reads_cached_scores_and_rescores_an_unreadable_one(results_dir, monkeypatch):
    import torch

    out, cfg, first = results_dir
    files = sorted((out / "scores").glob("*.json"))
    assert files and not list((out / "scores").glob("*.tmp*"))
    files[0].write_text('{"scores": [0.5')  # e.g. a disk filled up mid-write by hand
    calls = []
    real = bench_scores.score_outcomes
    monkeypatch.setattr(bench_scores, "score_outcomes", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    again = benchmark.main(cfg)
    assert again["scores"] == first["scores"] and len(calls) == 1  # only the unreadable run was scored
    # cached timings are marked as such, in results.json and in the report
    assert sum(not hit for per in again["seconds_cached"].values() for hit in per.values()) == 1
    assert "(cached)" in (out / "report.md").read_text()
    # The key holds the start's tensors: another start (or any other change) is never served old scores.
    params = {"a": torch.zeros(3, dtype=torch.bfloat16), "b": torch.ones(2)}
    moved = {**params, "b": torch.tensor([1.0, 1.0 + 1e-6])}
    assert bench.params_fingerprint(params) != bench.params_fingerprint(moved)


def test_outputs(results_dir):
    out, cfg, results = results_dir
    report = (out / "report.md").read_text()
    for h in results["hashes"].values():
        assert h in report
    assert "| transfer |" in report and "vs transfer" in report and "| hypernet_adapt |" in report
    assert "s/episode" in report and all(t > 0 for per in results["seconds_per_episode"].values() for t in per.values())
    assert set(results["starts"]) == {f"{m}/seed{s}" for m in TRAINED for s in (0, 1)}
    for name, start in results["starts"].items():
        assert start["steps_trained"] == 2 and start["selected_step"] in (0, 2)
        assert f"| {name} | 2 | {start['selected_step']}" in report
    assert json.loads((out / "results.json").read_text())["scores"] == results["scores"]
    # Meta-seed spread: one mean per seed where LoRA moves, one where it cannot (prototype).
    assert "mean per meta-seed" in report
    for setting, values in results["scores"]["fomaml"].items():
        per_seed = results["mean_by_meta_seed"]["fomaml"][setting]
        assert len(per_seed) == 2 and sum(per_seed) / 2 == pytest.approx(sum(values) / len(values))
        assert len(results["mean_by_meta_seed"]["prototype"][setting]) == 1
        # ...and every episode's score at each meta-seed, whose mean over seeds is the episode's score
        draws = results["scores_by_meta_seed"]["fomaml"][setting]
        assert sorted(draws) == [0, 1] and [(a + b) / 2 for a, b in zip(draws[0], draws[1])] == pytest.approx(values)
    assert (out / "accuracy_vs_k.png").stat().st_size > 1000
    # every interval is a crossed bootstrap, said so in the header; the verdicts are Holm-adjusted
    from llm_meta.eval.statistics import UNIT

    assert UNIT in report and results["interval_unit"] == UNIT
    contrasts = results["contrasts"]
    assert f"{len(contrasts)} comparisons in this report" in report and "Holm-adjusted" in report
    assert all(c["p_adjusted"] >= c["p"] and c["verdict"] in ("win", "tie", "loss") for c in contrasts)
    for method, per in results["estimates"].items():
        for setting, e in per.items():
            assert e["low"] <= e["mean"] <= e["high"]
            assert e["mean"] == pytest.approx(sum(results["scores"][method][setting]) / len(results["scores"][method][setting]))


def test_untrained_start_is_the_training_runs_step_zero(tmp_path, tiny_bert_dir, toy):  # noqa: F811
    # With a zero outer learning rate no step can beat step 0, so the saved adapter is the
    # training run's start: the benchmark's finetune baseline must adapt from exactly that.
    import torch

    from llm_meta.saving.checkpoint import load_adapter_params
    from llm_meta.config import load_config
    from llm_meta import meta_training as meta_train

    overrides = [*tiny_overrides(tiny_bert_dir, toy / "train.csv", tmp_path, steps=1), "outer.lr=0.0", "seed=3"]
    cfg = load_config(meta_train.Config, ROOT / "recipes/configs/meta_train.yaml", overrides)
    meta_train.main(cfg)
    body, start = bench.untrained_start(cfg.model, seed=3)
    saved = load_adapter_params(body, tmp_path / "adapter")
    assert all(torch.equal(saved[k], start[k]) for k in start)
    _, other = bench.untrained_start(cfg.model, seed=4)
    assert not all(torch.equal(other[k], start[k]) for k in start)


def test_fresh_runs_with_the_same_config_give_the_same_numbers(results_dir, tmp_path):
    import dataclasses

    _, cfg, _ = results_dir
    small = dataclasses.replace(cfg, methods=["finetune", "fomaml"], meta_seeds=[0])
    one = benchmark.main(dataclasses.replace(small, output_dir=str(tmp_path / "one")))
    two = benchmark.main(dataclasses.replace(small, output_dir=str(tmp_path / "two")))  # retrains from nothing
    assert one["hashes"] == two["hashes"] and one["scores"] == two["scores"]

    def untimed(starts):  # training wall time is a measurement, not a result
        return {name: {k: v for k, v in s.items() if k != "train_seconds"} for name, s in starts.items()}
    assert untimed(one["starts"]) == untimed(two["starts"])


def test_method_variants_change_only_the_adaptation(results_dir, tmp_path):
    import dataclasses

    _, cfg, first = results_dir
    variants = ["prototype", "finetune@steps=0", "finetune@steps=0,transductive=0", "finetune@steps=0,transductive=3"]
    results = benchmark.main(dataclasses.replace(cfg, methods=variants, output_dir=str(tmp_path)))
    # prototype is finetune with 0 steps; transductive=0 is the plain prototype head (same numbers)
    assert results["scores"]["finetune@steps=0"] == first["scores"]["prototype"]
    assert results["scores"]["finetune@steps=0,transductive=0"] == first["scores"]["prototype"]
    start, change = bench.method_spec("fomaml@transductive=3,label_examples=1", {})
    assert start == "fomaml" and change(InnerConfig(steps=7)) == InnerConfig(steps=7, transductive=3, label_examples=1)
    assert "| finetune@steps=0,transductive=3 |" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="finetune@stepz=1.*did you mean 'steps'"):
        bench.method_spec("finetune@stepz=1", {})
    with pytest.raises(ValueError, match="key=value"):
        bench.method_spec("finetune@steps", {})
    # A trained start adapts by its algorithm's own protocol (overrides applied), as `llm-meta adapt`
    # adapts an adapter it keeps: a ProtoNet-trained start takes no steps under any name.
    named = Config(train_configs={"proto_long": str(ROOT / "recipes/configs/protonet.yaml"),
                                  "fomaml_long": str(ROOT / "recipes/configs/meta_train.yaml"),
                                  "switched": str(ROOT / "recipes/configs/meta_train.yaml"),
                                  "fomaml": str(ROOT / "recipes/configs/protonet.yaml")},
                   start_overrides={"switched": ["algorithm=protonet"]})
    algorithms = bench.start_algorithms(named)
    assert algorithms == {"proto_long": "protonet", "fomaml_long": "fomaml", "switched": "protonet",
                          "fomaml": "protonet"}
    steps = {m: bench.method_spec(m, algorithms)[1](InnerConfig(steps=7)).steps
             for m in ("proto_long", "fomaml_long", "switched", "fomaml", "switched@steps=15", "hypernet")}
    assert steps == {"proto_long": 0, "fomaml_long": 7, "switched": 0, "fomaml": 0, "switched@steps=15": 15,
                     "hypernet": 0}
    with pytest.raises(ValueError, match="'untrained' names the start without training"):
        bench.start_algorithms(Config(train_configs={"untrained": str(ROOT / "recipes/configs/meta_train.yaml")}))
    # `+select` needs a trained start to choose against the untrained one.
    for untrained in ("finetune+select", "prototype+select@steps=2", "linear_probe+select"):
        with pytest.raises(ValueError, match="adapts from the untrained start"):
            bench.method_spec(untrained, {})


def test_a_declared_primary_contrast_is_judged_alone(results_dir, tmp_path):
    import dataclasses

    _, cfg, _ = results_dir
    name = Path(cfg.episodic.tasks[0]).name
    small = dataclasses.replace(cfg, methods=["finetune", "fomaml", "transfer"], output_dir=str(tmp_path),
                                primary=f"fomaml vs transfer on fullway/{name}/1")
    results = benchmark.main(small)
    primary = [c for c in results["contrasts"] if c["primary"]]
    assert len(primary) == 1 and primary[0]["p_adjusted"] == primary[0]["p"]
    assert "The primary contrast, declared before the run, is fomaml vs transfer" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="primary 'fomaml vs finetune on x' must read"):
        benchmark.main(dataclasses.replace(small, primary="fomaml vs finetune on x"))
    # a primary naming a method that is not run fails before any start is trained
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="primary 'reptile vs transfer on x' must read"):
        benchmark.main(dataclasses.replace(small, primary="reptile vs transfer on x", output_dir=str(fresh)))
    with pytest.raises(ValueError, match="meta_seeds is empty"):  # said, not a NameError after the set-up
        benchmark.main(dataclasses.replace(small, meta_seeds=[], output_dir=str(fresh)))
    assert not fresh.exists()


def test_a_changed_training_config_retrains_and_says_why(results_dir, tmp_path, capsys):
    import dataclasses

    _, cfg, _ = results_dir
    small = dataclasses.replace(cfg, methods=["fomaml"], meta_seeds=[0], output_dir=str(tmp_path))
    benchmark.main(small)
    adapter = tmp_path / "starts" / "fomaml-seed0" / "adapter" / "adapter_model.safetensors"
    first = adapter.stat().st_mtime_ns
    benchmark.main(small)  # same config: reused
    assert adapter.stat().st_mtime_ns == first and "trained with another config" not in capsys.readouterr().err
    benchmark.main(dataclasses.replace(small, train_overrides=[*small.train_overrides, "inner.lr=0.02"]))
    assert "trained with another config" in capsys.readouterr().err
    replaced = [p.name for p in (tmp_path / "starts").iterdir() if ".replaced-" in p.name]
    assert len(replaced) == 1 and adapter.stat().st_mtime_ns != first  # moved aside, never deleted


def test_a_held_out_task_in_a_training_corpus_is_refused(results_dir, tmp_path):
    import dataclasses

    _, cfg, _ = results_dir
    leaky = dataclasses.replace(cfg, methods=["fomaml"], meta_seeds=[0], output_dir=str(tmp_path),
                                train_overrides=[*cfg.train_overrides, f"smlmt.data={cfg.episodic.tasks[0]}"])
    with pytest.raises(ValueError, match=r"held-out task '.*' \(the benchmark's tasks, start 'fomaml'\) is also read "
                                         r"by meta-training or selection \(smlmt.data\)"):
        benchmark.main(leaky)


def test_a_start_trained_from_another_start(tmp_path, tiny_bert_dir, toy):  # noqa: F811
    # `init: start:transfer`: FOMAML from the transfer start of the same meta-seed, trained first;
    # its step 0 (selection candidate, proximal anchor) is exactly that start.
    import torch

    from llm_meta.saving.checkpoint import load_adapter_params
    from llm_meta.modeling.loading import load_body

    train = [o for o in tiny_overrides(tiny_bert_dir, toy / "train.csv", tmp_path / "unused", steps=2)
             if not o.startswith("output_dir=")]
    cfg = Config(output_dir=str(tmp_path / "b"), methods=["finetune", "transfer", "fomaml_tr"], meta_seeds=[0],
                 train_configs={"transfer": "recipes/configs/transfer.yaml", "fomaml_tr": "recipes/configs/meta_train.yaml"},
                 train_overrides=train, start_overrides={"fomaml_tr": ["init=start:transfer"]},
                 model=ModelConfig(name=str(tiny_bert_dir), max_length=48), adapt=InnerConfig(steps=1),
                 episodic=EpisodicConfig(tasks=[str(toy)], n_way=3, shots=[1], q_query=2, episodes=2),
                 fullway=FullwayConfig(tasks=[]))
    results = benchmark.main(cfg)
    both_names = ["transfer/seed0", "fomaml_tr/seed0"]
    both, chained = (results["starts"][s] for s in both_names)
    assert chained["step0_validation_accuracy"] == both["validation_accuracy"]
    assert chained["init"].endswith("transfer-seed0/adapter") and chained["train_seconds"] > 0
    body = load_body(cfg.model)
    start = load_adapter_params(body, tmp_path / "b/starts/transfer-seed0/adapter")
    if chained["selected_step"] == 0:  # kept its init: the very tensors of the transfer start
        kept = load_adapter_params(body, tmp_path / "b/starts/fomaml_tr-seed0/adapter")
        assert all(torch.equal(kept[k], start[k]) for k in start)
    assert "training wall time" in (tmp_path / "b/report.md").read_text()
    # Resumed from its kept archive with a `+select` variant of the chained start, whose scores are
    # not cached: the chained start and the transfer start it begins from are both trained again
    # (exactly, on CPU), both read back, so the new archive keeps both records and nothing moved aside.
    _extract(tmp_path / "b" / bench.KEPT, tmp_path / "resumed")
    resumed = benchmark.main(dataclasses.replace(cfg, output_dir=str(tmp_path / "resumed"),
                                                 methods=[*cfg.methods, "fomaml_tr+select"]))
    assert resumed["scores"]["transfer"] == results["scores"]["transfer"]
    assert [resumed["starts"][s]["validation_accuracy"] for s in both_names] == \
        [results["starts"][s]["validation_accuracy"] for s in both_names]
    with tarfile.open(tmp_path / "resumed" / bench.KEPT) as tar:
        names = tar.getnames()
    assert {"starts/transfer-seed0/start.json", "starts/fomaml_tr-seed0/start.json"} <= set(names)
    assert not [n for n in names if ".replaced-" in n]
    looped = dataclasses.replace(cfg, start_overrides={"fomaml_tr": ["init=start:transfer"],
                                                       "transfer": ["init=start:fomaml_tr"]})
    with pytest.raises(ValueError, match="without a loop"):
        benchmark.main(looped)


def test_select_methods_choose_a_start_per_episode(results_dir, tmp_path):
    # `fomaml+select` adapts each episode from the start its support set chooses; the choices are
    # counted in results.json and the report, and cached with the scores.
    out, cfg, _ = results_dir
    picky = dataclasses.replace(cfg, methods=["finetune", "fomaml", "fomaml+select"], references=["finetune"])
    results = benchmark.main(picky)
    counts = results["starts_chosen"]["fomaml+select"]
    for setting, scores in results["scores"]["fomaml+select"].items():
        assert sum(counts[setting].values()) == len(scores) * len(cfg.meta_seeds)
        assert set(counts[setting]) <= {"untrained", "fomaml", "fomaml at α=0.5", bench.family_pick("fomaml")}
    assert "episodes per start" in (out / "report.md").read_text()
    # Each episode's pick at each meta-seed, beside its score: an episode that picked the untrained
    # start (or FOMAML's) scores exactly what finetune (or fomaml) scores on it at that seed. (On this
    # tiny task every pick is the untrained start, so a shuffled order of picks would go unseen.)
    per_seed, matched = results["scores_by_meta_seed"], 0
    for setting, by_seed in results["starts_chosen_by_meta_seed"]["fomaml+select"].items():
        assert sorted(by_seed) == sorted(cfg.meta_seeds)
        assert Counter(c for picks in by_seed.values() for c in picks) == counts[setting]
        for seed, picks in by_seed.items():
            assert len(picks) == len(per_seed["fomaml+select"][setting][seed])
            for i, pick in enumerate(picks):
                same = {"untrained": "finetune", "fomaml": "fomaml", bench.family_pick("fomaml"): "fomaml"}.get(pick)
                if same:
                    assert per_seed["fomaml+select"][setting][seed][i] == per_seed[same][setting][seed][i]
                    matched += 1
    assert matched > 0
    assert benchmark.main(picky)["starts_chosen"] == results["starts_chosen"]  # read back from the score cache


def test_a_select_method_adapts_its_own_start_as_the_method_does_on_its_family_and_else_as_finetune(
        results_dir, toy, monkeypatch):
    # `protonet+select` is `llm-meta adapt --adapter <ProtoNet adapter>`: on an episode whose class
    # names are the start's family's, ProtoNet's start with no steps (its own protocol), nothing
    # chosen; on any other, the start the support set chooses, with finetune's steps whichever it is.
    # The choice is forced (choose_start has its own tests); what is tested is the adaptation it gets.
    from llm_meta.eval.evaluation import episode_outcomes
    from llm_meta.data.tasks import load_task

    out, cfg, _ = results_dir
    start, change = bench.method_spec("protonet+select", bench.start_algorithms(cfg))
    inner = change(cfg.adapt)
    shared = bench.shared_inner("protonet+select", cfg)
    assert (start, inner.steps, shared.steps) == ("protonet", 0, cfg.adapt.steps)
    assert bench.shared_inner("protonet+select@steps=5", cfg).steps == 5
    body, untrained = bench.untrained_start(cfg.model, 0)
    trained = bench.load_start(body, bench.start_dir(out, "protonet", 0))[0]
    candidates = bench.start_candidates({("untrained", 0): untrained, ("protonet", 0): trained}, "protonet", 0, True)
    candidates = {"protonet": candidates["protonet"], **candidates}  # own start first: found by name, not place
    episodes = bench.fullway_episodes(cfg.fullway, load_task(str(toy)), 1)
    labels = episodes[0].label_names
    for family, pick, params, used in [([*labels, "other"], "protonet", trained, inner),
                                       (["other"], "protonet", trained, shared), (None, "untrained", untrained, shared)]:
        def forced(*a, p=pick, f=family, **k):
            assert f is None or not set(labels) <= set(f), "chose on a task of the family's labels"
            return p, {}
        monkeypatch.setattr(bench_scores, "choose_start", forced)
        outcomes, picks = bench.score_candidates(body, candidates, "protonet", episodes, inner, shared, family)
        assert picks == [bench.family_pick(pick) if used is inner else pick] * len(episodes)
        for i, (got, ep) in enumerate(zip(outcomes, episodes)):
            assert (got == episode_outcomes(body, params, ep, used, seed=i)).all()


def test_a_run_resumes_from_its_kept_archive_without_the_tensors(results_dir, tmp_path, monkeypatch, capsys):
    # kept.tar.gz (scores, each start's DONE key and start.json; no adapter) is what a later run on a
    # fresh machine needs: it trains and scores nothing already done, and only what is new.
    out, cfg, first = results_dir
    names = _extract(out / bench.KEPT, tmp_path)
    assert names and not [n for n in names if n.endswith(".safetensors")]
    assert {n.split("/")[1] for n in names if n.startswith("starts/")} == {f"{m}-seed{s}" for m in TRAINED for s in (0, 1)}
    trained, scored = [], []
    real_train, real_score = meta_training.main, bench_scores.score_outcomes
    monkeypatch.setattr(meta_training, "main", lambda c, **kw: trained.append(c.seed) or real_train(c, **kw))
    monkeypatch.setattr(bench_scores, "score_outcomes",
                        lambda *a, **k: scored.append(bench.params_fingerprint(a[1])) or real_score(*a, **k))
    again = benchmark.main(dataclasses.replace(cfg, output_dir=str(tmp_path)))
    assert (trained, scored) == ([], [])
    assert again["scores"] == first["scores"] and again["starts"] == first["starts"]
    assert again["contrasts"] == first["contrasts"]
    # A new meta-seed: only its start is trained, only its scores computed.
    two = dataclasses.replace(cfg, output_dir=str(tmp_path), methods=["finetune", "fomaml"], meta_seeds=[0, 2])
    more = benchmark.main(two)
    # Each setting scored once per new start; a start that kept its step 0 is the untrained one (one score).
    new = {bench.params_fingerprint(bench.untrained_start(cfg.model, 2)[1]),
           json.loads((tmp_path / "starts/fomaml-seed2" / bench.START_RECORD).read_text())["params_fingerprint"]}
    assert trained == [2] and set(scored) == new and len(scored) == len(new) * len(first["hashes"])
    assert [v[0] for v in more["mean_by_meta_seed"]["fomaml"].values()] == \
        [v[0] for v in first["mean_by_meta_seed"]["fomaml"].values()]
    # A kept start whose score is missing is trained again first (identical tensors on CPU), saying why.
    for path in (tmp_path / "scores").glob("*.json"):
        path.unlink()
    trained.clear()
    alone = benchmark.main(dataclasses.replace(two, methods=["fomaml"], meta_seeds=[0]))
    assert trained == [0] and "kept without its tensors" in capsys.readouterr().err
    assert alone["mean_by_meta_seed"]["fomaml"] == {k: v[:1] for k, v in first["mean_by_meta_seed"]["fomaml"].items()}


def _extract(archive: Path, folder: Path) -> list[str]:
    """Unpack a kept.tar.gz into `folder`, as a user would; returns its member names."""
    with tarfile.open(archive) as tar:
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        return tar.getnames()


def test_without_matplotlib_the_plot_is_skipped_with_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    plot_scores(Config().methods, {}, {}, tmp_path / "accuracy_vs_k.png")
    assert not (tmp_path / "accuracy_vs_k.png").exists()
    assert 'pip install "llm_meta[plots]"' in capsys.readouterr().err
