"""`adapt` with `adapter=auto`: the untrained start or a start built on this machine, chosen on the
support set (llm_meta.start_choice). A start that fits the task wins, one that does not loses to
the untrained start; a start of the task's family is used as trained; class names matched by
meaning on the real MiniLM; a corrupt start is left out; no built start gives the untrained start;
an NER tagger chooses among the NER starts alone."""

import dataclasses
import logging

import pytest
import torch

import llm_meta
from llm_meta.data.tasks import load_task
from llm_meta.meta.adaptation import adapt as adapt_params
from llm_meta.modeling.body import lora_params
from llm_meta.modeling.loading import load_body
from llm_meta.saving.checkpoint import save_adapter
from llm_meta.start_choice import built_candidates, match_names
from llm_meta.tagger import TaggerConfig, adapt_tagger
from tests.test_classifier import tiny_cfg, toy  # noqa: F401  (fixtures: a tiny BERT config, a 3-class task)
from tests.test_ner import _corpus


def _build(cache, name, cfg, params_of, **meta):
    """A start in the cache as `llm-meta starts build` leaves it: starts/NAME/adapter."""
    body = load_body(cfg.model, seed=0)
    save_adapter(body, params_of(body), cache / "starts" / name / "adapter",
                 {"base_model": cfg.model.name, "config": {"model": dataclasses.asdict(cfg.model)},
                  "algorithm": "fomaml", **meta})


def _fitted(toy, cfg):
    """LoRA trained on the task's own training split: a start whose geometry fits it."""
    def params_of(body):
        task = load_task(str(toy))
        train = task.split("train")
        index = {n: i for i, n in enumerate(task.label_names)}
        examples = llm_meta.data.episodes.Examples(list(train["text"]), [index[y] for y in train["label"]])
        inner = dataclasses.replace(cfg.inner, steps=40, lr=1e-2, label_examples=0)
        fast = adapt_params(body, lora_params(body), examples, len(task.label_names), inner, seed=0)
        return {k: v for k, v in fast.items() if k in body.lora_names}
    return params_of


def _scrambled(body):
    noise = torch.Generator().manual_seed(3)
    return {k: v + (3.0 * torch.randn(v.shape, generator=noise) if "lora_B" in k else 0)
            for k, v in lora_params(body).items()}


def test_the_start_that_fits_wins_and_the_one_that_does_not_loses(toy, tiny_cfg, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path / "cache"))
    cfg = dataclasses.replace(tiny_cfg, adapter="auto")
    _build(tmp_path / "cache", "scrambled", tiny_cfg, _scrambled, label_names=["other"])
    clf = llm_meta.adapt(task=str(toy), shots=3, cfg=cfg)
    fits = clf.metadata["start_selection"]["leave_one_out_fit"]
    assert list(fits) == ["untrained", "scrambled"] and fits["untrained"] > fits["scrambled"]
    assert clf.metadata["start"] == "untrained" and clf.metadata["start_selection"]["inner_steps"] == 3

    _build(tmp_path / "cache", "fitted", tiny_cfg, _fitted(toy, tiny_cfg), label_names=["other"])
    clf = llm_meta.adapt(task=str(toy), shots=3, cfg=cfg)
    fits = clf.metadata["start_selection"]["leave_one_out_fit"]
    assert max(fits, key=fits.get) == "fitted" == clf.metadata["start_selection"]["chosen"]
    assert clf.metadata["start"].endswith("fitted/adapter") and clf.metadata["start_selection"]["inner_steps"] == 3
    clf.save(tmp_path / "model")  # the task model records the choice and loads without the cache
    assert "start chosen on the support set: fitted" in (tmp_path / "model" / "README.md").read_text()
    assert llm_meta.FewShotClassifier.load(tmp_path / "model").labels == clf.labels


def test_a_start_of_the_tasks_family_is_used_as_trained_and_a_corrupt_one_left_out(
        toy, tiny_cfg, tmp_path, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path / "cache"))
    labels = load_task(str(toy)).label_names
    _build(tmp_path / "cache", "family", tiny_cfg, _scrambled, label_names=[*labels, "spare"], algorithm="protonet")
    clf = llm_meta.adapt(task=str(toy), shots=2, cfg=dataclasses.replace(tiny_cfg, adapter="auto"))
    selection = clf.metadata["start_selection"]
    assert (selection["chosen"], selection["leave_one_out_fit"], selection["inner_steps"]) == ("family", None, 0)
    # select_start=support: the fit alone, the family's labels notwithstanding
    clf = llm_meta.adapt(task=str(toy), shots=2, cfg=dataclasses.replace(tiny_cfg, adapter="auto",
                                                                         select_start="support"))
    assert clf.metadata["start_selection"]["chosen"] == "untrained"

    weights = tmp_path / "cache" / "starts" / "family" / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    body = load_body(tiny_cfg.model, seed=0)  # a start without its recorded config; one named as the untrained
    save_adapter(body, _scrambled(body), tmp_path / "cache" / "starts" / "no_config" / "adapter",
                 {"base_model": tiny_cfg.model.name, "algorithm": "fomaml"})
    _build(tmp_path / "cache", "untrained", tiny_cfg, _scrambled)
    with caplog.at_level(logging.WARNING, logger="llm_meta.start_choice"):
        assert [c.name for c in built_candidates(tiny_cfg.model, tiny_cfg.model)] == ["untrained"]
    assert "built start family left out" in caplog.text and "checksum" in caplog.text
    assert "built start no_config left out: its llm_meta.json has no 'config' entry" in caplog.text
    assert "built start untrained left out: its name is the untrained start's" in caplog.text


