"""The algorithm core checked against independent computations through the ordinary module path."""

import pytest
import torch
import torch.nn.functional as F

from llm_meta.algorithms import InnerConfig, adapt, fomaml, init_head, reptile
from llm_meta.episodes import Episode, Examples
from llm_meta.heads import head_logits, prototypes, proto_head
from llm_meta.models import ModelConfig, embed, load_body, lora_params, set_lora_params, tokenize
from tests.test_models import perturbed

SUPPORT = Examples(["reset my card pin", "card has not arrived", "play some jazz", "play music now",
                    "rain tomorrow", "weather in paris"], [0, 0, 1, 1, 2, 2])
QUERY = Examples(["my card pin", "some music", "will it rain"], [0, 1, 2])
EPISODE = Episode(SUPPORT, QUERY, ["card", "music", "weather"], task="toy")


@pytest.fixture()
def body(tiny_bert_dir):
    return load_body(ModelConfig(name=str(tiny_bert_dir)))


def module_loss(body, lora, head, examples, scale):
    """Query loss computed through the module itself (weights written in, plain forward)."""
    set_lora_params(body, lora)
    for p in body.model.parameters():
        p.grad = None
    batch = tokenize(body, examples.texts)
    out = body.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = F.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)
    logits = scale * (emb @ head["head.weight"].T + head["head.bias"])
    return F.cross_entropy(logits, torch.tensor(examples.labels))


def module_grads(body, lora, head, examples, scale):
    for p in body.model.parameters():
        p.requires_grad_(False)
    named = dict(body.model.named_parameters())
    for n in body.lora_names:
        named[n].requires_grad_(True)
    module_loss(body, lora, head, examples, scale).backward()
    return {n: named[n].grad.clone() for n in body.lora_names}


def test_proto_head_is_nearest_prototype():
    emb = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    c = prototypes(emb, labels, 3)
    assert torch.allclose(c[1], emb[2:4].mean(0))
    x = torch.randn(5, 4)
    logits = head_logits(proto_head(emb, labels, 3), x, scale=1.0)
    assert torch.equal(logits.argmax(1), torch.cdist(x, c).argmin(1))
    assert torch.allclose(logits, -(torch.cdist(x, c) ** 2) + (x * x).sum(1, keepdim=True), atol=1e-5)


def test_sgd_inner_step_matches_module_gradient(body):
    theta = perturbed(lora_params(body))
    cfg = InnerConfig(steps=1, lr=0.5, optimizer="sgd")
    head = init_head(body, theta, SUPPORT, 3, cfg)
    fast = adapt(body, theta, SUPPORT, 3, cfg, head=head)
    g = module_grads(body, theta, head, SUPPORT, cfg.scale)
    for n in body.lora_names:
        assert torch.allclose(fast[n], theta[n] - 0.5 * g[n], atol=1e-6)
    assert not torch.allclose(fast["head.weight"], head["head.weight"])  # the head adapts too


def test_fomaml_gradient_is_query_gradient_at_adapted_params(body):
    theta = perturbed(lora_params(body))
    cfg = InnerConfig(steps=3, lr=1e-2, optimizer="adam")
    grads, stats = fomaml(body, theta, EPISODE, cfg, 0)
    fast = adapt(body, theta, SUPPORT, 3, cfg, seed=0)
    expected = module_grads(body, {n: fast[n] for n in body.lora_names},
                            {k: fast[k] for k in ("head.weight", "head.bias")}, QUERY, cfg.scale)
    assert set(grads) == set(theta)
    for n in body.lora_names:
        assert torch.allclose(grads[n], expected[n], atol=1e-6, rtol=1e-4)
    assert sum(g.abs().sum() for g in grads.values()) > 0
    assert 0.0 <= stats.accuracy <= 1.0 and stats.loss > 0


