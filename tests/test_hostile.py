"""Hostile inputs: what a stranger or an accident can hand the tool (docs/reliability.md, "Hostile inputs").

Each test is one row of that table: a folder that tries to run code, outputs that are someone
else's files, two writers at once, a checkpoint trained with another config, inputs too long to
hold or tokenise, tampered model folders. The tool must refuse or cope, say so in one line, and
lose nothing.
"""

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import llm_meta
from llm_meta.saving.checkpoint import CheckpointError, read_metadata, write_manifest
from llm_meta.classifier import AdaptConfig, FewShotClassifier
from llm_meta.cli import main as cli_main
from llm_meta.meta.core import InnerConfig
from llm_meta.errors import ModelLoadError, OutputError
from llm_meta.modeling.body import ModelConfig
from tests.test_meta_train import run, tiny_overrides, toy_csv  # noqa: F401 (toy_csv: a fixture)

ROOT = Path(__file__).resolve().parent.parent
ROWS = [f"{t} request {i},{t.split()[0]}" for t in ("card payment", "music playlist", "weather forecast")
        for i in range(6)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.csv"
    path.write_text("text,label\n" + "\n".join(ROWS) + "\n")
    return path


@pytest.fixture(scope="module")
def clf(tiny_bert_dir, data) -> FewShotClassifier:
    cfg = AdaptConfig(model=ModelConfig(name=str(tiny_bert_dir)), inner=InnerConfig(steps=1))
    return llm_meta.adapt(task=str(data), shots=2, cfg=cfg)


@pytest.fixture()
def model(clf, tmp_path) -> Path:
    return clf.save(tmp_path / "model")


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def refused(argv: list[str], capsys, pattern: str) -> str:
    """Run the command; it must exit 2 with one line matching `pattern` and no traceback."""
    import re

    with pytest.raises(SystemExit) as stop:
        cli_main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err, err
    line = [x for x in err.splitlines() if "error:" in x][-1]
    assert re.search(pattern, line), line
    return line


def evil_model_folder(tiny_bert_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A model folder whose config names its own Python module (auto_map): loading it runs that
    module, which leaves a marker file."""
    folder = tmp_path / "evil_model"
    shutil.copytree(tiny_bert_dir, folder)
    marker = tmp_path / "code_ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nfrom transformers import BertConfig\n"
                                    "class EvilConfig(BertConfig):\n    model_type = 'evil'\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(auto_map={"AutoConfig": "evil.EvilConfig"}, model_type="evil")
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def tamper(folder: Path, edit) -> None:
    """Change a saved folder's llm_meta.json with `edit`, then recompute its manifest, as anyone can."""
    meta = json.loads((folder / "llm_meta.json").read_text())
    edit(meta)
    (folder / "llm_meta.json").write_text(json.dumps(meta))
    (folder / "manifest.json").unlink()
    write_manifest(folder)


# --- code runs only when the caller asks -------------------------------------------------------------

def test_a_received_folder_that_asks_to_run_code_never_does(model, tiny_bert_dir, tmp_path, capsys):
    evil, marker = evil_model_folder(tiny_bert_dir, tmp_path)
    tamper(model, lambda m: m["model"].update(name=str(evil), trust_remote_code=True))
    inp = tmp_path / "in.txt"
    inp.write_text("card payment\n")
    refused(["predict", "--model", str(model), "--input", str(inp)], capsys, "needs its own Python code.*"
            "--trust-remote-code")
    for load in (FewShotClassifier.load, FewShotClassifier.from_pretrained):
        with pytest.raises(ModelLoadError, match="trust-remote-code"):
            load(model)
    assert not marker.exists()
    # A config file cannot ask for it either; only the person running the command can.
    (tmp_path / "c.yaml").write_text("model:\n  trust_remote_code: true\n")
    refused(["adapt", "--adapter", "none", "--support", str(inp), "--config", str(tmp_path / "c.yaml"), "--output",
             str(tmp_path / "m")], capsys, r"'model.trust_remote_code' cannot be set in a config.*--trust-remote-code")
    refused(["meta-train", "model.trust_remote_code=true", f"output_dir={tmp_path / 'r'}"], capsys,
            "cannot be set in a config")
    assert not marker.exists()
    # The flag is the one way in (the marker proves the module ran; the toy architecture then fails).
    with pytest.raises(SystemExit):
        cli_main(["predict", "--model", str(model), "--input", str(inp), "--trust-remote-code"])
    assert marker.exists()


# --- outputs are sacred ------------------------------------------------------------------------------

def test_an_output_folder_of_the_users_own_files_is_refused_before_any_work(data, tmp_path, capsys):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("do not lose")
    (victim / "sub" / "data.csv").write_text("id\n1\n")
    for sibling in ("victim.old", "victim.tmp"):
        (tmp_path / sibling).mkdir()
        (tmp_path / sibling / "mine.txt").write_text(sibling)
    before = digest(tmp_path)
    started = time.perf_counter()
    for flags in ([], ["--overwrite"]):
        refused(["adapt", "--adapter", "none", "--support", str(data), "--output", str(victim), *flags], capsys,
                r"victim exists and is not an llm_meta output folder .* never replaces a folder it did not write")
    assert time.perf_counter() - started < 5  # refused before a model is loaded (a load alone takes seconds)
    (tmp_path / "notes.txt").write_text("my notes")
    refused(["adapt", "--adapter", "none", "--support", str(data), "--output", str(tmp_path / "notes.txt")], capsys,
            r"notes.txt is a file, not a folder")
    refused(["adapt", "--adapter", "none", "--support", str(data), "--output", str(tmp_path / "notes.txt" / "m")],
            capsys, r"notes.txt is a file, not a folder: cannot write")
    assert {k: v for k, v in digest(tmp_path).items() if k != "notes.txt"} == before
    assert (tmp_path / "notes.txt").read_text() == "my notes"


def test_an_llm_meta_folder_is_replaced_only_with_overwrite(model, data, tiny_bert_dir, tmp_path, capsys):
    before = digest(model)
    argv = ["adapt", "--adapter", "none", "--support", str(data), "--output", str(model),
            f"model.name={tiny_bert_dir}", "inner.steps=1", "seed=3"]
    refused(argv, capsys, r"holds a task model \(llm_meta.classifier/1\); add --overwrite")
    assert digest(model) == before
    cli_main([*argv, "--overwrite"])
    assert read_metadata(model)["adapt_config"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or old copy left beside it


def test_an_output_file_is_replaced_only_with_overwrite_and_never_the_input(model, tmp_path, capsys):
    inp, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    inp.write_text("card payment\nmusic playlist\n")
    out.write_text("yesterday's results\n")
    refused(["predict", "--model", str(model), "--input", str(inp), "--output", str(out)], capsys,
            r"out.jsonl exists; add --overwrite")
    assert out.read_text() == "yesterday's results\n"
    refused(["predict", "--model", str(model), "--input", str(inp), "--output", str(inp), "--overwrite"],
            capsys, r"is the command's own input")
    refused(["predict", "--model", str(model), "--input", str(inp), "--output", str(model / "labels.json"),
             "--overwrite"], capsys, r"labels.json is inside .*model, a task model \(llm_meta.classifier/1\)")
    assert inp.read_text() == "card payment\nmusic playlist\n"
    cli_main(["predict", "--model", str(model), "--input", str(inp), "--output", str(out), "--overwrite"])
    assert len(out.read_text().splitlines()) == 2
    refused(["evaluate", "--model", str(model), "--task", str(inp), "--output", str(out)], capsys,
            r"out.jsonl exists; add --overwrite")


def test_a_crash_mid_predict_leaves_the_old_output_whole(model, tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [json.dumps({"text": f"card payment {i}"}) for i in range(5000)] + ['{"text": ["not", "a", "text"]}']
    inp.write_text("\n".join(rows) + "\n")
    out.write_text("the last good output\n")
    refused(["predict", "--model", str(model), "--input", str(inp), "--output", str(out), "--overwrite"], capsys,
            r"in.jsonl line 5001: text is list")  # after a whole chunk was labelled and written
    assert out.read_text() == "the last good output\n" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["in.jsonl", "model", "out.jsonl"]


def _writer(target: str, model_dir: str, writer: int, rounds: int, barrier, results) -> None:
    """One of two processes that write the same task-model folder at the same moments."""
    from llm_meta.classifier import FewShotClassifier
    from llm_meta.errors import OutputError
    from llm_meta.io.outputs import claim

    clf = FewShotClassifier.load(model_dir)
    clf.params["head.bias"] = torch.full_like(clf.params["head.bias"], float(writer))  # whose head it is
    for r in range(rounds):
        barrier.wait()
        try:
            with claim(target, overwrite=True):
                time.sleep(0.1)  # the other writer arrives meanwhile (the barrier let both go at once)
                clf.metadata["writer"] = writer
                clf.save(target, overwrite=True)
            results.put((r, writer, "wrote"))
        except OutputError as err:
            results.put((r, writer, "refused: " + str(err)))


def test_two_writers_of_one_folder_never_mix_their_files(model, tmp_path):
    rounds, ctx = 20, multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    target = tmp_path / "shared"
    procs = [ctx.Process(target=_writer, args=(str(target), str(model), w, rounds, barrier, results)) for w in (1, 2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in range(2 * rounds)]
    for p in procs:
        p.join(timeout=60)
    by_round = {r: sorted(o for rr, _, o in outcomes if rr == r) for r in range(rounds)}
    for r, got in by_round.items():
        wrote = [o for o in got if o == "wrote"]
        assert len(wrote) == 1, (r, got)  # exactly one writer per round; the other failed at once
        assert "being written by another llm-meta process" in next(o for o in got if o != "wrote")
    clf = FewShotClassifier.load(target)  # the folder verifies and is one writer's, whole
    assert float(clf.params["head.bias"][0]) == clf.metadata["writer"]


# --- meta-training runs ------------------------------------------------------------------------------

def test_a_finished_run_is_continued_or_restarted_only_when_asked(tiny_bert_dir, toy_csv, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    with pytest.raises(OutputError, match="holds no meta-training run to resume"):
        run(tiny_overrides(tiny_bert_dir, toy_csv, out, steps=2), resume=True)
    run(tiny_overrides(tiny_bert_dir, toy_csv, out, steps=2))
    kept = digest(out)
    with pytest.raises(OutputError, match="holds a meta-training run: add --resume to continue it, or --overwrite"):
        run(tiny_overrides(tiny_bert_dir, toy_csv, out, steps=2))
    with pytest.raises(CheckpointError, match=r"another config \(model.lora_r: 8 -> 4\)"):
        run(tiny_overrides(tiny_bert_dir, toy_csv, out, steps=2, **{"model.lora_r": 4}), resume=True)
    assert digest(out) == kept
    (out / "notes.txt").write_text("mine")  # a user's file in the run folder survives --overwrite
    from llm_meta.config import load_config
    from llm_meta import meta_training as meta_train

    cfg = load_config(meta_train.Config, ROOT / "recipes/configs/meta_train.yaml",
                      tiny_overrides(tiny_bert_dir, toy_csv, out, steps=1))
    cfg.overwrite = True
    meta_train.main(cfg)
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-0000001"]
    assert (out / "notes.txt").read_text() == "mine"


# --- inputs too long to hold or to tokenise ----------------------------------------------------------

def test_a_million_line_input_is_read_in_bounded_memory(tmp_path):
    from llm_meta.data.files import iter_inputs

    # 1M lines of text; JSON lines and CSV (slower to parse) at 200,000, where holding the texts would
    # already take ~16 MiB. Each reader is warmed up first (its first call builds caches and imports).
    for name, line, n in (("big.txt", "where is my card {i}\n", 1_000_000),
                          ("big.jsonl", '{{"text": "where is my card {i}"}}\n', 200_000),
                          ("big.csv", "where is my card {i},x\n", 200_000)):
        path = tmp_path / name
        header = "text,label\n" if name.endswith(".csv") else ""
        path.write_text(header + line.format(i=0))
        assert sum(len(chunk) for chunk in iter_inputs(str(path))) == 1
        with path.open("w") as f:
            f.write(header)
            for i in range(n):
                f.write(line.format(i=i))
        tracemalloc.start()
        count = sum(len(chunk) for chunk in iter_inputs(str(path)))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert count == n
        assert peak < 8 * 2**20, f"{name}: {peak / 2**20:.1f} MiB"


def test_a_huge_single_line_is_cut_to_what_the_model_reads_before_tokenising(model, tmp_path, capsys, caplog):
    inp, out = tmp_path / "one_line.txt", tmp_path / "out.jsonl"
    inp.write_text("card payment " * 4_000_000 + "\nmusic playlist\n")  # a 52 MB line
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        cli_main(["predict", "--model", str(model), "--input", str(inp), "--output", str(out)])
    assert time.perf_counter() - started < 60  # tokenising all 8M tokens of it alone takes minutes
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and len(rows[0]["text"]) == 52_000_000 and rows[0]["label"] is not None
    assert "1 of 2 texts to label are longer than model.max_length" in caplog.text


# --- tampered model folders --------------------------------------------------------------------------

def test_a_truncated_safetensors_file_is_refused_even_with_a_recomputed_manifest(model):
    weights = model / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="adapter_model.safetensors does not match its checksum"):
        FewShotClassifier.load(model)
    (model / "manifest.json").unlink()
    write_manifest(model)
    with pytest.raises(CheckpointError, match="adapter_model.safetensors: not a readable safetensors file"):
        FewShotClassifier.load(model)


@pytest.mark.parametrize("manifest,message", [
    ({}, r"llm_meta.json is not listed in manifest.json"),
    ({"../x": "0" * 64}, r"manifest.json names '../x', which is not a file llm_meta writes"),
])
def test_a_manifest_that_does_not_list_the_folder_is_refused(model, manifest, message):
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message):
        FewShotClassifier.load(model)


def test_a_file_added_after_saving_is_refused(model):
    (model / "support.jsonl").write_text('{"text": "injected", "label": "card"}\n')
    (model / "manifest.json").write_text(json.dumps({k: v for k, v in json.loads(
        (model / "manifest.json").read_text()).items() if k != "support.jsonl"}))
    with pytest.raises(CheckpointError, match="support.jsonl is not listed in manifest.json"):
        FewShotClassifier.load(model)


@pytest.mark.parametrize("change,message", [
    (lambda h: {**h, "head.bias": torch.full_like(h["head.bias"], float("nan"))}, "holds NaN or infinite values"),
    (lambda h: {**h, "head.weight": h["head.weight"][:2]}, r"head.weight has shape \[2, 32\], but labels.json has 3"),
])
def test_a_nan_or_misshapen_head_is_refused(model, change, message):
    head = model / "head.safetensors"
    save_file(change(load_file(str(head))), str(head))
    (model / "manifest.json").unlink()
    write_manifest(model)
    with pytest.raises(CheckpointError, match=message):
        FewShotClassifier.load(model)


def test_a_model_file_missing_weights_is_refused(tiny_bert_dir, tmp_path):
    from llm_meta.modeling.loading import load_body

    folder = tmp_path / "partial"
    shutil.copytree(tiny_bert_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    gone = [k for k in weights if "layer.1.attention.self.query" in k]
    save_file({k: v for k, v in weights.items() if k not in gone}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"has no weights for 2 parameter\(s\) .*layer.1.attention.self.query"):
        load_body(ModelConfig(name=str(folder)))
    load_body(ModelConfig(name=str(tiny_bert_dir)))  # the tiny model has no pooler: that one may be missing


def test_caches_are_keyed_by_content_not_name_and_size(tmp_path, monkeypatch):
    from llm_meta.io.atomic import content_key

    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "model.gguf"
    f.write_bytes(b"a" * 1000)
    first = content_key([f])
    assert content_key([f]) == first and (tmp_path / "cache" / "content-keys.json").is_file()
    f.write_bytes(b"b" * 1000)  # same name, same size, other content
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1))
    assert content_key([f]) != first


# --- what gets shared and written for spreadsheets ---------------------------------------------------

def test_csv_output_cannot_run_as_a_spreadsheet_formula(model, tmp_path):
    inp, out = tmp_path / "in.txt", tmp_path / "out.csv"
    inp.write_text('=cmd|" /C calc"!A0\n+1\n@SUM(A1)\n-2\nplain\n')
    cli_main(["predict", "--model", str(model), "--input", str(inp), "--output", str(out)])
    import csv

    cells = [row[0] for row in csv.reader(out.open(newline=""))][1:]
    assert cells == ["'=cmd|\" /C calc\"!A0", "'+1", "'@SUM(A1)", "'-2", "plain"]


def test_only_a_folder_of_the_commands_own_kind_and_files_is_replaced(model, data, tmp_path, capsys):
    argv = ["adapt", "--adapter", "none", "--support", str(data), "--overwrite", "--output"]
    # A user's folder that merely looks like an old benchmark (scores/*.json) is not ours.
    proj = tmp_path / "proj"
    (proj / "scores").mkdir(parents=True)
    (proj / "scores" / "r.json").write_text("{}")
    (proj / "notes.txt").write_text("mine")
    refused([*argv, str(proj)], capsys, "not an llm_meta output folder")
    refused(["benchmark", "--overwrite", f"output_dir={proj}"], capsys, "not an llm_meta output folder")
    # A task model is never written over another kind of llm_meta folder, even with --overwrite.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "llm_meta.json").write_text('{"format": "llm_meta.run/1"}')
    refused([*argv, str(tmp_path / "run")], capsys, r"holds a meta-training run \(llm_meta.run/1\), not what")
    # Nor over one of its own kind that holds a file llm_meta did not write (here: the very input).
    shutil.copy(data, model / "data.csv")
    refused([*argv[:3], str(model / "data.csv"), *argv[4:], str(model)], capsys,
            r"holds files llm_meta did not write \(data.csv\)")
    assert (proj / "notes.txt").read_text() == "mine" and (model / "data.csv").read_text() == data.read_text()


def test_links_and_the_current_folder_are_refused_as_outputs(model, data, tmp_path, capsys, monkeypatch):
    argv = ["adapt", "--adapter", "none", "--support", str(data), "--overwrite", "--output"]
    (tmp_path / "empty").mkdir()
    for name, points_to in (("lnk", tmp_path / "empty"), ("lnk2", model), ("dangling", tmp_path / "nowhere")):
        (tmp_path / name).symlink_to(points_to)
        refused([*argv, str(tmp_path / name)], capsys, "is a symbolic link")
    monkeypatch.chdir(tmp_path / "empty")
    refused([*argv, "."], capsys, "is the current folder or one above it")
    refused([*argv, ".."], capsys, "is the current folder or one above it")
    assert list((tmp_path / "empty").iterdir()) == [] and (tmp_path / "lnk2").resolve() == model.resolve()


def _hold(target: str, ready, release) -> None:
    from llm_meta.io.outputs import claim_run

    with claim_run(target, "llm_meta.run/1", ("adapter",)):
        ready.set()
        release.wait(60)


def test_a_folder_inside_one_another_process_is_writing_is_refused(tmp_path):
    from llm_meta.io.outputs import claim

    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path / "run"), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        for inner in ("adapter", "checkpoints/step-0000001"):
            with pytest.raises(OutputError, match=r"is inside .*run, which another llm-meta process is writing"):
                with claim(tmp_path / "run" / inner, overwrite=True):
                    pass
    finally:
        release.set()
        holder.join(60)
    with claim(tmp_path / "elsewhere"):  # nothing else is held
        pass


def test_run_controls_come_from_the_command_not_a_config(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("overwrite: true\n")
    refused(["meta-train", "--config", str(tmp_path / "c.yaml")], capsys, r"'overwrite' cannot be set in a config")
    refused(["meta-train", "force=true"], capsys, r"'force' cannot be set in a config")


def test_predict_output_dash_is_standard_output(model, tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text("card payment\n")
    cli_main(["predict", "--model", str(model), "--input", str(inp), "--output", "-"])
    assert json.loads(capsys.readouterr().out)["text"] == "card payment" and not (tmp_path / "-").exists()
