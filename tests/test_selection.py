"""Staying near the pretrained geometry: interpolation, proximal terms, the outer-lr schedule,
and selection on meta-validation with the untrained start always a candidate."""

import json

import pytest
import torch

from llm_meta.meta.adaptation import adapt, init_head
from llm_meta.saving.checkpoint import read_metadata
from llm_meta.meta.core import InnerConfig, interpolate, outer_lr
from llm_meta.data.episodes import Examples
from llm_meta.meta.kinds import support_loss_fn
from llm_meta.modeling.body import ModelConfig, lora_params
from llm_meta.modeling.loading import load_body
from tests.test_meta_train import run, tiny_overrides, toy_csv  # noqa: F401  (fixture)


def test_interpolation_endpoints_are_exact():
    gen = torch.Generator().manual_seed(0)
    start = {k: torch.randn(4, 3, generator=gen) for k in "ab"}
    trained = {k: torch.randn(4, 3, generator=gen) for k in "ab"} | {"lr.a": torch.tensor(0.01)}
    assert all(torch.equal(interpolate(start, trained, 0.0)[k], start[k]) for k in "ab")
    assert all(torch.equal(interpolate(start, trained, 1.0)[k], trained[k]) for k in trained)
    half = interpolate(start, trained, 0.5)
    assert torch.allclose(half["a"], (start["a"] + trained["a"]) / 2)
    assert torch.equal(half["lr.a"], trained["lr.a"])  # tensors without a start value are kept


def test_interpolation_moves_the_weight_change_not_the_factors():
    gen = torch.Generator().manual_seed(1)
    a0, a1 = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)  # lora_A [r, in]
    b1 = torch.randn(16, 8, generator=gen)  # lora_B [out, r]
    start = {"x.lora_A.weight": a0, "x.lora_B.weight": torch.zeros(16, 8)}  # an untrained LoRA: B = 0
    trained = {"x.lora_A.weight": a1, "x.lora_B.weight": b1}
    for alpha in (0.25, 0.5, 0.75):
        moved = interpolate(start, trained, alpha)
        delta = moved["x.lora_B.weight"] @ moved["x.lora_A.weight"]
        assert torch.allclose(delta, alpha * (b1 @ a1), atol=1e-6)  # at 0.5: half of BA, not a quarter
    naive = ((start["x.lora_B.weight"] + b1) / 2) @ ((a0 + a1) / 2)
    assert not torch.allclose(naive, 0.5 * (b1 @ a1), atol=1e-3)  # what factor-wise interpolation did


