"""The fast paths equal the slow ones, and long texts are read as the user chose (speed issue).

Timings themselves are benchmarks (benchmarks/predict_speed.py, experiments/long_texts.py), not tests.
"""

import logging

import pytest
import torch

from llm_meta.meta.kinds import predict_logits
from llm_meta.meta.heads import zero_head
from llm_meta.modeling.forward import WINDOWS_KEY, by_tokens, embed, embed_texts, folded_lora, hidden_states, split_windows, tokenize, tokenize_counted, warn_truncated
from llm_meta.modeling.body import ModelConfig, lora_params
from llm_meta.modeling.loading import load_body

TEXTS = ["a short text", "where is my card", "a somewhat longer text about a transfer that did not arrive on time",
         "hi"]


def trained_lora(body, seed: int = 0):
    """LoRA tensors as after training: B != 0, so the LoRA branch changes every output."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in lora_params(body).items()}


@pytest.mark.parametrize("kind,extra", [("bert", {}), ("gpt2", {}), ("llama", {"lora_layers": 1})])
def test_folded_lora_gives_the_lora_forward_logits(kind, extra, request):
    """Prediction folds W + s·B·A into the base weights and switches the LoRA branches off; the
    embeddings and logits equal the LoRA forward's to float tolerance (GPT-2: transposed Conv1D
    weights; llama: top-layer LoRA over the prefix cache)."""
    body = load_body(ModelConfig(name=str(request.getfixturevalue(f"tiny_{kind}_dir")), max_length=32, **extra),
                     seed=0)
    params = {**trained_lora(body), **zero_head(body.hidden_size, 3, body.device)}
    params["head.weight"] = torch.randn(3, body.hidden_size, generator=torch.Generator().manual_seed(1))
    folded = folded_lora(body, params)
    assert folded is not None and len(folded) == sum(".lora_A." in n for n in body.lora_names)
    batch = tokenize(body, TEXTS)
    with torch.no_grad():
        slow = embed(body, params, batch)  # the LoRA forward the inner loop differentiates
        fast = embed(body, params, batch, folded)
        untrained = embed(body, lora_params(body), batch)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()
    assert not torch.allclose(slow, untrained, atol=1e-3)  # the LoRA really changes the output
    logits = predict_logits(body, params, TEXTS, 10.0, batch_size=3)  # folded, length-sorted batches
    assert torch.allclose(logits, 10.0 * (slow @ params["head.weight"].T), atol=1e-4)
    # Afterwards the LoRA branches are on again and the module's weights untouched (nothing written).
    assert not body.model._adapters_disabled
    with torch.no_grad():
        assert torch.equal(embed(body, params, batch), slow)


def test_windows_equal_truncation_when_every_text_fits_one_window(tiny_bert_dir):
    truncate = load_body(ModelConfig(name=str(tiny_bert_dir), max_length=32), seed=0)
    windows = load_body(ModelConfig(name=str(tiny_bert_dir), max_length=32, long_texts="windows",
                                    window_overlap=8), seed=0)
    params = trained_lora(truncate)
    batch = tokenize(windows, TEXTS)
    assert batch[WINDOWS_KEY].tolist() == [0, 1, 2, 3]  # one window per text
    with torch.no_grad():
        assert torch.allclose(embed(windows, params, batch), embed(truncate, params, tokenize(truncate, TEXTS)),
                              atol=1e-6)
    assert torch.allclose(embed_texts(windows, params, TEXTS), embed_texts(truncate, params, TEXTS), atol=1e-6)


def test_windows_read_a_long_text_whole_and_count_what_they_cut(tiny_bert_dir, caplog):
    cfg = dict(name=str(tiny_bert_dir), max_length=16, long_texts="windows", window_overlap=4)
    body = load_body(ModelConfig(**cfg, max_windows=8), seed=0)
    params = trained_lora(body)
    long = " ".join(f"word{i}" for i in range(40))
    enc, needed = split_windows(body, ["short", long], return_tensors="pt")
    windows = enc[WINDOWS_KEY].tolist()
    assert needed.tolist() == [1, windows.count(1)]
    assert windows[0] == 0 and windows.count(1) > 2 and windows == sorted(windows)
    ids = enc["input_ids"][enc[WINDOWS_KEY] == 1]
    assert (ids[:, 0] == body.tokenizer.cls_token_id).all()  # every window has its special tokens
    with torch.no_grad():
        got = embed(body, params, tokenize(body, ["short", long]))
        # By hand: each window mean-pooled over its real tokens, the text = token-weighted mean, normalised.
        inputs = {k: v for k, v in enc.items() if k != WINDOWS_KEY}
        states, mask = hidden_states(body, params, inputs), inputs["attention_mask"].unsqueeze(-1).float()
        rows = enc[WINDOWS_KEY] == 1
        by_hand = torch.nn.functional.normalize((states * mask)[rows].sum((0, 1)) / mask[rows].sum(), dim=0)
        truncate = load_body(ModelConfig(name=str(tiny_bert_dir), max_length=16), seed=0)
        first_window = embed(truncate, params, tokenize(truncate, [long]))[0]
    assert got.shape == (2, body.hidden_size)
    assert torch.allclose(got[1], by_hand, atol=1e-5)
    assert not torch.allclose(got[1], first_window, atol=1e-3)  # the rest of the text counts
    caplog.set_level(logging.WARNING)
    assert warn_truncated(body, ["short", long]) == 0  # 8 windows are enough: nothing cut, no warning
    assert "max_windows" not in caplog.text
    capped = load_body(ModelConfig(**cfg, max_windows=2), seed=0)
    assert split_windows(capped, ["short", long])[0][WINDOWS_KEY] == [0, 1, 1]
    assert warn_truncated(capped, ["short", long, long]) == 2
    assert "2 of 3 texts need more than model.max_windows=2 windows of 16 tokens" in caplog.text


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_one_tokenisation_both_truncates_and_counts_what_it_cut(kind, request):
    """Prediction counts truncated texts from its own tokenisation (no second pass): the batch equals
    the plainly truncated one, and the count and longest length equal the untruncated tokenizer's."""
    body = load_body(ModelConfig(name=str(request.getfixturevalue(f"tiny_{kind}_dir")), max_length=12), seed=0)
    texts = ["hi", " ".join(f"word{i}" for i in range(30)), "a text of a few words", " ".join(["x"] * 11)]
    batch, cut = tokenize_counted(body, texts)
    plain = body.tokenizer(texts, padding=True, truncation=True, max_length=12, return_tensors="pt")
    assert set(batch) == set(plain) and all(torch.equal(batch[k], plain[k]) for k in plain)
    lengths = [len(ids) for ids in body.tokenizer(texts, truncation=False)["input_ids"]]
    assert (cut.cut, cut.total, cut.longest) == (sum(n > 12 for n in lengths), 4, max(lengths))
    assert cut.cut >= 1  # the 30-word text is cut
    short, none_cut = tokenize_counted(body, texts[:1])
    assert none_cut.cut == 0 and none_cut.longest == short["attention_mask"].sum()


