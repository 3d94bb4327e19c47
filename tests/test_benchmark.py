"""The benchmark machinery on a tiny budget: identical episodes for every method, reuse, outputs."""

import json
from pathlib import Path

import pytest

from llm_meta.algorithms import InnerConfig
from llm_meta.models import ModelConfig
from recipes import benchmark
from recipes.benchmark import Config, EpisodicConfig, FullwayConfig
from tests.test_classifier import toy  # noqa: F401  (fixture: a folder with train/test csv files)
from tests.test_meta_train import tiny_overrides


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
    assert starts == [f"{m}-seed{s}" for m in ("fomaml", "reptile", "transfer") for s in (0, 1)]
    mtimes = {p: p.stat().st_mtime for p in (out / "starts").rglob("adapter_model.safetensors")}
    again = benchmark.main(cfg)
    assert again["hashes"] == first["hashes"]
    assert again["scores"] == first["scores"]  # deterministic on CPU given the same episodes and starts
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes  # nothing retrained


def test_outputs(results_dir):
    out, cfg, results = results_dir
    report = (out / "report.md").read_text()
    for h in results["hashes"].values():
        assert h in report
    assert "| transfer |" in report and "vs transfer" in report
    assert json.loads((out / "results.json").read_text())["scores"] == results["scores"]
    assert (out / "accuracy_vs_k.png").stat().st_size > 1000
