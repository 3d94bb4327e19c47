"""Hugging Face conventions: model cards, from_pretrained/save_pretrained/push_to_hub, trackers,
and the resolved-config command. Nothing here reaches the network: the upload is the one call
replaced, and the Hub download is exercised through a local snapshot folder."""

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

import llm_meta
from llm_meta.classifier import AdaptConfig, FewShotClassifier
from llm_meta.meta.core import InnerConfig
from llm_meta.saving.card import hub_model_id, model_card
from llm_meta.modeling.body import ModelConfig
from tests.test_meta_train import run, tiny_overrides, toy_csv  # noqa: F401 (toy_csv: a fixture)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def task_model(tiny_bert_dir, tmp_path_factory) -> tuple[FewShotClassifier, Path]:
    folder = tmp_path_factory.mktemp("hub_toy")
    rows = [f"{w} request {i},{label}" for label, w in (("card", "card payment"), ("music", "play music"))
            for i in range(6)]
    (folder / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    cfg = AdaptConfig(model=ModelConfig(name=str(tiny_bert_dir)), inner=InnerConfig(steps=2))
    clf = llm_meta.adapt(task=str(folder / "train.csv"), shots=3, cfg=cfg)
    return clf, clf.save_pretrained(tmp_path_factory.mktemp("hub_model") / "model")


def front_matter(folder: Path) -> dict:
    card = ModelCard.load(folder / "README.md")
    return card.data.to_dict()


def test_task_model_card_has_hub_front_matter_and_says_how_it_was_made(task_model):
    clf, folder = task_model
    meta = front_matter(folder)
    assert meta["library_name"] == "peft"
    assert "text-classification" in meta["tags"] and "llm_meta" in meta["tags"]
    assert meta["metrics"] == ["accuracy"] and meta["datasets"] == ["train"]
    assert "base_model" not in meta  # a local model folder has no Hub id
    text = (folder / "README.md").read_text()
    assert "6 support examples" in text and "labels: card, music" in text
    assert "FewShotClassifier.from_pretrained" in text and "PeftModel.from_pretrained" in text
    assert "head.safetensors" in text  # plain PEFT does not read the head: the card says so
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "README.md" in manifest  # the card is checksummed with the rest


def test_from_pretrained_save_pretrained_round_trip_and_hub_id(task_model, tmp_path, monkeypatch):
    clf, folder = task_model
    texts = ["card payment please", "play music now"]
    again = FewShotClassifier.from_pretrained(folder)
    assert again.predict(texts) == clf.predict(texts)
    # A Hub id resolves through huggingface_hub's snapshot_download (here: a local snapshot).
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: calls.append((repo_id, kw)) or str(folder))
    assert FewShotClassifier.from_pretrained("hf:someone/toy-intents", revision="abc123").predict(texts) == \
        clf.predict(texts)
    (repo_id, kw), = calls
    assert repo_id == "someone/toy-intents" and kw["revision"] == "abc123"  # pinned as asked
    assert "support.jsonl" in kw["allow_patterns"] and "*.py" not in kw["allow_patterns"]  # task-model files only
    # Without hf:, a name is a local path: a typo is an error naming it, never a stranger's download.
    for name in ("someone/toy-intents", "./my_model", "~/my_model", "runs/x/model"):
        with pytest.raises(FileNotFoundError, match="no model folder"):
            FewShotClassifier.from_pretrained(name)
    assert len(calls) == 1


def test_push_to_hub_uploads_what_may_be_shared(task_model, monkeypatch, tmp_path):
    clf, saved = task_model
    import huggingface_hub

    from llm_meta.saving.checkpoint import verify_folder

    uploaded = []

    def create_repo(self, repo_id, **kw):
        uploaded.append({"repo": repo_id, "private": kw.get("private")})

    def upload_folder(self, folder_path, repo_id, **kw):
        folder = Path(folder_path)
        verify_folder(folder)  # the copy that goes up is intact on its own
        uploaded[-1]["files"] = sorted(p.name for p in folder.iterdir())
        uploaded[-1]["text"] = "".join(p.read_text(errors="replace") for p in folder.iterdir() if p.suffix != ".safetensors")
        return "https://huggingface.co/someone/toy/commit/1"
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert clf.push_to_hub("someone/toy").endswith("/commit/1")
    first = uploaded[0]
    assert first["repo"] == "someone/toy" and first["private"] is None  # the Hub's own default, not ours
    assert first["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors", "head.safetensors",
                              "labels.json", "llm_meta.json", "manifest.json"]  # no support.jsonl: the user's texts
    assert str(Path.home()) not in first["text"] and str(tmp_path.parent) not in first["text"]  # no local paths
    assert '"/' not in first["text"]
    clf.push_to_hub("someone/toy", private=True, include_support=True)
    assert uploaded[1]["private"] is True and "support.jsonl" in uploaded[1]["files"]
    assert (saved / "support.jsonl").is_file()  # the local folder is left as it was


def test_adapter_card_reports_selection_against_the_untrained_start():
    card = model_card({"format": "llm_meta.adapter/1", "base_model": "all-MiniLM-L6-v2", "algorithm": "metasgd",
                       "tasks": {"clinc": "abc", "stackoverflow": "def"}, "step": 30, "alpha": 0.25,
                       "validation_accuracy": 0.795, "step0_validation_accuracy": 0.791},
                      ["adapter_model.safetensors", "meta_sgd_rates.safetensors"])
    meta = card.data.to_dict()
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["datasets"] == ["clinc", "stackoverflow"] and "metasgd" in meta["tags"]
    assert "79.5 kept vs 79.1 for the untrained start (+0.4)" in card.content
    assert "step 30, interpolation α = 0.25" in card.content
    assert "Plain PEFT ignores `meta_sgd_rates.safetensors`" in card.content
    assert hub_model_id("/some/local/path") is None and hub_model_id("org/model") == "org/model"


def test_meta_train_logs_to_tensorboard_and_writes_an_adapter_card(tiny_bert_dir, toy_csv, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run(tiny_overrides(tiny_bert_dir, toy_csv, out, steps=2, log_with="[tensorboard]"))
    events = list((out / "trackers").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    scalars = set()
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
    assert {"step/loss", "step/query_accuracy", "validation/accuracy"} <= scalars
    assert "llm_meta" in front_matter(out / "adapter")["tags"]


def test_config_command_prints_the_resolved_configuration(capsys, monkeypatch):
    from llm_meta.cli import main

    monkeypatch.chdir(ROOT)
    main(["config", "--config", "recipes/configs/reptile.yaml", "outer.steps=7"])
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["algorithm"] == "reptile" and resolved["outer"]["steps"] == 7
    assert resolved["model"]["name"] == "all-MiniLM-L6-v2" and "lora_dropout" in resolved["model"]  # defaults filled
    main(["config", "--config", "recipes/configs/benchmark_quick.yaml"])  # the recipe is found from the keys
    assert yaml.safe_load(capsys.readouterr().out)["budget_scale"] == 0.25
    with pytest.raises(SystemExit) as stop:
        main(["config", "--config", "recipes/configs/reptile.yaml", "outr.steps=7"])
    assert stop.value.code == 2 and "did you mean 'outer'" in capsys.readouterr().err