def test_batches_are_formed_by_token_count_not_characters(tiny_bert_dir):
    """A short string of many tokens (a URL, digits) sorts after a long string of few: batches of
    neighbours in `by_tokens` order pad little, which character order does not give."""
    body = load_body(ModelConfig(name=str(tiny_bert_dir), max_length=12), seed=0)
    texts = ["where is my card", "hi", "#@!%&*()", " ".join(["word"] * 40)]  # 16 chars 4 tokens; 8 chars 8 tokens
    lengths = [len(ids) for ids in body.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert sorted(lengths) != [lengths[i] for i in sorted(range(4), key=lambda i: len(texts[i]))]  # chars disagree
    order = by_tokens(body, texts)
    assert [lengths[i] for i in order] == sorted(lengths) and order[-1] == 3  # untruncated: the long text is last
    emb = embed_texts(body, lora_params(body), texts, batch_size=2)  # rows come back in the texts' own order
    assert torch.allclose(emb, torch.cat([embed_texts(body, lora_params(body), [t]) for t in texts]), atol=1e-5)


def test_long_text_settings_are_checked(tiny_bert_dir):
    with pytest.raises(ValueError, match="long_texts must be one of truncate, windows"):
        load_body(ModelConfig(name=str(tiny_bert_dir), long_texts="chunks"))
    with pytest.raises(ValueError, match="window_overlap must be between 0 and max_length/2"):
        load_body(ModelConfig(name=str(tiny_bert_dir), max_length=16, long_texts="windows", window_overlap=12))


def test_ner_tagging_on_folded_lora_gives_the_lora_forward_tags(tiny_bert_dir):
    from llm_meta.meta.heads import head_logits
    from llm_meta.modeling.words import align_words, word_embeddings
    from llm_meta.meta.token_heads import tag_words

    body = load_body(ModelConfig(name=str(tiny_bert_dir), max_length=32), seed=0)
    head = torch.randn(3, body.hidden_size, generator=torch.Generator().manual_seed(0))  # not the global state
    params = {**trained_lora(body), "head.weight": head, "head.bias": torch.zeros(3)}
    sentences = [["Paris", "is", "in", "France"], ["the", "cat", "sat", "on", "the", "mat", "today"], ["hi"]]
    aligned = align_words(body, sentences)
    with torch.no_grad():
        slow = head_logits(params, word_embeddings(body, params, aligned), 10.0).argmax(1).tolist()
    expected = [[0] * len(s) for s in sentences]
    for (s, w), y in zip(aligned.words, slow):
        expected[s][w] = y
    assert tag_words(body, params, sentences, 10.0, batch_size=2) == expected
    assert len({y for row in expected for y in row}) > 1  # the head really tags more than one class


def test_progress_is_a_line_per_interval_in_a_log(monkeypatch, capsys):
    """Without a terminal (CI logs, pipes) a long phase still says how far it is and its ETA, one
    plain line per interval (no carriage returns), and nothing when disabled."""
    import llm_meta.progress as progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    for _ in progress.progress_bar(range(4), desc="held-out test"):
        pass
    for _ in progress.progress_bar(range(4), desc="quiet", enabled=False):
        pass
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and "quiet" not in err
    assert lines[-1].startswith("held-out test: 100%") and "4/4" in lines[-1] and len(lines) == len(set(lines)) >= 2
    assert "<" in lines[1]  # elapsed<remaining: the ETA


def test_model_overrides_keep_adapt_s_own_model_default():
    """`llm-meta adapt model.autocast=bf16` (or any model.* key) goes on top of AdaptConfig's own
    model default, never replacing the rest of it."""
    from llm_meta.classifier import AdaptConfig
    from llm_meta.config import load_config

    default = AdaptConfig().model
    cfg = load_config(AdaptConfig, None, ["model.long_texts=windows", "model.max_length=128"])
    assert (cfg.model.lora_layers, cfg.model.name, cfg.model.long_texts, cfg.model.max_length) == \
        (default.lora_layers, default.name, "windows", 128)
    assert load_config(AdaptConfig, None, ["model.lora_layers=2"]).model.lora_layers == 2
