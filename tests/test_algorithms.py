"""The algorithm core checked against independent computations through the ordinary module path."""

import math

import pytest
import torch
import torch.nn.functional as F

from llm_meta.meta.adaptation import adapt, init_head
from llm_meta.meta.algorithms import fomaml, reptile
from llm_meta.meta.core import InnerConfig
from llm_meta.data.episodes import Episode, Examples
from llm_meta.meta.heads import head_logits, prototypes, proto_head
from llm_meta.modeling.body import ModelConfig, lora_params, set_lora_params
from llm_meta.modeling.forward import embed, tokenize
from llm_meta.modeling.loading import load_body
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


def assert_same_gradient(actual, expected, names):
    """Equal up to float32 rounding, measured against each tensor's scale: sums taken in another
    order (chunks, other BLAS kernels) move single entries near zero by more than an elementwise
    rtol allows, and Adam's normalised step carries those moves on; a wrong gradient (a dropped
    chunk, a missing term) is off by tens of percent."""
    for n in names:
        err = (actual[n] - expected[n]).norm() / expected[n].norm()
        assert err < 1e-4, f"{n}: relative error {err:.2e}"


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
    assert_same_gradient(grads, expected, body.lora_names)
    assert sum(g.abs().sum() for g in grads.values()) > 0
    assert 0.0 <= stats.accuracy <= 1.0 and stats.loss > 0


def test_chunked_length_bucketed_passes_give_the_one_pass_gradient(body):
    # Chunks of 2 texts, shortest first: the inner steps and the query gradient are sums over
    # several forward/backward passes, and must equal the single-pass FOMAML gradient.
    theta = perturbed(lora_params(body))
    one_pass, stats = fomaml(body, theta, EPISODE, InnerConfig(steps=3, lr=1e-2), 0)
    chunked, chunked_stats = fomaml(body, theta, EPISODE, InnerConfig(steps=3, lr=1e-2, chunk=2), 0)
    assert_same_gradient(chunked, one_pass, body.lora_names)
    assert chunked_stats.loss == pytest.approx(stats.loss, rel=1e-5)
    assert chunked_stats.accuracy == pytest.approx(stats.accuracy)
    # The chunks are really separate passes: each pass with gradients sees at most 2 texts
    # (the head's prototypes are embedded once without gradients, in one batch).
    seen = []
    forward = body.model.forward
    body.model.forward = lambda *a, **k: (torch.is_grad_enabled() and seen.append(k["input_ids"].shape[0])
                                          ) or forward(*a, **k)
    try:
        fomaml(body, theta, EPISODE, InnerConfig(steps=1, lr=1e-2, chunk=2), 0)
    finally:
        body.model.forward = forward
    assert seen and max(seen) <= 2


def test_reptile_update_is_epsilon_times_difference(body):
    theta = perturbed(lora_params(body))
    cfg = InnerConfig(steps=3, lr=1e-2)
    grads, _ = reptile(body, theta, EPISODE, cfg, 0)
    everything = SUPPORT + QUERY
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
    from llm_meta.meta.adaptation import init_head
    from llm_meta.meta.core import inner_batches, inner_loop
    from llm_meta.meta.kinds import loss_and_accuracy

    theta = perturbed(lora_params(body))
    cfg = InnerConfig(steps=4, lr=5e-2, batch_size=4, train_lora=False)
    fast = adapt(body, theta, SUPPORT, 3, cfg, seed=3)

    def slow_loss(params, idx):
        return loss_and_accuracy(body, params, SUPPORT.subset(idx), cfg.scale)[0]

    head = init_head(body, theta, SUPPORT, 3, cfg)
    slow = inner_loop({**theta, **head}, list(head), slow_loss, inner_batches(len(SUPPORT), 4, 4, 3), cfg)
    for k in head:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fast["head.weight"], head["head.weight"])


def test_transfer_gradient_covers_lora_and_own_task_head_only(body):
    from llm_meta.meta.transfer import transfer, transfer_head_key, transfer_heads

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


# --- second-order MAML, Meta-SGD and ProtoNet ------------------------------------------------------

