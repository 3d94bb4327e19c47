"""CoNLL reading and BIO checks (the token-level path's input side)."""

import logging

import pytest

from llm_meta.ner import entity_types, read_conll, repair_bio
from llm_meta.tasks import TaskError


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
    with pytest.raises(TaskError, match=r"bad.conll:1: 'LOC\?' is not a BIO/IO tag"):
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
    with pytest.raises(TaskError, match="not valid utf-8"):
        read_conll(f)
