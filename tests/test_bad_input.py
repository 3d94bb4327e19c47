"""The bad-input matrix: one row per mistake a user makes, through the `llm-meta` command.

Every row must end in a one-line error that names the problem (exit status 2, no traceback) and
must leave the user's workspace byte for byte as it was: a meta-training run with checkpoints and
an adapter, a task model, and the data files. Rows point their outputs at those folders on purpose.
"""

import hashlib
import json
from pathlib import Path

import pytest

from llm_meta.cli import main as cli_main
from tests.test_meta_train import run, tiny_overrides

TOPICS = ["card payment", "music playlist", "weather forecast"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_bert_dir, tiny_llama_dir) -> dict[str, Path]:
    """A workspace with a meta-training run, its adapter, a task model and the data they came from."""
    root = tmp_path_factory.mktemp("workspace")
    data = root / "data"
    data.mkdir()
    for split, n in (("train", 8), ("test", 4)):
        rows = [f"{t} request {i} {split},{t.split()[0]}" for t in TOPICS for i in range(n)]
        (data / f"{split}.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    run(tiny_overrides(tiny_bert_dir, data / "train.csv", root / "run", steps=2))
    paths = {"root": root, "data": data, "run": root / "run", "adapter": root / "run" / "adapter",
             "taskmodel": root / "taskmodel", "tiny": tiny_bert_dir, "llama": tiny_llama_dir}
    cli_main(["adapt", "--adapter", str(paths["adapter"]), "--task", str(data), "--shots", "2",
              "--output", str(paths["taskmodel"]), "inner.steps=1"])
    return paths


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def bad_file(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def meta_train_args(ws: dict[str, Path], *extra: str) -> list[str]:
    """Resume the workspace's run (so a row that wrote anything would damage it)."""
    overrides = [o for o in tiny_overrides(ws["tiny"], ws["data"] / "train.csv", ws["run"], steps=4)]
    return ["meta-train", "--config", "recipes/configs/meta_train.yaml", "--resume", *overrides, *extra]


def ner_args(ws: dict[str, Path], tmp: Path, conll: str, *extra: str) -> list[str]:
    """`adapt --ner` on a CoNLL file with `conll` as its content, written over the task model's folder
    (--overwrite: the row's own error must come, and still damage nothing)."""
    return ["adapt", "--ner", "--task", bad_file(tmp, "ner.conll", conll), *extra, "--output", str(ws["taskmodel"]),
            "--overwrite", f"model.name={ws['tiny']}"]


def adapt_args(ws: dict[str, Path], task: str, *extra: str, shots: int = 2) -> list[str]:
    return ["adapt", "--adapter", "none", "--task", task, "--shots", str(shots), "--output", str(ws["taskmodel"]),
            "--overwrite", f"model.name={ws['tiny']}", "inner.steps=1", *extra]


# name -> (function building the argv from the workspace and a scratch folder, expected message regex)
ROWS = {
    "missing_column": (
        lambda ws, tmp: adapt_args(ws, bad_file(tmp, "t.csv", "utterance,intent\nhi,a\nyo,b\n")),
        r"no text column 'text' \(columns: utterance, intent\)"),
    "misnamed_column_override": (
        lambda ws, tmp: adapt_args(ws, str(ws["data"]), "label_column=intent"),
        r"no label column 'intent' \(columns: text, label\)"),
    "unknown_labels": (
        lambda ws, tmp: ["evaluate", "--model", str(ws["taskmodel"]), "--task",
                         bad_file(tmp, "test.csv", "text,label\nbuy a plane ticket,flight\ncard payment,card\n"),
                         "--split", "train", "--output", str(ws["root"] / "eval.json")],
        r"1 label\(s\) this model does not know: flight"),
    "empty_file": (
        lambda ws, tmp: adapt_args(ws, bad_file(tmp, "empty.csv", "")),
        r"empty.csv: the file is empty"),
    "header_only_file": (
        lambda ws, tmp: adapt_args(ws, bad_file(tmp, "header.csv", "text,label\n")),
        r"header.csv: the dataset has no rows"),
    "wrong_encoding": (
        lambda ws, tmp: adapt_args(ws, bad_file(tmp, "latin.csv", "text,label\nZ\u00fcrich weather,w\n".encode("latin-1"))),
        r"latin.csv: not valid UTF-8 text: byte 0xfc at byte offset 12 \(line 2\).*re-save it as UTF-8"),
    "empty_texts_only": (
        lambda ws, tmp: adapt_args(ws, bad_file(tmp, "blank.csv", 'text,label\n" ",a\n"",b\n')),
        r"every text is empty"),
    "malformed_conll": (
        lambda ws, tmp: ner_args(ws, tmp, "Paris\tB-LOC\nis\tO\n\nno_tag_here\n"),
        r"ner.conll:4: expected a token and a tag separated by a tab or spaces"),
    "k_zero": (
        lambda ws, tmp: adapt_args(ws, str(ws["data"]), shots=0),
        r"K \(--shots; Python: shots=\) must be at least 1 example per class, got 0"),
    "k_negative": (
        lambda ws, tmp: adapt_args(ws, str(ws["data"]), shots=-2),
        r"K \(--shots; Python: shots=\) must be at least 1 example per class, got -2"),
    "ner_k_zero": (
        lambda ws, tmp: ner_args(ws, tmp, "Paris\tB-LOC\n", "--adapter", "none", "--shots", "0"),
        r"K \(--shots; Python: shots=\) must be at least 1 mention per entity type, got 0"),
    "ner_head_unknown": (
        lambda ws, tmp: ner_args(ws, tmp, "Paris\tB-LOC\n\nRome\tB-LOC\n\nBob\tB-PER\n\nAl\tB-PER\n", "--adapter", "none",
                                 "--shots", "1") + ["inner.ner_head=spans"],
        r"ner_head must be one of \('io', 'decomposed'\), got 'spans'"),
    "max_length_beyond_the_model": (
        lambda ws, tmp: adapt_args(ws, str(ws["data"]), "model.max_length=4096"),
        r"model.max_length=4096 is more than .* can read \(512 token positions\); set model.max_length to at most 512"),
    "empty_label_cell": (
        lambda ws, tmp: adapt_args(ws, bad_file(tmp, "t.csv", "text,label\nhi,a\nyo,b\nhey,\n")),
        r"t.csv row 3: empty label"),
    "null_label_in_json_lines": (
        lambda ws, tmp: ["evaluate", "--model", str(ws["taskmodel"]), "--split", "train", "--output",
                         str(ws["root"] / "eval.json"), "--task",
                         bad_file(tmp, "t.jsonl", '{"text": "card payment", "label": "card"}\n{"text": "x", "label": null}\n')],
        r"t.jsonl row 2: empty label"),
    "predict_file_without_the_text_column": (
        lambda ws, tmp: ["predict", "--model", str(ws["taskmodel"]), "--output", str(ws["root"] / "out.jsonl"),
                         "--input", bad_file(tmp, "in.csv", "\ufeffsentence\r\ncard payment\r\n")],
        r"in.csv: no text column 'text' \(columns: sentence\); pass --text-column"),
    "continue_with_an_empty_label": (
        lambda ws, tmp: ["adapt", "--continue", str(ws["taskmodel"]), "--output", str(ws["taskmodel"]), "--overwrite",
                         "--support", bad_file(tmp, "new.csv", "text,label\npay by card,card\nrainy,\n")],
        r"new.csv row 2: empty label"),
    "conll_with_the_tag_first": (
        lambda ws, tmp: ner_args(ws, tmp, "B-LOC Paris\nO is\nO nice\n"),
        r"ner.conll:1: the last column holds no O tag .*expected the tag in the last column"),
    "conll_with_uneven_columns": (
        lambda ws, tmp: ner_args(ws, tmp, "Paris NNP B-LOC\nis VBZ O\nnice O\n"),
        r"ner.conll:3: 2 fields, but most lines of the file have 3"),
    "adapter_with_a_changed_lora_shape": (
        lambda ws, tmp: ["adapt", "--adapter", str(ws["adapter"]), "--task", str(ws["data"]), "--shots", "2",
                         "--output", str(ws["taskmodel"]), "--overwrite", "model.lora_r=4"],
        r"model.lora_r=4 cannot change for the adapter .* trained with 8; after meta-training only model.max_length"),
    "n_larger_than_classes": (
        lambda ws, tmp: ["episode", str(ws["data"]), "--n-way", "5", "--k-shot", "2"],
        r"has 3 class\(es\) with at least K\+Q=7 examples; 5-way episodes need 5"),
    "unknown_model_offline": (
        lambda ws, tmp: adapt_args(ws, str(ws["data"]), "model.name=no-such-org/no-such-model"),
        r"could not load model 'no-such-org/no-such-model'.*offline, or no such id"),
    "unknown_lora_target": (
        lambda ws, tmp: adapt_args(ws, str(ws["data"]), "model.lora_targets=[query, qkv_proj]"),
        r"LoRA target module\(s\) \['qkv_proj'\] do not exist in BertModel; its linear modules are: .*query"),
    "adapter_for_another_base_model": (
        lambda ws, tmp: meta_train_args(ws, f"model.name={ws['llama']}"),
        r"--resume: the run in .* was trained with another config \(.*model.name: .*tiny_bert.* -> .*tiny_llama"),
    "foreign_model_folder": (
        lambda ws, tmp: ["predict", "--model", str(_foreign_peft(tmp)), "--input", str(ws["data"] / "test.csv")],
        r"a PEFT adapter from another tool, not an llm_meta adapter"),
    "not_a_model_folder": (
        lambda ws, tmp: adapt_args(ws, str(ws["data"]), f"model.name={tmp}"),
        r"has no config.json: not a transformers model folder"),
    "adapter_is_a_task_model": (
        lambda ws, tmp: ["adapt", "--adapter", str(ws["taskmodel"]), "--task", str(ws["data"]), "--output",
                         str(ws["taskmodel"]), "--overwrite"],
        r"is an adapted task model; start from a meta-trained adapter or none"),
    "unknown_config_key": (
        lambda ws, tmp: meta_train_args(ws, "outer.stpes=3"),
        r"unknown config key 'outer.stpes'; did you mean 'outer.steps'\?"),
    "wrong_value_type": (
        lambda ws, tmp: meta_train_args(ws, "outer.lr=fast"),
        r"config key 'outer.lr' expects float, got str 'fast'"),
    "unknown_algorithm": (
        lambda ws, tmp: meta_train_args(ws, "algorithm=mamll"),
        r"unknown algorithm 'mamll' \(valid: fomaml, maml, metasgd, reptile, protonet, transfer, hypernet, "
        r"hypernet\+fomaml\)"),
    "continue_with_undeclared_label": (
        lambda ws, tmp: ["adapt", "--continue", str(ws["taskmodel"]), "--output", str(ws["taskmodel"]), "--overwrite",
                         "--support", bad_file(tmp, "new.csv", "text,label\nbook me a flight,flight\n")],
        r"1 label\(s\) are not known to the model and not declared as new classes: flight \(declare them with "
        r"--new-class"),
    "generate_without_hypernet": (
        lambda ws, tmp: ["generate", "--hypernet", str(ws["run"] / "adapter"), "--support", str(ws["data"] / "train.csv"),
                         "--output", str(ws["taskmodel"]), "--overwrite"],
        r"is a meta-trained adapter \(llm_meta.adapter/1\) without a hypernetwork \(meta-train one with "
        r"algorithm=hypernet\)"),
    "every_checkpoint_corrupt": (
        lambda ws, tmp: meta_train_args(ws, f"output_dir={_corrupt_run(ws, tmp)}"),
        r"every checkpoint is corrupt; nothing to resume from"),
    "empty_text_to_predict": (
        lambda ws, tmp: ["predict", "--model", str(ws["taskmodel"]), "--empty", "error", "--output",
                         str(ws["root"] / "out.jsonl"), "--input", bad_file(tmp, "in.txt", "card payment\n\n")],
        r"an empty or whitespace-only text in .*in.txt at line/row 2"),
    "smlmt_corpus_too_small": (
        lambda ws, tmp: meta_train_args(ws, "tasks=[]", "smlmt.data=" + bad_file(
            tmp, "small.txt", "\n".join(f"the weather in paris today {i}" for i in range(3)))),
        r"corpus '.*small.txt' \(3 sentences\) has 0 eligible word\(s\) .*K\+Q=4 .*3-way episodes need 3"),
    "task_entry_with_two_sources": (
        lambda ws, tmp: meta_train_args(ws, "tasks=[{name: clinc, smlmt: corpus.txt}]"),
        r"each tasks entry needs exactly one of name .*, smlmt .* or ner: true"),
    "too_many_lora_layers": (
        lambda ws, tmp: adapt_args(ws, str(ws["data"]), "model.lora_layers=9"),
        r"model.lora_layers must be between 1 and the model's 2 layers, got 9"),
    "missing_gguf_file": (
        lambda ws, tmp: adapt_args(ws, str(ws["data"]), f"model.name={tmp / 'nope.gguf'}"),
        r"GGUF file '.*nope.gguf' does not exist"),
    "init_from_a_task_model": (
        lambda ws, tmp: meta_train_args(ws, f"init={ws['taskmodel']}"),
        r"init=.* is not a meta-trained adapter \(llm_meta.classifier/1\); give an adapter folder"),
    "missing_config_file": (
        lambda ws, tmp: ["meta-train", "--config", str(tmp / "nope.yaml")],
        r"config file not found: .*nope.yaml"),
}


def _foreign_peft(tmp: Path) -> Path:
    folder = tmp / "peft_from_elsewhere"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x"}))
    return folder


def _corrupt_run(ws: dict[str, Path], tmp: Path) -> Path:
    """A copy of the workspace's run whose every checkpoint has a truncated tensor file."""
    import shutil

    copy = tmp / "corrupt_run"
    shutil.copytree(ws["run"], copy)
    for params in copy.glob("checkpoints/step-*/params.safetensors"):
        params.write_bytes(params.read_bytes()[:100])
    return copy


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_gives_a_clear_error_and_damages_nothing(row, ws, tmp_path, capsys):
    build, message = ROWS[row]
    one_line_error_and_nothing_damaged(build(ws, tmp_path), message, row, ws, capsys)


def test_silver_corpus_without_spacy(ws, tmp_path, capsys, monkeypatch):
    # The bad-input row for an installation without the `ner` extra (spaCy hidden here).
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "spacy" else real(name, *a))
    argv = meta_train_args(ws, "ner.data=wnut16", "ner.held_out_types=[movie]", "ner.extra_train=[silver]")
    one_line_error_and_nothing_damaged(argv, r"the silver NER corpus needs spaCy .*pip install \"llm_meta\[ner\]\"",
                                       "silver_without_spacy", ws, capsys)


def one_line_error_and_nothing_damaged(argv: list[str], message: str, row: str, ws: dict[str, Path], capsys) -> None:
    before = snapshot(ws["root"])
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if "error:" in x]
    assert line, err
    import re

    assert re.search(message, line[-1]), f"{row}: {line[-1]}"
    assert snapshot(ws["root"]) == before, f"{row} changed files in the workspace"


