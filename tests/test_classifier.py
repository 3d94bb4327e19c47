"""adapt / predict / evaluate: the API, the task-model folder, the commands, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llm_meta
from llm_meta.saving.checkpoint import CheckpointError
from llm_meta.classifier import AdaptConfig, FewShotClassifier
from llm_meta.data.episodes import support_set
from llm_meta.meta.core import InnerConfig
from llm_meta.data.episodes import Examples
from llm_meta.modeling.body import ModelConfig
from llm_meta.data.tasks import TaskError, load_task

ROOT = Path(__file__).resolve().parent.parent
TOPICS = {"card_payment": "card payment", "music_playlist": "music playlist", "weather_forecast": "weather forecast"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy")
    for split, n in (("train", 8), ("test", 4)):
        rows = [f"{words} request {i} {split},{label}" for label, words in TOPICS.items() for i in range(n)]
        (folder / f"{split}.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny_cfg(tiny_bert_dir) -> AdaptConfig:
    return AdaptConfig(model=ModelConfig(name=str(tiny_bert_dir)), inner=InnerConfig(steps=3, label_examples=1))


@pytest.fixture(scope="module")
def adapted(toy, tiny_cfg) -> FewShotClassifier:
    return llm_meta.adapt(task=str(toy), shots=2, cfg=tiny_cfg)


def test_support_set_draws_k_per_class_reproducibly(toy):
    task = load_task(str(toy))
    support, labels = support_set(task, shots=3, seed=1)
    assert labels == sorted(TOPICS) and len(support) == 9 and support.labels.count(2) == 3
    assert support_set(task, 3, seed=1)[0].texts == support.texts != support_set(task, 3, seed=2)[0].texts


def test_whole_split_episode_has_every_class_and_the_rest_of_the_split_as_query(toy):
    from llm_meta.data.episodes import whole_split_episode
    from llm_meta import meta_training as meta_train
    from llm_meta.meta_config import EvalConfig

    task = load_task(str(toy))
    ep = whole_split_episode(task, 2, "train", "train", seed=1)
    assert ep.label_names == sorted(TOPICS) and len(ep.support) == 6 and len(ep.query) == 24 - 6
    assert not set(ep.support.texts) & set(ep.query.texts)
    assert sorted(ep.support.texts + ep.query.texts) == sorted(task.split("train")["text"])
    assert [ep.label_names[y] for y in ep.query.labels] == [y for t, y in zip(task.split("train")["text"],
                                                            task.split("train")["label"]) if t in ep.query.texts]
    # q_query 0 in a validation/test section: one such episode per support draw, seeded
    episodes = meta_train.eval_episodes(EvalConfig(tasks=[str(toy)], episodes=2, k_shot=2, q_query=0, split="test"))
    assert len(episodes) == 2 and all(len(e.support) == 6 and e.query.texts == list(task.split("test")["text"])
                                      for e in episodes)
    assert episodes[0].support.texts != episodes[1].support.texts


def test_k_larger_than_a_class_names_it(toy, caplog):
    support, _ = support_set(load_task(str(toy)), shots=9)
    assert "3 class(es) have fewer than K=9 distinct texts and join with all they have: 'card_payment' has 8" in caplog.text
    assert len(support) == 24
    for k in (0, -2):
        with pytest.raises(TaskError, match=f"K \\(--shots; Python: shots=\\) must be at least 1 example per class, got {k}"):
            support_set(load_task(str(toy)), shots=k)


def test_label_names_join_the_support_set():
    s = Examples(["a"], [0]).with_label_names(["card_arrival", "top-up"], 2)
    assert s.texts == ["a", "card arrival", "card arrival", "top up", "top up"] and s.labels == [0, 0, 0, 1, 1]


def test_save_load_round_trip_and_plain_peft(adapted, tmp_path, tiny_bert_dir):
    folder = adapted.save(tmp_path / "model")
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors", "labels.json",
            "llm_meta.json", "manifest.json"} <= {p.name for p in folder.iterdir()}
    texts = ["card payment please", "what is the weather forecast", "next music playlist"]
    loaded = FewShotClassifier.load(folder)
    assert loaded.labels == adapted.labels == sorted(TOPICS)
    assert torch.allclose(loaded.predict_proba(texts), adapted.predict_proba(texts), atol=1e-6)
    assert json.loads((folder / "labels.json").read_text()) == sorted(TOPICS)
    from peft import PeftModel
    from transformers import AutoModel
    PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_bert_dir), str(folder))


def test_evaluate_reports_metrics_and_confusions(adapted, toy):
    report = adapted.evaluate(str(toy), split="test")
    assert report["examples"] == 12 and 0 <= report["accuracy"] <= 1 and 0 <= report["macro_f1"] <= 1
    assert all(set(r) == {"true", "predicted", "count"} for r in report["most_confused"])


def test_evaluate_unknown_labels_are_listed(adapted, tmp_path):
    f = tmp_path / "other.csv"
    f.write_text("text,label\nhello,greeting\nbye,farewell\ncard,card_payment\n")
    with pytest.raises(TaskError, match="2 label\\(s\\) this model does not know: farewell, greeting"):
        adapted.evaluate(str(f), split="train")


def test_support_file_used_whole(tmp_path, tiny_cfg):
    f = tmp_path / "support.csv"
    f.write_text("text,label\nmy card payment,card\nplay the playlist,music\nmy card again,card\n")
    clf = llm_meta.adapt(support=str(f), cfg=tiny_cfg)
    assert clf.labels == ["card", "music"] and clf.metadata["support_size"] == 3


def test_support_file_with_one_class(tmp_path, tiny_cfg):
    f = tmp_path / "one.csv"
    f.write_text("text,label\nmy card payment,card\nmy card again,card\n")
    with pytest.raises(TaskError, match="1 class"):
        llm_meta.adapt(support=str(f), cfg=tiny_cfg)


def test_corrupt_and_foreign_folders(adapted, tmp_path):
    folder = adapted.save(tmp_path / "model")
    head = folder / "head.safetensors"
    head.write_bytes(head.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="head.safetensors does not match its checksum"):
        FewShotClassifier.load(folder)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="a PEFT adapter from another tool, not an llm_meta adapter"):
        FewShotClassifier.load(foreign)
    with pytest.raises(CheckpointError, match="no such folder"):
        FewShotClassifier.load(tmp_path / "missing")


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_meta.cli", *args], capture_output=True, text=True,
                          input=stdin, cwd=ROOT, timeout=600)


def test_predict_inputs_and_empty_texts(adapted, tmp_path):
    folder = str(adapted.save(tmp_path / "model"))
    (tmp_path / "in.txt").write_text("card payment now\n\nweather forecast\n")
    done = cli("predict", "--model", folder, "--input", str(tmp_path / "in.txt"))
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and len(rows) == 3 and rows[1]["label"] is None
    assert rows[0]["label"] in TOPICS and 0 < rows[0]["probability"] <= 1
    assert "skipped 1 empty" in done.stderr
    done = cli("predict", "--model", folder, "--input", str(tmp_path / "in.txt"), "--empty", "error")
    assert done.returncode == 2 and "empty or whitespace-only text in" in done.stderr and "line/row 2" in done.stderr
    (tmp_path / "in.jsonl").write_text('{"utterance": "music playlist"}\n')
    done = cli("predict", "--model", folder, "--input", str(tmp_path / "in.jsonl"), "--text-column", "utterance",
               "--output", str(tmp_path / "out.csv"))
    assert done.returncode == 0 and (tmp_path / "out.csv").read_text().startswith("text,label,probability")
    done = cli("predict", "--model", folder, stdin="weather forecast today\n")
    assert json.loads(done.stdout)["text"] == "weather forecast today"


def test_not_a_model_folder_is_one_line_error(tmp_path):
    done = cli("predict", "--model", str(tmp_path), "--input", "-", stdin="x\n")
    assert done.returncode == 2 and "not an adapter" in done.stderr and "Traceback" not in done.stderr


def test_round_trip_in_fresh_processes_on_real_model(tmp_path):
    """meta-train (tiny budget) -> adapt -> predict -> evaluate, real MiniLM, held-out MCID."""
    run = tmp_path / "run"
    done = cli("meta-train", "--config", "recipes/configs/meta_train.yaml", f"output_dir={run}", "outer.steps=1",
               "outer.meta_batch=1", "episodes.n_way=3", "episodes.k_shot=2", "episodes.q_query=2",
               "inner.steps=1", "validate_every=1", "validation.episodes=1", "validation.n_way=3", "test.episodes=0")
    assert done.returncode == 0, done.stderr[-2000:]
    model = tmp_path / "mcid_model"
    done = cli("adapt", "--adapter", str(run / "adapter"), "--task", "mcid", "--shots", "2",
               "--output", str(model), "inner.steps=2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "16 labels, 32 support examples" in done.stdout
    done = cli("predict", "--model", str(model), stdin="how can i donate to the red cross\n")
    assert json.loads(done.stdout)["label"] == "donate"
    report = tmp_path / "eval.json"
    done = cli("evaluate", "--model", str(model), "--task", "mcid", "--output", str(report))
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads(report.read_text())
    assert metrics["examples"] == 331 and metrics["accuracy"] > 0.5  # 16 classes: chance is 6%


def test_leave_one_out_fit_matches_a_plain_loop_and_choose_start_prefers_the_first_on_ties(tiny_bert_dir, toy):
    from llm_meta.meta.adaptation import choose_start, leave_one_out_fit
    from llm_meta.meta.heads import head_logits, proto_head
    from llm_meta.meta.kinds import labelled_embeddings
    from llm_meta.modeling.loading import load_body
    from llm_meta.modeling.body import lora_params

    body = load_body(ModelConfig(name=str(tiny_bert_dir)), seed=0)
    params = lora_params(body)
    support, labels = support_set(load_task(str(toy)), 2, seed=0)
    cfg = InnerConfig(label_examples=1)
    extended = support.with_label_names(labels, 1)
    emb, ys = labelled_embeddings(body, params, extended)
    plain = []
    for i in range(len(support)):  # the class of example i from the prototypes of every other example
        rest = [j for j in range(len(extended)) if j != i]
        head = proto_head(emb[rest], ys[rest], len(labels))
        plain.append(torch.log_softmax(head_logits(head, emb[i : i + 1], cfg.scale), 1)[0, ys[i]].item())
    assert leave_one_out_fit(body, params, support, len(labels), cfg, labels) == pytest.approx(sum(plain) / len(plain),
                                                                                             abs=1e-5)
    assert choose_start(body, {"a": params, "b": dict(params)}, support, len(labels), cfg, labels)[0] == "a"


def test_adapt_chooses_its_start_on_the_support_set(tiny_bert_dir, toy, tmp_path, tiny_cfg):
    # An adapter that moved far from the pretrained model: the untrained start fits the toy task
    # better, and adapt says which it chose and why; select_start=off uses the adapter as given.
    import dataclasses

    from llm_meta.saving.checkpoint import save_adapter
    from llm_meta.modeling.loading import load_body
    from llm_meta.modeling.body import lora_params

    body = load_body(tiny_cfg.model, seed=0)
    noise = torch.Generator().manual_seed(0)
    wrecked = {k: v + (0.5 * torch.randn(v.shape, generator=noise) if "lora_B" in k else 0)
               for k, v in lora_params(body).items()}
    save_adapter(body, wrecked, tmp_path / "far", {"base_model": str(tiny_bert_dir), "config": {
        "model": dataclasses.asdict(tiny_cfg.model)}, "algorithm": "fomaml"})
    clf = llm_meta.adapt(task=str(toy), shots=2, adapter=tmp_path / "far", cfg=tiny_cfg)
    chosen = clf.metadata["start_selection"]
    assert set(chosen["leave_one_out_fit"]) == {"untrained", "adapter", "adapter at α=0.5"}
    assert chosen["chosen"] == max(chosen["leave_one_out_fit"], key=chosen["leave_one_out_fit"].get)
    clf.save(tmp_path / "m")
    assert "start chosen on the support set" in (tmp_path / "m" / "README.md").read_text()
    off = llm_meta.adapt(task=str(toy), shots=2, adapter=tmp_path / "far",
                         cfg=dataclasses.replace(tiny_cfg, select_start="off"))
    assert off.metadata["start_selection"] is None and off.metadata["start"] == str(tmp_path / "far")


def test_in_family_compares_class_names_stripped_and_case_folded_and_needs_a_recorded_family():
    from llm_meta.meta.adaptation import in_family

    family = ["negative", "neutral", "positive"]
    assert in_family(["Positive ", "negative"], family) and in_family(family, family)
    assert not in_family(["positive", "mixed"], family)
    assert not in_family(["positive"], None) and not in_family(["positive"], [])
    assert not in_family(["p"], "positive")  # malformed metadata (a string, not a list of names)


@pytest.mark.parametrize("algorithm, family, select, pick, steps", [
    ("protonet", "toy", "auto", "adapter", 0),  # the family's labels: the adapter as trained, nothing chosen
    ("fomaml", "toy", "auto", "adapter", 3),
    ("protonet", "toy", "support", "adapter", 3),  # the choice forced: every pick takes the configured steps
    ("protonet", "other", "auto", "adapter", 3), ("protonet", None, "auto", "untrained", 3)])
def test_a_protonet_adapter_takes_no_steps_on_its_familys_labels_and_the_steps_when_chosen(
        tiny_bert_dir, toy, tmp_path, tiny_cfg, monkeypatch, algorithm, family, select, pick, steps):
    # ProtoNet meta-trains the nearest-prototype classifier itself: on a task whose class names are
    # all among its meta-training class names, its LoRA is used untouched (0 steps). On any other
    # task the start is chosen on the support set and takes the configured steps, whichever it is:
    # the fit judges the candidates before any step. The choice is forced here (the leave-one-out
    # fit has its own tests): what is tested is what adapt does with it.
    import dataclasses

    from llm_meta import start_choice
    from llm_meta.meta.adaptation import OWN_STEPS, own_adaptation
    from llm_meta.saving.checkpoint import load_adapter_params, save_adapter
    from llm_meta.modeling.loading import load_body
    from llm_meta.modeling.body import lora_params
    from llm_meta.data.tasks import load_task

    assert own_adaptation(tiny_cfg.inner, "protonet").steps == OWN_STEPS["protonet"] == 0
    assert own_adaptation(tiny_cfg.inner, None) is tiny_cfg.inner
    body = load_body(tiny_cfg.model, seed=0)
    noise = torch.Generator().manual_seed(1)
    trained = {k: v + (0.1 * torch.randn(v.shape, generator=noise) if "lora_B" in k else 0)
               for k, v in lora_params(body).items()}
    labels = load_task(str(toy)).label_names
    save_adapter(body, trained, tmp_path / "start", {"base_model": str(tiny_bert_dir), "config": {
        "model": dataclasses.asdict(tiny_cfg.model)}, "algorithm": algorithm,
        **({} if family is None else {"label_names": [x.upper() for x in labels] + ["spare"] if family == "toy"
                                      else ["something else"]})})
    monkeypatch.setattr(start_choice, "best_fit", lambda fits: list(fits).index(pick))
    # select_start=off: the adapter as given with the configured steps, even on the family's labels
    off = llm_meta.adapt(task=str(toy), shots=2, adapter=tmp_path / "start",
                         cfg=dataclasses.replace(tiny_cfg, select_start="off"))
    assert off.metadata["start_selection"] is None and off.metadata["start"] == str(tmp_path / "start")
    assert not all(torch.equal(off.params[name], value) for name, value in trained.items())
    with pytest.raises(ValueError, match="select_start must be auto, names, support or off"):
        llm_meta.adapt(task=str(toy), shots=2, adapter=tmp_path / "start",
                       cfg=dataclasses.replace(tiny_cfg, select_start="yes"))
    clf = llm_meta.adapt(task=str(toy), shots=2, adapter=tmp_path / "start",
                         cfg=dataclasses.replace(tiny_cfg, select_start=select))
    assert clf.metadata["start_selection"]["chosen"] == pick
    chose = family != "toy" or select == "support"
    assert (clf.metadata["start_selection"]["leave_one_out_fit"] is not None) == chose
    assert clf.metadata["start_selection"]["inner_steps"] == steps
    saved = load_adapter_params(clf.body, str(tmp_path / "start"))
    untouched = all(torch.equal(clf.params[name], value) for name, value in saved.items())
    assert untouched == (steps == 0)
    clf.save(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    assert f"then {steps} inner steps" in card
    assert ("start chosen on the support set" in card) == chose