def test_outer_lr_warmup_and_cosine():
    assert [outer_lr(1.0, s, 10, warmup=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = [outer_lr(1.0, s, 10, warmup=0, schedule="cosine") for s in range(10)]
    assert cosine[0] == 1.0 and all(a > b for a, b in zip(cosine, cosine[1:])) and cosine[-1] < 0.05
    with pytest.raises(ValueError, match="outer.schedule"):
        outer_lr(1.0, 0, 10, schedule="linear")


def test_inner_proximal_term_is_added_to_the_support_loss_and_holds_lora_back(tiny_bert_dir):
    torch.manual_seed(0)
    body = load_body(ModelConfig(name=str(tiny_bert_dir)))
    start = lora_params(body)
    support = Examples(["card payment please", "play me a song", "card declined again", "music on now"], [0, 1, 0, 1])
    head = init_head(body, start, support, 2, InnerConfig())
    gen = torch.Generator().manual_seed(1)
    fast = {**{k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in start.items()}, **head}
    plain = support_loss_fn(body, start, support, InnerConfig())(fast, [0, 1, 2, 3])
    held = support_loss_fn(body, start, support, InnerConfig(proximal=3.0))(fast, [0, 1, 2, 3])
    expected = 3.0 * sum(((fast[k] - start[k]) ** 2).sum() for k in start)
    assert expected > 0 and torch.allclose(held - plain, expected)

    def drift(proximal: float) -> float:
        out = adapt(body, start, support, 2, InnerConfig(steps=5, lr=0.05, optimizer="sgd", proximal=proximal))
        return sum((out[k] - start[k]).norm().item() for k in start)
    assert 0 < drift(8.0) < drift(0.0)


def test_step_zero_and_interpolations_are_candidates(tiny_bert_dir, toy_csv, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    results = run([*tiny_overrides(tiny_bert_dir, toy_csv, out, steps=4), "interpolation=[0.5, 1.0]",
                   "outer.proximal=0.1", "outer.warmup=2", "outer.schedule=cosine"])
    history = results["validation"]
    assert [(h["step"], h["alpha"]) for h in history] == [(0, 1.0), (2, 1.0), (2, 0.5), (4, 1.0), (4, 0.5)]
    meta = read_metadata(out / "adapter")
    best = max(history, key=lambda h: h["accuracy"])
    assert meta["validation_accuracy"] == best["accuracy"] and meta["alpha"] == best["alpha"]
    # the untrained start is a candidate, so the kept adapter never scores below it on meta-validation
    assert meta["validation_accuracy"] >= meta["step0_validation_accuracy"] == history[0]["accuracy"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "validation" for r in log) == 5


def test_untrained_start_wins_when_training_only_hurts(tiny_bert_dir, toy_csv, tmp_path):  # noqa: F811
    # An absurd outer learning rate wrecks the LoRA; selection must fall back to step 0.
    out = tmp_path / "run"
    results = run([*tiny_overrides(tiny_bert_dir, toy_csv, out, steps=2), "outer.lr=50.0", "outer.optimizer=sgd"])
    first, last = results["validation"]
    assert last["accuracy"] < first["accuracy"]  # training did hurt on meta-validation
    meta = read_metadata(out / "adapter")
    assert meta["step"] == 0 and meta["validation_accuracy"] == first["accuracy"]
    body = load_body(ModelConfig(name=str(tiny_bert_dir)))
    from llm_meta.saving.checkpoint import load_adapter_params
    assert all(load_adapter_params(body, out / "adapter")[k].abs().sum() == 0 for k in body.lora_names if "lora_B" in k)


def test_soft_kmeans_zero_iterations_is_plain_prototypes_and_refinement_moves_to_the_queries():
    from llm_meta.meta.heads import prototypes, soft_kmeans

    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    support = centres + torch.tensor([[1.5, 1.0], [1.0, 1.5]])  # one shot per class, off centre
    labels = torch.tensor([0, 1])
    query = torch.cat([centres[y] + 0.3 * torch.randn(20, 2, generator=gen) for y in (0, 1)])
    assert torch.equal(soft_kmeans(support, labels, query, 2, 0, 10.0), prototypes(support, labels, 2))
    refined = soft_kmeans(support, labels, query, 2, 3, 1.0)
    assert (refined - centres).norm(dim=1).max() < (support - centres).norm(dim=1).min()
    # a confidence no query reaches leaves the prototypes where the support put them
    assert torch.allclose(soft_kmeans(support, labels, query, 2, 3, 1.0, min_confidence=1.01), support)


def test_transductive_scoring_runs_on_an_episode(tiny_bert_dir):
    from llm_meta.meta.adaptation import episode_accuracy
    from llm_meta.data.episodes import Episode

    body = load_body(ModelConfig(name=str(tiny_bert_dir)))
    ep = Episode(Examples(["card payment please", "play me a song"], [0, 1]),
                 Examples(["card declined again", "music on now", "pay by card", "a song please"], [0, 1, 0, 1]),
                 ["card", "music"], "toy")
    params = lora_params(body)
    plain = episode_accuracy(body, params, ep, InnerConfig(steps=0))  # nearest support prototype
    none_confident = episode_accuracy(body, params, ep, InnerConfig(steps=0, transductive=2,
                                                                     transductive_confidence=1.01))
    assert none_confident == plain
    assert 0 <= episode_accuracy(body, params, ep, InnerConfig(steps=2, transductive=2, label_examples=1)) <= 1


def test_way_shot_curriculum_changes_episode_shape_at_its_step(tiny_bert_dir, toy_csv, tmp_path):  # noqa: F811
    from llm_meta.config import load_config
    from llm_meta import meta_training as meta_train
    from tests.test_meta_train import ROOT

    overrides = [*tiny_overrides(tiny_bert_dir, toy_csv, tmp_path, steps=4),
                 "episodes.curriculum=[{from_step: 2, n_way: 5, k_shot: 3}]"]
    cfg = load_config(meta_train.Config, ROOT / "recipes/configs/meta_train.yaml", overrides)
    sampler, _ = meta_train.training_sampler(cfg, load_body(ModelConfig(name=str(tiny_bert_dir))))
    shapes = [(e.n_way, len(e.support)) for e in sampler.episodes(8)]  # meta_batch 2: steps 0-1 then 2-3
    assert shapes == [(3, 6)] * 4 + [(5, 15)] * 4
    assert [e.fingerprint() for e in sampler.episodes(8)] == [e.fingerprint() for e in sampler.episodes(8)]
    run(overrides)  # and a run goes through both stages
