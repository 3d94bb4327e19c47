"""The LoRA hypernetwork: invariance, exact start, gradients, meta-training, `generate`, plain peft."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_meta.meta.adaptation import adapt
from llm_meta.meta.kinds import predict_logits
from llm_meta.meta.algorithms import ALGORITHMS, protonet
from llm_meta.classifier import FewShotClassifier
from llm_meta.meta.core import InnerConfig
from llm_meta.data.episodes import Episode, Examples
from llm_meta.meta.hypernet import (HYPER_PREFIX, HypernetConfig, count_parameters, generated_params, init_hypernet,
                               slot, split_hypernet)
from llm_meta.modeling.body import ModelConfig, lora_params
from llm_meta.modeling.loading import load_body
from tests.test_meta_train import run, tiny_overrides, toy_csv  # noqa: F401 (fixture)

TEXTS = ["card payment please", "pay with my card", "play my music playlist", "next song in the playlist",
         "weather forecast today", "will it rain tomorrow"]


@pytest.fixture(scope="module")
def body(tiny_bert_dir):
    return load_body(ModelConfig(name=str(tiny_bert_dir)))


def trained_like(params, seed: int = 1):
    """A hypernetwork whose output layers are no longer zero (as after training)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) if ".out." in k else v for k, v in params.items()}


def test_slots_of_every_architecture():
    assert slot("base_model.model.encoder.layer.3.attention.self.query.lora_B.default.weight") == (3, "attention_self_query", "B")
    assert slot("base_model.model.model.layers.11.self_attn.v_proj.lora_A.default.weight") == (11, "self_attn_v_proj", "A")
    assert slot("base_model.model.h.0.attn.c_attn.lora_A.default.weight") == (0, "attn_c_attn", "A")


def test_untrained_hypernet_writes_the_start_exactly(body):
    start = lora_params(body)
    params = {**start, **init_hypernet(start, body.hidden_size, HypernetConfig(hidden=16))}
    support = Examples(TEXTS, [0, 0, 1, 1, 2, 2])
    written = generated_params(body, params, support, 3, ["card", "music", "weather"])
    assert set(written) == set(start) and all(torch.equal(written[k], start[k]) for k in start)
    cfg = InnerConfig(steps=0)
    a, b = adapt(body, params, support, 3, cfg), adapt(body, start, support, 3, cfg)
    assert torch.equal(predict_logits(body, a, TEXTS, 10.0), predict_logits(body, b, TEXTS, 10.0))


def test_writing_a_too(body):
    start = lora_params(body)
    params = trained_like({**start, **init_hypernet(start, body.hidden_size, HypernetConfig(hidden=8, write="AB"))})
    written = generated_params(body, params, Examples(TEXTS, [0, 0, 1, 1, 2, 2]), 3, None)
    assert all(not torch.equal(written[k], start[k]) for k in start)


def test_order_of_examples_and_classes_does_not_matter(body):
    start = lora_params(body)
    params = trained_like({**start, **init_hypernet(start, body.hidden_size, HypernetConfig(hidden=16))})
    one = generated_params(body, params, Examples(TEXTS, [0, 0, 1, 1, 2, 2]), 3, ["card", "music", "weather"])
    order = [5, 2, 0, 3, 4, 1]  # shuffled examples, and classes renumbered (weather, card, music)
    relabel = {0: 1, 1: 2, 2: 0}
    two = generated_params(body, params, Examples([TEXTS[i] for i in order], [relabel[[0, 0, 1, 1, 2, 2][i]]
                           for i in order]), 3, ["weather", "card", "music"])
    assert any(not torch.equal(one[k], start[k]) for k in start)  # it does write something
    for k in start:
        torch.testing.assert_close(one[k], two[k], rtol=1e-5, atol=1e-6)


