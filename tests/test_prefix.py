"""Top-layer LoRA with cached frozen lower layers: same outputs and gradients as the full forward
pass, the lower layers really skipped, and adapters that plain peft loads."""

import pytest
import torch

from llm_meta.modeling.body import ModelConfig, lora_params
from llm_meta.modeling.forward import embed, tokenize
from llm_meta.modeling.loading import load_body
from llm_meta.modeling.prefix import find_layer_stack, frozen_fingerprint

TEXTS = ["how do i reset my card pin", "set an alarm for six am please", "will it rain tomorrow", "hi"]


def moved(body) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {k: (v + 0.1 * torch.randn(v.shape, generator=gen)).requires_grad_(True)
            for k, v in lora_params(body).items()}


def outputs(body, params, texts):
    emb = embed(body, params, tokenize(body, texts))
    grads = torch.autograd.grad((emb ** 3).sum(), list(params.values()))
    return emb.detach(), grads


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert", "mpnet"])
def test_cached_top_layers_equal_the_full_forward(kind, request):
    folder = request.getfixturevalue(f"tiny_{kind}_dir")
    torch.manual_seed(0)
    body = load_body(ModelConfig(name=str(folder), lora_layers=1))
    layers = find_layer_stack(body.model, 2)[2]
    top = {id(p) for p in layers[1].parameters()}
    named = dict(body.model.named_parameters())
    assert body.lora_names and all(id(named[n]) in top for n in body.lora_names)  # LoRA on the top layer only
    params = moved(body)
    cache, body.prefix = body.prefix, None
    full_emb, full_grads = outputs(body, params, TEXTS)  # every layer runs
    body.prefix = cache
    calls = []
    layers[0].register_forward_hook(lambda *a: calls.append(1))
    cached_emb, cached_grads = outputs(body, params, TEXTS)  # fills the cache (lower layers run once)
    assert len(cache.rows) == len(TEXTS) and calls == [1]
    again_emb, again_grads = outputs(body, params, TEXTS)  # from the cache: the lower layer never runs
    assert calls == [1]
    for emb, grads in ((cached_emb, cached_grads), (again_emb, again_grads)):
        assert torch.allclose(emb, full_emb, atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, full_grads))
    assert max(g.abs().max().item() for g in full_grads) > 1e-4
    # another batch (other padding) reuses the rows and agrees
    assert torch.allclose(embed(body, params, tokenize(body, TEXTS[2:])), full_emb[2:], atol=1e-5)
    # the cached states are what the top layers read
    for key in cache.rows:
        cache.rows[key] = cache.rows[key] * 2
    assert not torch.allclose(embed(body, params, tokenize(body, TEXTS)), full_emb, atol=1e-3)


def test_lora_layers_errors(tiny_llama_dir, tmp_path):
    with pytest.raises(ValueError, match="lora_layers must be between 1 and the model's 2 layers"):
        load_body(ModelConfig(name=str(tiny_llama_dir), lora_layers=3))
    # an adapter with LoRA on every layer cannot run with the lower layers frozen
    body = load_body(ModelConfig(name=str(tiny_llama_dir)))
    body.model.save_pretrained(tmp_path / "all")
    with pytest.raises(ValueError, match="LoRA tensors below the top 1 layers"):
        load_body(ModelConfig(name=str(tiny_llama_dir), lora_layers=1), adapter=tmp_path / "all")


def test_meta_train_with_top_layer_lora_saves_a_plain_peft_adapter(tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModel

    from llm_meta.saving.checkpoint import load_adapter_params
    from tests.test_classifier import TOPICS
    from tests.test_meta_train import run, tiny_overrides

    data = tmp_path / "toy.csv"
    data.write_text("text,label\n" + "\n".join(f"{w} request {i},{k}" for k, w in TOPICS.items() for i in range(8)))
    out = tmp_path / "run"
    run([*tiny_overrides(tiny_llama_dir, data, out, steps=2), "model.lora_layers=1", "outer.lr=0.05"])
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_llama_dir), str(out / "adapter"))
    names = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert names and all(".layers.1." in n for n in names)
    body = load_body(ModelConfig(name=str(tiny_llama_dir), lora_layers=1), adapter=out / "adapter")
    assert body.prefix is not None and set(load_adapter_params(body, out / "adapter")) == set(body.lora_names)


def test_disk_prefix_cache_is_reused_by_a_new_process_and_keyed_by_weights(tiny_llama_dir, tiny_gpt2_dir, tmp_path,
                                                                            monkeypatch, caplog):
    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path))
    cfg = ModelConfig(name=str(tiny_llama_dir), lora_layers=1, prefix_cache="disk")
    torch.manual_seed(0)
    first = load_body(cfg)
    params = moved(first)
    expected = embed(first, params, tokenize(first, TEXTS)).detach()
    first.prefix.flush()  # what happens at exit, or every shard_rows new texts
    shards = list((tmp_path / "prefix").glob("*/*.safetensors"))
    assert len(shards) == 1
    # A fresh body (as in a new process) reads the rows: the lower layer never runs, same outputs.
    second = load_body(cfg)
    assert set(second.prefix.rows) == set(first.prefix.rows)
    calls = []
    find_layer_stack(second.model, 2)[2][0].register_forward_hook(lambda *a: calls.append(1))
    assert torch.allclose(embed(second, params, tokenize(second, TEXTS)), expected, atol=1e-6) and calls == []
    # Other frozen weights are another folder: nothing is reused across models.
    gpt2 = load_body(ModelConfig(name=str(tiny_gpt2_dir), lora_layers=1, prefix_cache="disk"))
    embed(gpt2, lora_params(gpt2), tokenize(gpt2, TEXTS))
    gpt2.prefix.flush()
    assert len(list((tmp_path / "prefix").iterdir())) == 2
    stack = find_layer_stack(second.model, 2)[2]
    before = frozen_fingerprint(second.model, stack, "x")
    with torch.no_grad():
        next(stack[0].parameters()).add_(1e-3)  # a frozen lower weight changes: another fingerprint
    assert frozen_fingerprint(second.model, stack, "x") != before
    # A corrupt shard is skipped with a warning: its texts are recomputed, nothing fails.
    shards[0].write_bytes(b"not a safetensors file")
    third = load_body(cfg)
    assert third.prefix.rows == {} and "unreadable" in caplog.text
    assert torch.allclose(embed(third, params, tokenize(third, TEXTS)), expected, atol=1e-5)
    with pytest.raises(ValueError, match="prefix_cache must be memory or disk"):
        load_body(ModelConfig(name=str(tiny_llama_dir), lora_layers=1, prefix_cache="ram"))
