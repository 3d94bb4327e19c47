"""User files read exactly as written, by one set of rules for every command.

Each test builds its own fixture shaped like a kind of file users bring (spreadsheet exports,
pandas dumps, other NER tools' CoNLL files) and runs it through the commands it applies to:
`adapt`, `predict`, `evaluate`, `adapt --continue` and `adapt --ner`.
"""

import json
import logging
from pathlib import Path

import pytest

from llm_meta.cli import main as cli_main
from llm_meta.data.ner import load_ner
from llm_meta.data.conll import read_conll
from llm_meta.data.tasks import TaskError, load_task
from llm_meta.data.files import read_inputs

TEXTS = {"01": ["the box is dented", "item arrived broken", "the lid was cracked"],
         "02": ["still waiting for my parcel", "where is my order", "delivery is late"],
         "10": ["give me a refund", "i want my money back", "please refund me"]}


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def excel_csv(path: Path, rows: list[tuple[str, str]], header: str = "text,label") -> Path:
    """What a spreadsheet program saves: a UTF-8 byte-order mark and CRLF line ends."""
    lines = [header] + [f"{t},{y}" for t, y in rows]
    return write(path, "\ufeff" + "\r\n".join(lines) + "\r\n")


def adapt(tiny: Path, out: Path, *options: str, overrides: tuple[str, ...] = ()) -> None:
    cli_main(["adapt", "--adapter", "none", "--output", str(out), *options, f"model.name={tiny}", "inner.steps=1",
              *overrides])


def predictions(out: Path) -> list[dict]:
    """JSON lines, split at "\n" only (str.splitlines would split inside a text at U+2028)."""
    return [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]


# --- the one reader ----------------------------------------------------------------------------

def test_bom_and_crlf_are_dropped_by_every_reader(tmp_path):
    csv = excel_csv(tmp_path / "s.csv", [("card lost", "lost"), ("my balance", "balance")])
    tsv = write(tmp_path / "s.tsv", "\ufefftext\tlabel\r\ncard lost\tlost\r\nmy balance\tbalance\r\n")
    jsonl = write(tmp_path / "s.jsonl", '\ufeff{"text": "card lost", "label": "lost"}\r\n'
                                        '{"text": "my balance", "label": "balance"}\r\n')
    txt = write(tmp_path / "p.txt", "\ufeffcard lost\r\nmy balance\r\n")
    for f in (csv, tsv, jsonl):
        task = load_task(str(f))
        assert task.split("train")["text"] == ["card lost", "my balance"], f.name
        assert task.label_names == ["balance", "lost"], f.name
        assert read_inputs(str(f)) == ["card lost", "my balance"], f.name
    assert read_inputs(str(txt)) == ["card lost", "my balance"]
    assert read_inputs(str(write(tmp_path / "cr.txt", "a\rb\r\n\nc"))) == ["a", "b", "", "c"]


def test_labels_and_texts_that_look_like_numbers_booleans_or_nulls_stay_as_written(tmp_path):
    rows = [("0012", "01"), ("NA", "02"), ("null", "10"), ("true", "true"), ("1.50", "false"), ("None", "01")]
    csv = write(tmp_path / "c.csv", "text,label\n" + "\n".join(f"{t},{y}" for t, y in rows) + "\n")
    task = load_task(str(csv))
    assert task.split("train")["text"] == [t for t, _ in rows]
    assert task.split("train")["label"] == [y for _, y in rows]
    # JSON: strings stay strings even in a column that mixes types; other scalars in JSON's spelling
    jsonl = write(tmp_path / "j.jsonl", "\n".join(json.dumps(r) for r in [
        {"text": "0012", "label": "01"}, {"text": 42, "label": 2}, {"text": "x", "label": True},
        {"text": "y", "label": 1.5}]))
    task = load_task(str(jsonl))
    assert task.split("train")["text"] == ["0012", "42", "x", "y"]
    assert task.split("train")["label"] == ["01", "2", "true", "1.5"]