# --- safety: no pickle, no remote code, no path expansion ----------------------------------------

def test_pickle_only_model_folder_is_refused(tiny_bert_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from llm_meta.modeling.body import ModelConfig
    from llm_meta.modeling.model_files import ModelLoadError
    from llm_meta.modeling.loading import load_body

    import torch

    folder = tmp_path / "pickled"
    model = AutoModel.from_pretrained(tiny_bert_dir)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # the old pickle format
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    with pytest.raises(ModelLoadError, match="pickle.*safetensors only"):
        load_body(ModelConfig(name=str(folder)))


def test_remote_code_never_runs_unless_asked(tiny_bert_dir, tmp_path):
    from llm_meta.modeling.body import ModelConfig
    from llm_meta.modeling.model_files import ModelLoadError
    from llm_meta.modeling.loading import load_body
    from tests.test_hostile import evil_model_folder

    folder, marker = evil_model_folder(tiny_bert_dir, tmp_path)  # only the repo's own code knows its architecture
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_body(ModelConfig(name=str(folder)))
    assert not marker.exists()


def test_paths_are_taken_literally(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    name = "~/$HOME/`touch pwned`$(touch pwned2)"
    cli_main(["adapt", "--adapter", "none", "--task", str(ws["data"]), "--shots", "2", "--output", name,
              f"model.name={ws['tiny']}", "inner.steps=1"])
    assert (tmp_path / name / "llm_meta.json").is_file()  # a folder with exactly that (odd) name
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert not (tmp_path / "home").exists()


def test_nothing_in_the_library_unpickles():
    root = Path(__file__).resolve().parent.parent
    for path in [*root.glob("llm_meta/*.py"), *root.glob("recipes/*.py")]:
        source = path.read_text()
        for call in ("torch.load(", "import pickle", "pickle.load", "weights_only=False"):
            assert call not in source, f"{path.name} uses {call}"
