"""SMLMT episodes from unlabelled text, task mixtures, and meta-training from a user's text file."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import llm_meta.data.smlmt as smlmt
from llm_meta.modeling.model_files import resolve_model_path
from llm_meta.data.episodes import MixtureSampler
from llm_meta.data.smlmt import SmlmtSampler, load_corpus, mask_word
from llm_meta.data.tasks import TaskError, load_task
from tests.test_meta_train import run, tiny_overrides
from tests.tiny import CORPUS


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    """3,000 real CLINC150 utterances as a plain text file, one per line (labels discarded)."""
    texts = load_task("clinc").split("train")["text"][:3000]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(texts) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))


@pytest.fixture(scope="module")
def sampler(corpus_file, tokenizer, tmp_path_factory) -> SmlmtSampler:
    return SmlmtSampler.build(load_corpus(str(corpus_file)), "corpus", tokenizer, n_way=5, k_shot=5, q_query=5,
                              seed=0, cache=tmp_path_factory.mktemp("cache"))


def test_masked_word_never_remains_and_episodes_are_well_formed(sampler):
    for episode in sampler.episodes(200):
        assert episode.n_way == 5 and len(set(episode.label_names)) == 5
        assert len(episode.support) == 5 * 5 and len(episode.query) == 5 * 5
        assert Counter(episode.support.labels) == Counter(episode.query.labels) == {y: 5 for y in range(5)}
        for examples in (episode.support, episode.query):
            for text, y in zip(examples.texts, examples.labels):
                word = episode.label_names[y]
                assert "[MASK]" in text
                assert not re.search(rf"\b{word}\b", text, re.IGNORECASE), (word, text)
        # every text comes from its own corpus sentence: none is in both support and query
        used = []
        for text, y in zip(episode.support.texts + episode.query.texts, episode.support.labels + episode.query.labels):
            word = episode.label_names[y]
            sources = [i for i in sampler.index[word] if mask_word(sampler.sentences[i], word, "[MASK]") == text]
            assert sources
            used.append(sources[0] if len(sources) == 1 else tuple(sources))
        assert len(set(used)) == len(used)


def test_mask_word_is_whole_word_and_case_insensitive():
    assert mask_word("Card or card, CARD! cards discard", "card", "[M]") == "[M] or [M], [M]! cards discard"


def test_same_seed_same_episodes(sampler, corpus_file, tokenizer, tmp_path):
    again = SmlmtSampler.build(load_corpus(str(corpus_file)), "corpus", tokenizer, 5, 5, 5, seed=0, cache=tmp_path)
    assert [e.fingerprint() for e in again.episodes(20)] == [e.fingerprint() for e in sampler.episodes(20)]
    other = SmlmtSampler.build(load_corpus(str(corpus_file)), "corpus", tokenizer, 5, 5, 5, seed=1, cache=tmp_path)
    assert [e.fingerprint() for e in other.episodes(20)] != [e.fingerprint() for e in sampler.episodes(20)]


def test_index_is_cached_per_corpus_and_tokenizer(corpus_file, tokenizer, tmp_path, monkeypatch):
    sentences = load_corpus(str(corpus_file))
    SmlmtSampler.build(sentences, "corpus", tokenizer, 5, 5, 5, cache=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 1
    monkeypatch.setattr(smlmt, "build_index", lambda *a, **k: pytest.fail("the cached index was not used"))
    SmlmtSampler.build(sentences, "corpus", tokenizer, 5, 5, 5, cache=tmp_path)
    monkeypatch.undo()
    SmlmtSampler.build(sentences[:-1], "corpus", tokenizer, 5, 5, 5, cache=tmp_path)  # another corpus: new index
    SmlmtSampler.build(sentences, "corpus", None, 5, 5, 5, cache=tmp_path)  # another tokenizer: new index
    assert len(list(tmp_path.glob("*.json"))) == 3


def test_eligible_words_exclude_stop_words_numbers_and_split_words(sampler, tokenizer):
    words = set(sampler.words)
    assert words and not words & smlmt.stop_words()
    assert all(re.fullmatch(r"[a-z]{3,}", w) for w in words)
    assert all(len(tokenizer.tokenize(" " + w)) == 1 for w in words)
    assert all(len(sampler.index[w]) >= 10 for w in words)


def test_too_small_corpus_is_a_clear_error(tmp_path, tokenizer):
    small = tmp_path / "small.txt"
    small.write_text("\n".join(f"the weather in paris is nice today {i}" for i in range(12)))
    with pytest.raises(TaskError, match=r"has \d+ eligible word\(s\).*in at least K\+Q=10 sentences.*5-way episodes "
                                        r"need 5"):
        SmlmtSampler.build(load_corpus(str(small)), "small", tokenizer, 5, 5, 5, cache=tmp_path)


def test_corpus_sources(tmp_path):
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": f"text number {i}"}) for i in range(3)))
    assert load_corpus(str(tmp_path / "c.jsonl"), text_column="body") == [f"text number {i}" for i in range(3)]
    with pytest.raises(TaskError, match="no column 'text'.*body"):
        load_corpus(str(tmp_path / "c.jsonl"))
    tweets = load_corpus("wnut16")
    assert len(tweets) > 2000
    meta_train_only = load_corpus("clinc", class_role="meta_train")
    assert 0 < len(meta_train_only) < len(load_corpus("clinc"))


def test_tokenizer_without_mask_token_gets_a_placeholder(tmp_path):
    # Decoders (GPT-2, Llama) have no mask token: a neutral placeholder stands in for the word.
    # A GPT-2-style byte-level BPE with room to keep these sentences' words whole:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=1000, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    assert tok.mask_token is None
    sentences = [f"{a} and {b}" for a in CORPUS[:8] for b in CORPUS[:8] if a != b]  # the BPE's own words
    sampler = SmlmtSampler.build(sentences, "tiny", tok, 2, 1, 1, cache=tmp_path)
    assert sampler.mask == smlmt.PLACEHOLDER
    episode = sampler.episode(0)
    assert all(smlmt.PLACEHOLDER in t for t in episode.support.texts + episode.query.texts)


def test_mixture_follows_weights_and_is_reproducible(sampler):
    clinc = load_task("clinc")
    from llm_meta.data.episodes import EpisodeSampler

    supervised = EpisodeSampler([clinc], 5, 5, 5, class_role="meta_train", seed=0)
    mix = MixtureSampler([(supervised, 1.0), (sampler, 3.0)], seed=0)
    counts = Counter(mix.source_of(i) for i in range(2000))
    assert set(counts) == {"clinc", "smlmt:corpus"} and 0.7 < counts["smlmt:corpus"] / 2000 < 0.8
    assert [mix.episode(i).task for i in range(30)] == [mix.source_of(i) for i in range(30)]
    assert [e.fingerprint() for e in mix.episodes(10)] == [e.fingerprint() for e in mix.episodes(10)]


def test_meta_train_from_a_users_text_file_then_adapt(tiny_bert_dir, corpus_file, tmp_path):
    import llm_meta
    from llm_meta.saving.checkpoint import read_metadata
    from llm_meta.classifier import AdaptConfig
    from llm_meta.meta.core import InnerConfig

    # SMLMT only: no labelled task at all, a plain text file the user brings
    out = tmp_path / "smlmt"
    base = [o for o in tiny_overrides(tiny_bert_dir, corpus_file, out, steps=2) if not o.startswith("tasks=")]
    run([*base, "tasks=[]", f"smlmt.data={corpus_file}", "validation.tasks=[mcid]"])
    meta = read_metadata(out / "adapter")
    assert list(meta["tasks"]) == [f"smlmt:{corpus_file}"]
    clf = llm_meta.adapt(task="mcid", shots=2, adapter=out / "adapter", cfg=AdaptConfig(inner=InnerConfig(steps=1)))
    assert len(clf.labels) == 16

    # hybrid: a labelled task and the corpus, weighted, with per-source counts in the log
    out = tmp_path / "hybrid"
    base = [o for o in tiny_overrides(tiny_bert_dir, corpus_file, out, steps=4) if not o.startswith("tasks=")]
    run([*base, "tasks=[{name: mcid, weight: 1}, {smlmt: " + str(corpus_file) + ", weight: 1}]",
         "validation.tasks=[mcid]"])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    counts = [r["counts"] for r in records if r["event"] == "sources"][-1]
    assert set(counts) == {"mcid", f"smlmt:{corpus_file}"} and sum(counts.values()) == 4 * 2
    with pytest.raises(ValueError, match="exactly one of name"):
        run([*base, "tasks=[{name: mcid, smlmt: x.txt}]", f"output_dir={tmp_path / 'bad1'}"])
    with pytest.raises(ValueError, match="transfer trains one head per labelled dataset"):
        run([*base, "algorithm=transfer", f"smlmt.data={corpus_file}", "validation.tasks=[mcid]",
             f"output_dir={tmp_path / 'bad2'}"])