def test_reptile_update_is_epsilon_times_difference(body):
    theta = perturbed(lora_params(body))
    cfg = InnerConfig(steps=3, lr=1e-2)
    grads, _ = reptile(body, theta, EPISODE, cfg, 0)
    everything = Examples(SUPPORT.texts + QUERY.texts, SUPPORT.labels + QUERY.labels)
    adapted = adapt(body, theta, everything, 3, cfg, seed=0)
    eps = 0.1
    meta = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    opt = torch.optim.SGD(meta.values(), lr=eps)
    for k, p in meta.items():
        p.grad = grads[k]
    opt.step()
    for n in body.lora_names:
        assert torch.allclose(meta[n], theta[n] + eps * (adapted[n] - theta[n]), atol=1e-7)
        assert not torch.equal(adapted[n], theta[n])


def test_adaptation_leaves_base_and_meta_params_unchanged(body):
    theta = perturbed(lora_params(body))
    frozen = {k: v.clone() for k, v in theta.items()}
    module_before = {k: v.clone() for k, v in body.model.state_dict().items()}
    fast = adapt(body, theta, SUPPORT, 3, InnerConfig(steps=3, lr=1e-2))
    assert all(torch.equal(theta[k], frozen[k]) for k in theta)
    assert all(torch.equal(v, module_before[k]) for k, v in body.model.state_dict().items())
    assert any(not torch.equal(fast[k], theta[k]) for k in theta)


def test_head_only_adaptation_keeps_lora(body):
    theta = perturbed(lora_params(body))
    fast = adapt(body, theta, SUPPORT, 3, InnerConfig(steps=2, lr=1e-2, train_lora=False))
    assert all(torch.equal(fast[k], theta[k]) for k in theta)
    emb = embed(body, theta, tokenize(body, SUPPORT.texts))
    assert not torch.allclose(fast["head.weight"], proto_head(emb, torch.tensor(SUPPORT.labels), 3)["head.weight"])


def test_head_only_shortcut_equals_running_the_body_every_step(body):
    # adapt() embeds the support set once when the body is frozen; the result must be the same
    # as re-running the body at every step (mini-batches smaller than the support set included).
    from llm_meta.algorithms import _batches, init_head, inner_loop, loss_and_accuracy

    theta = perturbed(lora_params(body))
    cfg = InnerConfig(steps=4, lr=5e-2, batch_size=4, train_lora=False)
    fast = adapt(body, theta, SUPPORT, 3, cfg, seed=3)

    def slow_loss(params, idx):
        return loss_and_accuracy(body, params, [SUPPORT.texts[i] for i in idx], [SUPPORT.labels[i] for i in idx],
                                 cfg.scale)[0]

    head = init_head(body, theta, SUPPORT, 3, cfg)
    slow = inner_loop({**theta, **head}, list(head), slow_loss, _batches(len(SUPPORT), 4, 4, 3), cfg)
    for k in head:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fast["head.weight"], head["head.weight"])


def test_transfer_gradient_covers_lora_and_own_task_head_only(body):
    from llm_meta.algorithms import transfer, transfer_head_key, transfer_heads

    theta = perturbed(lora_params(body))
    pools = {"toy": {"card": SUPPORT.texts[:2], "music": SUPPORT.texts[2:4], "weather": SUPPORT.texts[4:]},
             "other": {"a": ["x y"], "b": ["y z"]}}
    params = dict(theta)
    for task, pool in pools.items():
        params.update(transfer_heads(body, theta, task, pool))
    assert params[transfer_head_key("toy", "music")].shape == (body.hidden_size + 1,)
    grads, stats = transfer(body, params, EPISODE, InnerConfig(), 0)
    assert set(grads) == set(params)
    assert all(grads[k].abs().sum() > 0 for k in theta)
    assert grads[transfer_head_key("toy", "weather")].abs().sum() > 0
    assert all(grads[transfer_head_key("other", c)].abs().sum() == 0 for c in ("a", "b"))
    assert 0 <= stats.accuracy <= 1
