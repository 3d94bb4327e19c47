"""The SetFit-level Python API, the same verbs for both task kinds:
`FewShotClassifier.from_pretrained(start).fit(texts, labels)` and
`FewShotTagger.from_pretrained(start).fit(word_lists, tag_lists)` on in-memory lists, a
datasets.Dataset, a pandas DataFrame and a CSV with other column names (also through SetFit's
`column_mapping`); `predict` returns labels (entity spans for the tagger), `predict_proba` an
(n, n_classes) array."""

import datasets
import pandas as pd
import pytest
import torch

from llm_meta import FewShotClassifier, FewShotTagger
from llm_meta.errors import ColumnError
from llm_meta.data.tasks import TaskError, as_task

TEXTS = ["wake me up at seven", "set an alarm for six", "alarm at noon please", "what is the weather today",
         "will it rain tomorrow", "is it sunny outside", "play some jazz", "put on my workout playlist",
         "play the next song"]
LABELS = ["alarm"] * 3 + ["weather"] * 3 + ["music"] * 3
QUERIES = ["wake me at five", "is it cold out", "play a song"]


@pytest.fixture(scope="module")
def fitted(tiny_bert_dir):
    return FewShotClassifier.from_pretrained(str(tiny_bert_dir)).fit(TEXTS, LABELS)


def test_fit_on_lists_then_predict_labels_and_probabilities(fitted):
    assert sorted(fitted.labels) == ["alarm", "music", "weather"]
    predicted = fitted.predict(QUERIES)
    assert len(predicted) == 3 and all(label in fitted.labels for label in predicted)
    probs = fitted.predict_proba(QUERIES)
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(1), torch.ones(3))
    assert predicted == [fitted.labels[i] for i in probs.argmax(1).tolist()]
    assert [label for label, _ in fitted.predict_scored(QUERIES)] == predicted
    with pytest.raises(TypeError, match=r"not one string: predict\(\[text\]\)"):
        fitted.predict("wake me at five")  # would otherwise be labelled character by character
    # a test set may hold a single class (fitting may not)
    one = fitted.evaluate(["wake me at five", "alarm at six"], ["alarm", "alarm"])
    assert one["examples"] == 2 and one["split"] == "all given"


def test_a_dataset_a_dataframe_and_a_file_with_other_columns_fit_the_same_model(fitted, tiny_bert_dir, tmp_path):
    frame = pd.DataFrame({"utterance": TEXTS, "intent": LABELS})
    frame.to_csv(tmp_path / "support.csv", index=False)
    for data in (datasets.Dataset.from_pandas(frame), frame, str(tmp_path / "support.csv")):
        other = FewShotClassifier.from_pretrained(str(tiny_bert_dir)).fit(data, text_column="utterance",
                                                                          label_column="intent")
        assert torch.equal(other.predict_proba(QUERIES), fitted.predict_proba(QUERIES)), type(data).__name__
    mapped = FewShotClassifier.from_pretrained(str(tiny_bert_dir)).fit(
        frame, column_mapping={"utterance": "text", "intent": "label"})  # SetFit's spelling
    assert torch.equal(mapped.predict_proba(QUERIES), fitted.predict_proba(QUERIES))
    with pytest.raises(ValueError, match="the roles are text, label"):
        FewShotClassifier.from_pretrained(str(tiny_bert_dir)).fit(frame, column_mapping={"utterance": "sentence"})
    # the columns fitted on are the model's: evaluate reads a file of them without being told
    assert other.columns == ("utterance", "intent")
    assert other.evaluate(str(tmp_path / "support.csv"))["examples"] == len(TEXTS)
    # evaluate reads what fit reads: lists, a frame with its columns
    assert fitted.evaluate(TEXTS, LABELS)["accuracy"] == other.evaluate(frame)["accuracy"]
    assert fitted.evaluate(frame, column_mapping={"utterance": "text", "intent": "label"})["examples"] == len(TEXTS)


def test_a_saved_model_loads_predicts_the_same_and_refits_from_its_recorded_start(fitted, tmp_path):
    fitted.save_pretrained(tmp_path / "m")
    again = FewShotClassifier.from_pretrained(tmp_path / "m")
    assert again.predict(QUERIES) == fitted.predict(QUERIES)
    assert torch.equal(again.fit(TEXTS, LABELS).predict_proba(QUERIES), fitted.predict_proba(QUERIES))