def test_gradient_reaches_the_generator_and_equals_protonet_at_the_start(body):
    start = lora_params(body)
    params = {**start, **init_hypernet(start, body.hidden_size, HypernetConfig(hidden=16))}
    ep = Episode(Examples(TEXTS, [0, 0, 1, 1, 2, 2]), Examples(["my card payment", "music please", "rain today"],
                                                               [0, 1, 2]), ["card", "music", "weather"], "toy")
    grads, _ = ALGORITHMS["hypernet"](body, params, ep, InnerConfig(), 0)
    plain, _ = protonet(body, start, ep, InnerConfig(), 0)
    for k in start:  # Δ = 0, so the LoRA's gradient is ProtoNet's
        torch.testing.assert_close(grads[k], plain[k])
    outs = [k for k in grads if k.startswith(HYPER_PREFIX + "out.") and k.endswith(".weight")]
    assert len(outs) == 6 and all(k.endswith(".B.weight") and grads[k].abs().sum() > 0 for k in outs)
    inner = [k for k in grads if k.startswith(HYPER_PREFIX + "enc1")]
    assert all(grads[k].abs().sum() == 0 for k in inner)  # ... and nothing upstream of them yet


def test_minilm_size_is_stated(minilm):
    n = count_parameters(init_hypernet(lora_params(minilm), minilm.hidden_size, HypernetConfig()))
    assert 1e6 < n < 2.5e6, n  # issue: a few million at most for MiniLM (1.86M with the defaults)


@pytest.mark.parametrize("algorithm", ["hypernet", "hypernet+fomaml"])
def test_meta_train_generate_and_plain_peft(algorithm, tiny_bert_dir, toy_csv, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    run(tiny_overrides(tiny_bert_dir, toy_csv, out, steps=4, algorithm=algorithm, **{"hypernet.hidden": 16,
                                                                                     "validate_every": 4}))
    meta = json.loads((out / "adapter" / "llm_meta.json").read_text())
    assert meta["algorithm"] == algorithm and (out / "adapter" / "hypernet.safetensors").is_file()
    trained = load_file(str(out / "checkpoints" / "step-0000004" / "params.safetensors"))
    assert any(k.startswith(HYPER_PREFIX + "out.") and v.abs().sum() > 0 for k, v in trained.items())

    support = tmp_path / "support.csv"
    support.write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in zip(TEXTS, "aabbcc")) + "\n")
    model = tmp_path / "generated"
    # The trained run may have kept step 0; generate from the trained step-4 tensors to test the real path.
    adapter = out / "adapter"
    if meta["step"] == 0:
        from llm_meta.saving.checkpoint import save_adapter
        b = load_body(ModelConfig(name=str(tiny_bert_dir)))
        adapter = save_adapter(b, {k: v for k, v in trained.items()}, tmp_path / "step4", meta)
    cmd = [sys.executable, "-m", "llm_meta.cli", "generate", "--hypernet", str(adapter), "--support", str(support),
           "--output", str(model)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    clf = FewShotClassifier.load(model)
    assert not (model / "hypernet.safetensors").exists() and clf.labels == ["a", "b", "c"]

    from peft import PeftModel
    from transformers import AutoModel
    plain = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_bert_dir), str(model)).eval()
    batch = clf.body.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = plain(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    head = load_file(str(model / "head.safetensors"))
    logits = clf.scale * (emb @ head["head.weight"].T + head["head.bias"])
    torch.testing.assert_close(logits, predict_logits(clf.body, clf.params, TEXTS, clf.scale), rtol=1e-4, atol=1e-4)
    written = lora_params(clf.body)
    _, net = split_hypernet(trained)
    assert net and any(not torch.equal(written[k], trained[k]) for k in written)  # not just θ0


def test_generate_refuses_a_folder_without_hypernet(tiny_bert_dir, toy_csv, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    run(tiny_overrides(tiny_bert_dir, toy_csv, out, steps=2))
    done = subprocess.run([sys.executable, "-m", "llm_meta.cli", "generate", "--hypernet", str(out / "adapter"),
                           "--support", str(toy_csv), "--output", str(tmp_path / "m")], capture_output=True, text=True)
    assert done.returncode == 2 and "without a hypernetwork" in done.stderr and not (tmp_path / "m").exists()