def _mlp_problem(seed=0):
    """A tiny regression problem in float64 (finite differences need the precision)."""
    from recipes.sinusoid import init_mlp, mse_loss

    g = torch.Generator().manual_seed(seed)
    params = {k: v.double() for k, v in init_mlp(8, seed).items()}
    xs, xq = torch.randn(6, 1, generator=g, dtype=torch.float64), torch.randn(6, 1, generator=g, dtype=torch.float64)
    return params, mse_loss(xs, torch.sin(xs)), mse_loss(xq, torch.sin(xq))


def _meta_objective(params, support_loss, query_loss, cfg):
    from llm_meta.meta.core import inner_loop

    fast = inner_loop(params, list(params), support_loss, [list(range(6))] * cfg.steps, cfg)
    return query_loss(fast, list(range(6))).item()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_second_order_meta_gradient_matches_finite_differences(optimizer):
    from llm_meta.meta.core import maml_gradient

    params, support_loss, query_loss = _mlp_problem()
    cfg = InnerConfig(steps=3, lr=0.1 if optimizer == "sgd" else 0.01, optimizer=optimizer)

    def query(fast):
        loss = query_loss(fast, list(range(6)))
        return loss, loss
    batches = [list(range(6))] * cfg.steps
    second, _, _ = maml_gradient(params, {}, list(params), support_loss, query, batches, cfg, second_order=True)
    first, _, _ = maml_gradient(params, {}, list(params), support_loss, query, batches, cfg, second_order=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):  # directional derivatives along random directions
        d = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
        h = 1e-6
        plus = _meta_objective({k: v + h * d[k] for k, v in params.items()}, support_loss, query_loss, cfg)
        minus = _meta_objective({k: v - h * d[k] for k, v in params.items()}, support_loss, query_loss, cfg)
        numeric = (plus - minus) / (2 * h)
        analytic = sum((second[k] * d[k]).sum() for k in params).item()
        first_order = sum((first[k] * d[k]).sum() for k in params).item()
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)
        assert abs(first_order - numeric) > 1e-4 * max(1.0, abs(numeric))  # the test tells the two apart


def test_first_order_meta_sgd_rate_gradient_is_minus_support_dot_query_gradient():
    # One SGD step θ' = θ - α g_s(θ), α = exp(ρ) with ρ the stored log rate; first order:
    # dL_q/dρ = -α <g_s(θ), ∇L_q(θ')> per tensor.
    from llm_meta.meta.core import LR_PREFIX, inner_loop, maml_gradient

    params, support_loss, query_loss = _mlp_problem()
    cfg = InnerConfig(steps=1, optimizer="adam")  # Meta-SGD's step is SGD whatever the optimizer says
    alpha = {k: torch.tensor(0.05 + 0.01 * i, dtype=torch.float64) for i, k in enumerate(params)}
    log_rates = {LR_PREFIX + k: a.log() for k, a in alpha.items()}

    def query(fast):
        loss = query_loss(fast, list(range(6)))
        return loss, loss
    grads, _, _ = maml_gradient({**params, **log_rates}, {}, list(params), support_loss, query, [list(range(6))], cfg)
    live = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    g_s = dict(zip(live, torch.autograd.grad(support_loss(live, list(range(6))), list(live.values()))))
    fast = {k: (params[k] - alpha[k] * g_s[k]).requires_grad_(True) for k in params}
    g_q = dict(zip(fast, torch.autograd.grad(query_loss(fast, list(range(6))), list(fast.values()))))
    for k in params:
        torch.testing.assert_close(grads[LR_PREFIX + k], -alpha[k] * (g_s[k] * g_q[k]).sum())
        torch.testing.assert_close(grads[k], g_q[k])  # first order: the weights get FOMAML's gradient
    # and the learned rates are what adaptation uses
    adapted = inner_loop(params, list(params), support_loss, [list(range(6))], cfg, lrs=alpha)
    for k in params:
        torch.testing.assert_close(adapted[k].detach(), fast[k].detach())


def test_meta_sgd_rates_stay_positive_whatever_the_outer_step():
    # An outer step far larger than the rate itself: a raw rate would go negative (an inner step
    # *up* the loss); the log-parametrised rate only gets smaller.
    from llm_meta.meta.core import LR_PREFIX, meta_sgd_rates, split_rates

    weights = {"w": torch.zeros(3)}
    log_rates = meta_sgd_rates(weights, 1e-2)
    stepped = {k: v - 50.0 for k, v in log_rates.items()}  # a gradient step of size 50 on ρ
    _, rates = split_rates({**weights, **stepped})
    assert rates is not None and 0 < rates["w"].item() < 1e-2
    with pytest.raises(ValueError, match="positive"):
        meta_sgd_rates(weights, 0.0)
    assert set(log_rates) == {LR_PREFIX + "w"}