def test_a_start_says_it_must_be_fitted_and_a_bad_start_or_bad_examples_are_clear_errors(tiny_bert_dir, tmp_path):
    start = FewShotClassifier.from_pretrained(str(tiny_bert_dir))
    with pytest.raises(ValueError, match=r"call fit\(texts, labels\) first"):
        start.predict(QUERIES)
    with pytest.raises(ValueError, match="before saving"):
        start.save(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not a bundled model"):
        FewShotClassifier.from_pretrained("no-such-model")
    with pytest.raises(TaskError, match="9 texts but 8 labels"):
        start.fit(TEXTS, LABELS[:-1])
    with pytest.raises(TaskError, match="at least 2"):
        start.fit(TEXTS[:3], LABELS[:3])
    with pytest.raises(TypeError, match="either a file or texts with labels"):
        as_task("support.csv", LABELS)


WORDS = [["Ada", "Lovelace", "lives", "in", "London"], ["Alan", "Turing", "visited", "Paris", "today"],
         ["I", "met", "Grace", "Hopper", "in", "Boston"], ["Berlin", "is", "cold"]]
TAGS = [["B-person", "I-person", "O", "O", "B-city"], ["B-person", "I-person", "O", "B-city", "O"],
        ["O", "O", "B-person", "I-person", "O", "B-city"], ["B-city", "O", "O"]]


@pytest.fixture(scope="module")
def tagger(tiny_bert_dir):
    return FewShotTagger.from_pretrained(str(tiny_bert_dir)).fit(WORDS, TAGS)


def test_the_tagger_fits_word_lists_and_predicts_spans_of_texts_and_of_word_lists(tagger):
    assert tagger.labels == ["O", "city", "person"]
    assert tagger.metadata["support_size"] == len(WORDS)  # every sentence given, none drawn away
    as_text, as_words = tagger.predict(["Marie Curie moved to Paris", ["Marie", "Curie", "moved", "to", "Paris"]])
    assert as_text == as_words
    for span in as_text:
        assert set(span) == {"start", "end", "type", "text"} and span["type"] in ("city", "person")
    assert tagger.predict([]) == []
    assert tagger.predict(["", "Marie Curie moved to Paris"])[0] == []  # an empty text has no entity
    with pytest.raises(TypeError, match=r"not one string: predict\(\[text\]\)"):
        tagger.predict("Marie Curie moved to Paris")
    assert 0.0 <= tagger.evaluate(WORDS, TAGS)["f1"] <= 1.0


def test_the_tagger_fits_a_dataset_a_dataframe_and_a_csv_with_other_columns_the_same(tagger, tiny_bert_dir, tmp_path):
    queries = ["Marie Curie moved to Paris", "Tim lives in Rome"]
    frame = pd.DataFrame({"words": WORDS, "bio": TAGS})
    # a CSV cell holds a sentence's words, and its tags, split by spaces
    pd.DataFrame({"words": [" ".join(w) for w in WORDS], "bio": [" ".join(t) for t in TAGS]}).to_csv(
        tmp_path / "ner.csv", index=False)
    for data in (datasets.Dataset.from_pandas(frame), frame, str(tmp_path / "ner.csv")):
        other = FewShotTagger.from_pretrained(str(tiny_bert_dir)).fit(
            data, column_mapping={"words": "tokens", "bio": "tags"})
        assert other.predict(queries) == tagger.predict(queries), type(data).__name__
        assert torch.equal(other.params[next(iter(other.params))], tagger.params[next(iter(tagger.params))])
    with pytest.raises(ColumnError, match="no tokens column 'tokens'.*tokens_column=<name>"):
        FewShotTagger.from_pretrained(str(tiny_bert_dir)).fit(str(tmp_path / "ner.csv"))


def test_a_saved_tagger_loads_and_predicts_the_same_and_bad_examples_are_clear_errors(tagger, tiny_bert_dir, tmp_path):
    tagger.save_pretrained(tmp_path / "t")
    again = FewShotTagger.from_pretrained(tmp_path / "t")
    assert again.predict(["Marie Curie moved to Paris"]) == tagger.predict(["Marie Curie moved to Paris"])
    start = FewShotTagger.from_pretrained(str(tiny_bert_dir))
    with pytest.raises(ValueError, match=r"call fit\(sentences, tags\) first"):
        start.predict(["Paris"])
    with pytest.raises(TaskError, match="5 tokens but 4 tags"):
        start.fit(WORDS[:1], [TAGS[0][:4]])
    with pytest.raises(TaskError, match="no entity tags"):
        start.fit([["nothing", "here"]], [["O", "O"]])
    with pytest.raises(TaskError, match="not a BIO/IO tag"):
        start.fit([["Paris"]], [["?"]])