def test_a_pandas_dump_with_its_unnamed_index_column_reads(tmp_path):
    # DataFrame.to_csv writes the index as a first column whose header cell is empty.
    content = ",text,label\n0,the box is dented,01\n1,where is my order,02\n2,give me a refund,10\n"
    for suffix, sep in ((".csv", ","), (".tsv", "\t")):
        path = write(tmp_path / f"pandas{suffix}", content.replace(",", sep))
        task = load_task(str(path))
        assert task.split("train")["text"] == ["the box is dented", "where is my order", "give me a refund"]
        assert task.split("train")["label"] == ["01", "02", "10"]
        assert read_inputs(str(path)) == task.split("train")["text"]


def test_missing_and_null_cells(tmp_path, caplog):
    csv = write(tmp_path / "s.csv", "text,label\ncold soup,bad\n,bad\nNA,good\ngreat,good\n")
    with caplog.at_level(logging.WARNING):
        task = load_task(str(csv))
    assert task.split("train")["text"] == ["cold soup", "NA", "great"]
    assert "skipped 1 empty or whitespace-only text(s) (first at row 2" in caplog.text
    jsonl = write(tmp_path / "s.jsonl", '{"text": "a", "label": "x"}\n{"text": null, "label": "x"}\n'
                                        '{"label": "y"}\n{"text": "b", "label": "y"}\n')
    assert load_task(str(jsonl)).split("train")["text"] == ["a", "b"]
    assert read_inputs(str(jsonl)) == ["a", None, None, "b"]
    blank_label = write(tmp_path / "b.csv", "text,label\na,x\nb,y\nc,\nd,y\n")
    with pytest.raises(TaskError, match=r"b.csv row 3: empty label"):
        load_task(str(blank_label))
    null_label = write(tmp_path / "b.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n')
    with pytest.raises(TaskError, match=r"b.jsonl row 2: empty label"):
        load_task(str(null_label))
    nested = write(tmp_path / "n.jsonl", '{"text": {"a": 1}, "label": "x"}\n{"text": "b", "label": "y"}\n')
    assert load_task(str(nested)).split("train")["text"] == ['{"a": 1}', "b"]  # a mapping cell as its JSON text
    only_lists = write(tmp_path / "l.jsonl", '{"text": ["a", "b"]}\n{"text": ["c"]}\n')
    with pytest.raises(TaskError, match=r"l.jsonl line 1: text is list \['a', 'b'\], expected a string"):
        read_inputs(str(only_lists))


# --- through the commands -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coded_model(tmp_path_factory, tiny_bert_dir) -> tuple[Path, Path]:
    """A task model adapted from a spreadsheet CSV whose labels are the codes 01, 02, 10."""
    root = tmp_path_factory.mktemp("coded")
    support = excel_csv(root / "support.csv", [(t, y) for y, texts in TEXTS.items() for t in texts])
    adapt(tiny_bert_dir, root / "model", "--support", str(support))
    return root / "model", support


def test_labels_come_back_byte_for_byte_in_every_command(coded_model, tmp_path, capsys):
    model, support = coded_model
    assert json.loads((model / "labels.json").read_text()) == ["01", "02", "10"]
    stored = [json.loads(line) for line in (model / "support.jsonl").read_text().splitlines()]
    assert {r["label"] for r in stored} == {"01", "02", "10"} and "\ufeff" not in (model / "support.jsonl").read_text()
    # predict from a spreadsheet CSV, a CRLF .txt and JSON lines: texts come back exactly
    for name, content in (("p.csv", "\ufefftext\r\nbox dented\r\nNA\r\n"), ("p.txt", "box dented\r\nNA\r\n"),
                          ("p.jsonl", '{"text": "box dented"}\n{"text": "NA"}\n')):
        out = tmp_path / f"{name}.out.jsonl"
        cli_main(["predict", "--model", str(model), "--input", str(write(tmp_path / name, content)),
                  "--output", str(out)])
        rows = predictions(out)
        assert [r["text"] for r in rows] == ["box dented", "NA"], name
        assert {r["label"] for r in rows} <= {"01", "02", "10"}, name
    cli_main(["evaluate", "--model", str(model), "--task", str(support), "--split", "train",
              "--output", str(tmp_path / "eval.json")])
    assert json.loads((tmp_path / "eval.json").read_text())["examples"] == 9
    # continue with more "02" examples and a new class "007": labels still as written
    more = excel_csv(tmp_path / "more.csv", [("parcel not here", "02"), ("license to kill", "007")])
    cli_main(["adapt", "--continue", str(model), "--support", str(more), "--new-class", "007",
              "--output", str(tmp_path / "continued"), "steps=1"])
    assert json.loads((tmp_path / "continued" / "labels.json").read_text()) == ["01", "02", "10", "007"]


def test_predict_keeps_rows_aligned_for_missing_texts(coded_model, tmp_path, capsys):
    model, _ = coded_model
    inp = write(tmp_path / "p.jsonl", '{"text": "box dented"}\n{"text": null}\n{"text": ""}\n{"text": 42}\n'
                                      '{"id": 7}\n')
    out = tmp_path / "out.jsonl"
    cli_main(["predict", "--model", str(model), "--input", str(inp), "--output", str(out)])
    rows = predictions(out)
    assert [r["text"] for r in rows] == ["box dented", None, "", "42", None]
    assert [r["label"] is None for r in rows] == [False, True, True, False, True]
    with pytest.raises(SystemExit):
        cli_main(["predict", "--model", str(model), "--input", str(inp), "--empty", "error"])
    assert "an empty or whitespace-only text in" in capsys.readouterr().err  # the first one, at once


def test_k_larger_than_a_class_keeps_the_class_and_warns(tiny_bert_dir, tmp_path, caplog):
    rows = [(f"play song {i}", "music") for i in range(6)] + [(f"rain on day {i}", "weather") for i in range(6)]
    task = write(tmp_path / "t.csv", "text,label\n" + "\n".join(f"{t},{y}" for t, y in rows + [("wake me", "alarm")]))
    with caplog.at_level(logging.WARNING):
        adapt(tiny_bert_dir, tmp_path / "m", "--task", str(task), "--shots", "5")
    assert "fewer than K=5 distinct texts and join with all they have: 'alarm' has 1" in caplog.text
    stored = [json.loads(line)["label"] for line in (tmp_path / "m" / "support.jsonl").read_text().splitlines()]
    assert sorted(stored) == ["alarm"] + ["music"] * 5 + ["weather"] * 5


def test_truncation_is_announced_with_a_count(tiny_bert_dir, tmp_path, caplog):
    long = " ".join(["word"] * 300)
    support = write(tmp_path / "s.csv", f"text,label\n{long},a\nshort one,a\nshort two,b\n{long} again,b\n")
    with caplog.at_level(logging.WARNING):
        adapt(tiny_bert_dir, tmp_path / "m", "--support", str(support), overrides=("model.max_length=32",))
    assert "2 of 4 support texts are longer than model.max_length=32 tokens" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cli_main(["predict", "--model", str(tmp_path / "m"), "--input", str(write(tmp_path / "p.txt", f"hi\n{long}\n")),
                  "--output", str(tmp_path / "p.jsonl")])
    assert "1 of 2 texts to label are longer than model.max_length=32 tokens" in caplog.text


def test_adapter_keeps_its_model_but_takes_runtime_overrides(tiny_bert_dir, tmp_path, caplog):
    import llm_meta
    from llm_meta.classifier import AdaptConfig
    from llm_meta.modeling.body import ModelConfig
    from tests.test_meta_train import run, tiny_overrides

    data = write(tmp_path / "d.csv", "text,label\n" + "\n".join(
        f"{t} {i},{y}" for y, texts in TEXTS.items() for t in texts for i in range(3)) + "\n")
    run(tiny_overrides(tiny_bert_dir, data, tmp_path / "run", steps=2))
    adapter = tmp_path / "run" / "adapter"
    cfg = AdaptConfig(model=ModelConfig(max_length=48))
    clf = llm_meta.adapt(task=str(data), shots=2, adapter=str(adapter), cfg=cfg)
    assert clf.body.max_length == 48 and clf.metadata["model"]["name"] == str(tiny_bert_dir)
    with pytest.raises(ValueError, match=r"model.lora_r=4 cannot change for the adapter .* trained with 8"):
        llm_meta.adapt(task=str(data), shots=2, adapter=str(adapter), cfg=AdaptConfig(model=ModelConfig(lora_r=4)))


# --- NER files ----------------------------------------------------------------------------------

BIOES = "Mara S-PER\nworks O\nat O\nNorthwind B-ORG\nTrading I-ORG\nHouse E-ORG\n\nOslo S-LOC\nis O\ncold O\n"
BILOU = BIOES.replace("S-", "U-").replace("E-", "L-")


@pytest.mark.parametrize("scheme,content", [("BIOES", BIOES), ("BILOU", BILOU)])
def test_bioes_and_bilou_become_bio_with_a_notice(scheme, content, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        sentences = read_conll(write(tmp_path / "x.conll", content))
    assert sentences[0].tags == ["B-PER", "O", "O", "B-ORG", "I-ORG", "I-ORG"]
    assert sentences[1].tags == ["B-LOC", "O", "O"]
    notices = [r for r in caplog.records if "converted to BIO" in r.message]
    assert len(notices) == 1 and scheme in notices[0].message
    rows = [{"tokens": ["Mara", "works"], "ner_tags": ["S-PER" if scheme == "BIOES" else "U-PER", "O"]}]
    jsonl = write(tmp_path / "x.jsonl", "\n".join(json.dumps(r) for r in rows))
    assert load_ner(str(jsonl))[0].tags == ["B-PER", "O"]


def test_io_types_that_look_like_prefixes_stay_types(tmp_path):
    sentences = read_conll(write(tmp_path / "io.conll", "mail E-MAIL\nme O\nat O\nParis LOC\n"))
    assert sentences[0].tags == ["E-MAIL", "O", "O", "LOC"]


CONLL2003 = ("\ufeff-DOCSTART- -X- -X- O\r\n\r\nMara NNP B-NP B-PER\r\nQuill NNP I-NP I-PER\r\njoined VBD B-VP O\r\n"
             "Oslo NNP B-NP B-LOC  \r\n\r\n\r\n-DOCSTART- -X- -X- O\r\n\r\nThe DT B-NP O\r\nbank NN I-NP O")


@pytest.mark.parametrize("layout,content", [
    ("conll2003_bom_crlf", CONLL2003),
    ("conll2003_tabs", CONLL2003.replace(" NNP", "\tNNP").replace(" VBD", "\tVBD").replace(" DT", "\tDT")
     .replace(" NN ", "\tNN ").replace(" B-", "\tB-").replace(" I-", "\tI-").replace(" O", "\tO")
     .replace(" -X-", "\t-X-")),
    ("token_index", "# sent_id = 1\n# text = Mara Quill joined Oslo\n1\tMara\tB-PER\n2\tQuill\tI-PER\n3\tjoined\tO\n"
                    "4\tOslo\tB-LOC\n\n1\tThe\tO\n2\tbank\tO\n"),
])
def test_conll_layouts(layout, content, tmp_path):
    sentences = read_conll(write(tmp_path / f"{layout}.conll", content))
    assert [s.tokens for s in sentences] == [["Mara", "Quill", "joined", "Oslo"], ["The", "bank"]]
    assert sentences[0].tags == ["B-PER", "I-PER", "O", "B-LOC"] and sentences[1].tags == ["O", "O"]


def test_tab_separated_tokens_may_hold_spaces(tmp_path):
    sentences = read_conll(write(tmp_path / "t.conll", "New York\tB-LOC\nis\tO\nbig\tO\n"))
    assert sentences[0].tokens == ["New York", "is", "big"]


@pytest.mark.parametrize("content,message", [
    ("Mara NNP B-PER\nworks VBZ O\nat O\n", r":3: 2 fields, but most lines of the file have 3"),
    ("B-PER Mara\nO works\nO there\n", r":1: the last column holds no O tag .*expected the tag in the last column"),
])
def test_other_layouts_are_refused_with_what_was_expected(content, message, tmp_path):
    with pytest.raises(TaskError, match=message):
        read_conll(write(tmp_path / "x.conll", content))


def test_ner_commands_read_bioes_and_bom_files(tiny_bert_dir, tmp_path, capsys):
    conll = write(tmp_path / "x.conll", "\ufeff-DOCSTART- O\r\n\r\n" + (BIOES + "\n").replace("\n", "\r\n") * 3)
    cli_main(["adapt", "--ner", "--adapter", "none", "--task", str(conll), "--shots", "1", "--output",
              str(tmp_path / "tagger"), f"model.name={tiny_bert_dir}", "inner.steps=1"])
    assert json.loads((tmp_path / "tagger" / "labels.json").read_text()) == ["O", "LOC", "ORG", "PER"]
    cli_main(["evaluate", "--model", str(tmp_path / "tagger"), "--task", str(conll), "--output", str(tmp_path / "e.json")])
    assert json.loads((tmp_path / "e.json").read_text())["sentences"] == 6
    out = tmp_path / "p.jsonl"
    cli_main(["predict", "--model", str(tmp_path / "tagger"), "--input",
              str(write(tmp_path / "p.txt", "\ufeffMara works\r\n\r\nOslo is cold\r\n")), "--output", str(out)])
    rows = predictions(out)
    assert [r["text"] for r in rows] == ["Mara works", "", "Oslo is cold"] and rows[1]["entities"] == []


# --- same input, same seed, same model -----------------------------------------------------------

def _adapt_in_a_fresh_process(commands: list[list[str]]) -> list[dict]:
    """Run `llm-meta adapt --adapter none ...` for each argument list in one new Python process;
    return each saved adapter's and head's tensors."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = ("import sys, json; from llm_meta.cli import main\n"
              "for args in json.loads(sys.argv[1]): main(['adapt', '--adapter', 'none', *args])")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    outs = [Path(args[args.index("--output") + 1]) for args in commands]
    return [{**load_file(str(o / "adapter_model.safetensors")), **load_file(str(o / "head.safetensors"))} for o in outs]


def test_the_same_command_gives_the_same_adapter_bit_for_bit(tiny_bert_dir, tmp_path):
    """`adapt` and `adapt --ner` from the untrained start, each run in two separate processes."""
    data = excel_csv(tmp_path / "s.csv", [(t, y) for y, texts in TEXTS.items() for t in texts])
    conll = write(tmp_path / "x.conll", BIOES * 3)
    common = [f"model.name={tiny_bert_dir}", "inner.steps=2", "seed=3"]
    runs = [_adapt_in_a_fresh_process([["--support", str(data), "--output", str(tmp_path / f"clf{i}"), *common],
                                       ["--ner", "--task", str(conll), "--shots", "1", "--output",
                                        str(tmp_path / f"ner{i}"), *common]]) for i in range(2)]
    for first, second in zip(*runs):  # classifier, tagger
        assert first.keys() == second.keys()
        assert all(first[k].equal(second[k]) for k in first), "same seed, different tensors"


def test_the_seed_reaches_the_fresh_lora_and_leaves_the_global_state_alone(tiny_bert_dir):
    import torch

    from llm_meta.modeling.body import ModelConfig, lora_params
    from llm_meta.modeling.loading import load_body

    cfg = ModelConfig(name=str(tiny_bert_dir))
    before = torch.random.get_rng_state()
    a, b, c = (lora_params(load_body(cfg, seed=s)) for s in (3, 3, 4))
    assert torch.equal(torch.random.get_rng_state(), before)
    lora_a = [k for k in a if "lora_A" in k]
    assert lora_a and all(a[k].equal(b[k]) for k in a) and not all(a[k].equal(c[k]) for k in lora_a)


# --- field cases 17-26: one test per kind, each with its own fixture ------------------------------

def test_tsv_quotes_are_ordinary_characters_unless_the_whole_file_is_quoted_csv(tiny_bert_dir, tmp_path):
    # A tool that does not quote: an inch mark, a quoted word at a field's start, an unclosed quote.
    rows = [('my 13" laptop will not turn on', "hardware"), ('"fast" mode never finishes', "software"),
            ('"urgent: printer is smoking', "hardware"), ("where is my invoice", "billing"),
            ("the mouse double clicks", "hardware"), ("refund the monitor", "billing")]
    tsv = write(tmp_path / "s.tsv", "text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    task = load_task(str(tsv))
    assert list(zip(task.split("train")["text"], task.split("train")["label"])) == rows
    assert read_inputs(str(tsv)) == [t for t, _ in rows]
    adapt(tiny_bert_dir, tmp_path / "m", "--support", str(tsv))
    stored = predictions(tmp_path / "m" / "support.jsonl")
    assert sorted((r["text"], r["label"]) for r in stored) == sorted(rows)
    # What pandas' to_csv(sep="\t") writes is quoted CSV with tabs: read with its quoting.
    quoted = write(tmp_path / "q.tsv", 'text\tlabel\n"say ""hi"" now"\ta\n"two\nlines"\tb\nplain\ta\n')
    assert load_task(str(quoted)).split("train")["text"] == ['say "hi" now', "two\nlines", "plain"]


def test_lower_case_conll_prefixes_are_bio_and_type_spellings_merge(tmp_path, caplog):
    conll = write(tmp_path / "t.conll", "Mara\tb-per\nLind\ti-per\nin\to\nNew\tB-loc\nDorrin\tI-Loc\n\n"
                                        "Oslo\tB-loc\nis\tO\ncold\tO\n")
    with caplog.at_level(logging.INFO):
        sentences = read_conll(conll)
    assert sentences[0].tags == ["B-per", "I-per", "O", "B-loc", "I-loc"]  # New Dorrin is one entity
    assert "read as BIO" in caplog.text and "'loc' / 'Loc' -> 'loc'" in caplog.text


def test_unicode_line_separators_stay_inside_texts_and_the_model_loads_again(tiny_bert_dir, tmp_path):
    texts = ["the app\u2028freezes", "it crashes\u2029on start", "billing\x85error", "charged twice"]
    rows = [(t, "software" if i < 2 else "billing") for i, t in enumerate(texts)]
    support = write(tmp_path / "s.csv", "text,label\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    adapt(tiny_bert_dir, tmp_path / "m", "--support", str(support))
    from llm_meta.classifier import FewShotClassifier

    assert sorted(FewShotClassifier.load(tmp_path / "m").support.texts) == sorted(texts)
    inp = write(tmp_path / "in.jsonl", "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    cli_main(["predict", "--model", str(tmp_path / "m"), "--input", str(inp), "--output", str(tmp_path / "o.jsonl")])
    assert [r["text"] for r in predictions(tmp_path / "o.jsonl")] == texts


def test_utf16_excel_unicode_text_is_read_in_every_reader(tmp_path):
    content = "text\tlabel\r\nthe laptop fan is tr\u00e8s loud\thardware\r\nI was billed twice\tbilling\r\n"
    tsv = write(tmp_path / "s.tsv", b"\xff\xfe" + content.encode("utf-16-le"))
    task = load_task(str(tsv))
    assert task.split("train")["text"] == ["the laptop fan is tr\u00e8s loud", "I was billed twice"]
    assert read_inputs(str(tsv)) == task.split("train")["text"]
    txt = write(tmp_path / "p.txt", b"\xff\xfe" + "one\r\ntwo\r\n".encode("utf-16-le"))
    assert read_inputs(str(txt)) == ["one", "two"]


def test_labels_that_differ_by_space_or_case_are_kept_and_named(tmp_path, caplog):
    rows = [("good", "positive"), ("great", "positive "), ("fine", "Positive"), ("bad", "negative"), ("awful", "negative\t")]
    f = write(tmp_path / "s.csv", "text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    with caplog.at_level(logging.WARNING):
        task = load_task(str(f))
    assert task.label_names == ["Positive", "negative", "negative\t", "positive", "positive "]
    assert "'Positive' / 'positive' / 'positive '; 'negative' / 'negative\\t'" in caplog.text
    assert "the task has 5 classes" in caplog.text


def test_duplicates_and_conflicts_are_named_and_k_shots_are_distinct_texts(tmp_path, caplog):
    from llm_meta.data.episodes import support_set

    rows = [("charged twice", "billing")] * 4 + [("wrong invoice", "billing"), ("no order", "billing"),
                                                  ("no order", "delivery"), ("late", "delivery"), ("lost box", "delivery")]
    f = write(tmp_path / "s.csv", "text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    with caplog.at_level(logging.WARNING):
        task = load_task(str(f))
        support, labels = support_set(task, shots=4)
    assert "3 exact duplicate row(s), extra copies of 1 text(s) (e.g. 'charged twice' at rows 1, 2, 3, 4)" in caplog.text
    assert "'no order' is labelled 'billing' (row 6) and 'delivery' (row 7)" in caplog.text
    billing = [t for t, y in zip(support.texts, support.labels) if labels[y] == "billing"]
    assert sorted(billing) == ["charged twice", "no order", "wrong invoice"]  # 3 distinct, not 4 rows
    assert "'billing' has 3" in caplog.text


def test_a_badly_encoded_file_is_named_with_its_byte_offset_in_the_whole_file(tmp_path):
    rows = "".join(f"ticket {i} the printer is fine,hardware\r\n" for i in range(3000)).encode()  # > 64 KB
    bad = b"the driver\x92s installer froze,software\r\n"
    f = write(tmp_path / "big.csv", b"text,label\r\n" + rows + bad)
    offset = len(b"text,label\r\n" + rows) + bad.index(b"\x92")
    for read in (lambda: load_task(str(f)), lambda: read_inputs(str(f))):
        with pytest.raises(TaskError, match=rf"big.csv: not valid UTF-8 text: byte 0x92 at byte offset {offset} "
                                            rf"\(line 3002\).*re-save it as UTF-8"):
            read()


def test_an_empty_input_to_a_tagger_is_no_error(tiny_bert_dir, tmp_path):
    conll = write(tmp_path / "t.conll", "Oslo\tB-LOC\nis\tO\n\nAnn\tB-PER\nsings\tO\n")
    cli_main(["adapt", "--ner", "--adapter", "none", "--task", str(conll), "--shots", "1", "--output",
              str(tmp_path / "ner"), f"model.name={tiny_bert_dir}", "inner.steps=1"])
    for name, content in (("in.txt", ""), ("in.txt", "\n\n"), ("in.csv", ""), ("in.jsonl", "")):
        inp = write(tmp_path / name, content)
        cli_main(["predict", "--model", str(tmp_path / "ner"), "--input", str(inp), "--output",
                  str(tmp_path / "o.jsonl"), "--overwrite"])
        assert [r["entities"] for r in predictions(tmp_path / "o.jsonl")] == [[]] * content.count("\n")


def test_missing_output_folders_are_created_and_a_file_in_the_way_is_refused_first(coded_model, tmp_path, capsys):
    model, _ = coded_model
    inp = write(tmp_path / "in.txt", "box dented\n")
    cli_main(["predict", "--model", str(model), "--input", str(inp), "--output", str(tmp_path / "a" / "b" / "o.jsonl")])
    assert len(predictions(tmp_path / "a" / "b" / "o.jsonl")) == 1
    write(tmp_path / "afile", "not a folder")
    with pytest.raises(SystemExit):
        cli_main(["evaluate", "--model", str(model), "--task", str(inp), "--output", str(tmp_path / "afile" / "e.json")])
    assert "afile is a file, not a folder" in capsys.readouterr().err


def test_a_byte_order_mark_does_not_shift_the_reported_offset(tmp_path):
    f = write(tmp_path / "bom.txt", b"\xef\xbb\xbfabc\ndef\xff\n")
    with pytest.raises(TaskError, match=r"byte 0xff at byte offset 10 \(line 2\)"):
        read_inputs(str(f))
    u16 = write(tmp_path / "u16.txt", b"\xff\xfe" + "a\nb\n".encode("utf-16-le") + b"\x00\xd8" + "c".encode("utf-16-le"))
    with pytest.raises(TaskError, match=r"not valid UTF-16 text .* at byte offset 10 \(line 3\).*re-save it as UTF-8"):
        read_inputs(str(u16))
    assert read_inputs(str(write(tmp_path / "only_bom.csv", b"\xef\xbb\xbf"))) == []  # no header, no texts