def test_metasgd_rates_receive_gradients_on_the_language_model(body):
    from llm_meta.meta.algorithms import metasgd
    from llm_meta.meta.core import LR_PREFIX, meta_sgd_rates

    theta = perturbed(lora_params(body))
    rates = meta_sgd_rates(theta, 1e-2, ["head.weight", "head.bias"])
    assert set(rates) == {LR_PREFIX + k for k in [*theta, "head.weight", "head.bias"]}
    grads, stats = metasgd(body, {**theta, **rates}, EPISODE, InnerConfig(steps=2, lr=1e-2), 0)
    assert set(grads) == set(theta) | set(rates)
    assert all(torch.isfinite(grads[k]) and grads[k] != 0 for k in rates)
    with pytest.raises(ValueError, match="learned rates"):
        metasgd(body, theta, EPISODE, InnerConfig(), 0)


def test_second_order_maml_on_the_language_model_differs_from_first_order(body):
    from llm_meta.meta.algorithms import maml

    theta = perturbed(lora_params(body))
    cfg = InnerConfig(steps=2, lr=0.5, optimizer="sgd")
    second, stats = maml(body, theta, EPISODE, cfg, 0)
    first, _ = fomaml(body, theta, EPISODE, cfg, 0)
    assert set(second) == set(theta)
    diff = sum((second[k] - first[k]).abs().sum() for k in theta)
    assert diff > 1e-3 * sum(first[k].abs().sum() for k in theta)
    assert stats.loss > 0
    # The proximal term's anchor is held constant: its second-order gradient would be wrong, so refused.
    with pytest.raises(ValueError, match="proximal"):
        maml(body, theta, EPISODE, InnerConfig(steps=1, proximal=0.1), 0)
    fomaml(body, theta, EPISODE, InnerConfig(steps=1, proximal=0.1), 0)  # first order: fine


def test_protonet_loss_equals_hand_computation():
    from llm_meta.meta.heads import protonet_loss

    s = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    ys = torch.tensor([0, 0, 1])
    q = torch.tensor([[1.0, 1.0]])
    # prototypes: c0 = (1, 0), c1 = (0, 4); squared distances from q: 1 and 10.
    scale = 0.5
    loss, acc = protonet_loss(s, ys, q, torch.tensor([1]), 2, scale)
    expected = -math.log(math.exp(-0.5 * 10) / (math.exp(-0.5 * 1) + math.exp(-0.5 * 10)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert acc.item() == 0.0


def test_protonet_gradient_flows_through_prototypes_into_lora(body):
    from llm_meta.meta.algorithms import protonet

    theta = perturbed(lora_params(body))
    grads, stats = protonet(body, theta, EPISODE, InnerConfig(), 0)
    assert set(grads) == set(theta)
    assert all(grads[k].abs().sum() > 0 for k in theta)
    assert 0 <= stats.accuracy <= 1 and stats.loss > 0


def test_a_start_splits_into_its_typed_parts_and_joins_back_in_order():
    from llm_meta.meta.core import meta_sgd_rates
    from llm_meta.meta.starts import Start
    from llm_meta.meta.transfer import transfer_head_key

    t = torch.zeros
    lora = {"layer.0.query.lora_A.default.weight": t(2, 4), "layer.0.query.lora_B.default.weight": t(4, 2)}
    head = {"head.weight": t(3, 4), "head.bias": t(3), "span.weight": t(2, 4), "span.bias": t(2)}
    params = {**lora, **head, **meta_sgd_rates(lora, 1e-3), "hyper.out.weight": t(5),
              transfer_head_key("mcid", "greet"): t(5)}
    parts = Start.of(params)
    assert parts.lora == lora and parts.head == head and parts.variant == "hypernetwork"
    assert set(parts.rates) == set(lora) and set(parts.hypernet) == {"out.weight"}
    assert list(parts.params()) == list(params)  # the same dict, the same order
    assert list(parts.params(transfer=False)) == list(params)[:-1]
    assert Start.of({**lora, **meta_sgd_rates(lora, 1e-3)}).variant == "meta-sgd" and Start.of(lora).variant == "lora"