def test_no_built_start_is_the_untrained_start_and_bad_combinations_are_refused(toy, tiny_cfg, tmp_path,  # noqa: F811
                                                                                monkeypatch):
    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path / "empty"))
    auto = llm_meta.adapt(task=str(toy), shots=2, cfg=dataclasses.replace(tiny_cfg, adapter="auto"))
    plain = llm_meta.adapt(task=str(toy), shots=2, cfg=tiny_cfg)
    assert auto.metadata["start"] == "untrained" and auto.metadata["start_selection"] is None
    assert all(torch.equal(auto.params[k], plain.params[k]) for k in plain.params)
    with pytest.raises(ValueError, match="select_start=off needs a named adapter"):
        llm_meta.adapt(task=str(toy), shots=2, cfg=dataclasses.replace(tiny_cfg, adapter="auto", select_start="off"))


def test_class_names_match_a_familys_by_meaning_on_minilm_or_not_at_all(minilm):
    family = ["negative", "neutral", "positive"]
    params = lora_params(minilm)
    assert match_names(minilm, params, ["positives", "negatives"], family) == {"positives": "positive",
                                                                               "negatives": "negative"}
    assert match_names(minilm, params, ["very positive", "very negative", "neutral"], family) == {
        "very positive": "positive", "very negative": "negative", "neutral": "neutral"}
    for names in (["spam", "ham"], ["sports", "politics"], ["1 star", "5 stars"],  # not sentiment; both nearest one name
                  ["a", "b", "c", "d"]):  # more classes than the family has
        assert match_names(minilm, params, names, family) is None, names


def test_select_start_names_uses_the_matched_names_for_the_label_examples(toy, tiny_cfg, tmp_path, monkeypatch):  # noqa: F811
    from llm_meta import start_choice

    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path / "cache"))
    _build(tmp_path / "cache", "family", tiny_cfg, _scrambled, label_names=["x", "y", "z"], algorithm="protonet")
    labels = load_task(str(toy)).label_names
    # The match itself is tested on MiniLM above; here a tiny model's match is forced.
    monkeypatch.setattr(start_choice, "match_names", lambda body, params, names, family: dict(zip(names, family)))
    seen = {}

    def recorded(*args, label_names=None, **kwargs):  # the names the label examples are made of
        seen["names"] = label_names
        return adapt_params(*args, label_names=label_names, **kwargs)
    monkeypatch.setattr(llm_meta.classifier, "adapt_params", recorded)
    clf = llm_meta.adapt(task=str(toy), shots=2, cfg=dataclasses.replace(tiny_cfg, adapter="auto", select_start="names"))
    selection = clf.metadata["start_selection"]
    assert selection["chosen"] == "family" and selection["name_match"] == dict(zip(labels, ["x", "y", "z"]))
    assert seen["names"] == ["x", "y", "z"] and clf.labels == labels and selection["inner_steps"] == 0
    clf.save(tmp_path / "model")
    assert f"matched by meaning: {labels[0]} → x" in (tmp_path / "model" / "README.md").read_text()
    auto = llm_meta.adapt(task=str(toy), shots=2, cfg=dataclasses.replace(tiny_cfg, adapter="auto"))
    assert "name_match" not in auto.metadata["start_selection"]  # plain auto never matches names


def test_a_tagger_chooses_among_the_ner_starts_only(tiny_cfg, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path / "cache"))
    conll = tmp_path / "toy.conll"
    conll.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(s.tokens, s.tags)) for s in _corpus(200)) + "\n")
    cfg = TaggerConfig(data=str(conll), types=["PER", "LOC"], shots=2, adapter="auto", model=tiny_cfg.model,
                       inner=dataclasses.replace(TaggerConfig().inner, steps=2))
    _build(tmp_path / "cache", "classifier", tiny_cfg, _scrambled, label_names=["other"])  # a classifier's start
    tagger = adapt_tagger(cfg)
    assert tagger.metadata["start"] == "untrained" and tagger.metadata["start_selection"] is None

    # as llm_meta.json records an NER run: the sequence tasks it inherits (unread) beside ner.data
    ner_config = {"model": dataclasses.asdict(tiny_cfg.model), "ner": {"data": str(conll)},
                  "tasks": ["clinc", "stackoverflow"]}
    body = load_body(tiny_cfg.model, seed=0)
    save_adapter(body, _scrambled(body), tmp_path / "cache" / "starts" / "ner" / "adapter",
                 {"base_model": tiny_cfg.model.name, "config": ner_config, "algorithm": "transfer", "label_names": []})
    tagger = adapt_tagger(cfg)
    selection = tagger.metadata["start_selection"]
    fits = selection["leave_one_out_fit"]
    assert list(fits) == ["untrained", "ner"]  # the classifier's start is not a tagger's candidate
    # judged on the support set's words, O included: the scrambled start's word geometry loses
    assert fits["untrained"] > fits["ner"] and selection["chosen"] == "untrained" == tagger.metadata["start"]
    assert tagger.metadata["adapt_timings"]["start_selection"] >= 0
