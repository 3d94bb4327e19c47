"""Online adaptation: new examples and new classes added to an adapted task model (API and CLI)."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llm_meta
from llm_meta.classifier import AdaptConfig, FewShotClassifier
from llm_meta.meta.core import InnerConfig
from llm_meta.meta.heads import HEAD_KEYS
from llm_meta.modeling.body import ModelConfig
from llm_meta.online import ContinueConfig, continue_adapt
from llm_meta.data.tasks import TaskError

TOPICS = {"card_payment": "card payment", "music_playlist": "music playlist", "weather_forecast": "weather forecast"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    folder = tmp_path_factory.mktemp("online")
    rows = [f"{words} request {i},{label}" for label, words in TOPICS.items() for i in range(4)]
    (folder / "support.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    cfg = AdaptConfig(model=ModelConfig(name=str(tiny_bert_dir)), inner=InnerConfig(steps=3, label_examples=1))
    llm_meta.adapt(support=str(folder / "support.csv"), cfg=cfg).save(folder / "model")
    return folder / "model"


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_support_set_travels_with_the_model(model_dir):
    clf = FewShotClassifier.load(model_dir)
    assert (model_dir / "support.jsonl").is_file()
    assert len(clf.support) == 12 and sorted(set(clf.support.labels)) == [0, 1, 2]
    assert clf.support.texts[0] == "card payment request 0" and clf.labels[clf.support.labels[0]] == "card_payment"


def test_new_class_gets_a_row_and_old_rows_are_kept_without_steps(model_dir):
    clf = FewShotClassifier.load(model_dir)
    new = continue_adapt(clf, ["alarm clock at seven", "wake me up at six"], ["alarm", "alarm"], ["alarm"],
                         ContinueConfig(steps=0))
    assert new.labels == clf.labels + ["alarm"]
    for k in HEAD_KEYS:  # with no steps the old classes' rows and the LoRA are exactly what they were
        assert torch.equal(new.params[k][:3], clf.params[k])
    assert all(torch.equal(new.params[k], v) for k, v in clf.params.items() if k not in HEAD_KEYS)
    assert len(new.support) == 14 and new.support.labels[-2:] == [3, 3]
    assert new.predict(["wake me up at six"]) == ["alarm"]  # the prototype row alone recognises it
    assert clf.labels == list(TOPICS) and len(clf.support) == 12  # the input model is not modified


def test_steps_train_on_replayed_and_new_examples(model_dir):
    clf = FewShotClassifier.load(model_dir)
    new = continue_adapt(clf, ["weather forecast please"], ["weather_forecast"], cfg=ContinueConfig(steps=2))
    assert new.labels == clf.labels and len(new.support) == 13
    assert not torch.equal(new.params["head.weight"], clf.params["head.weight"])
    assert new.metadata["continued"][-1]["examples"] == 1


@pytest.mark.parametrize("labels,declared,message", [
    (["alarm"], [], "not known to the model and not declared as new classes: alarm"),
    (["alarm"], ["card_payment", "alarm"], "already knows: card_payment"),
    (["card_payment"], ["alarm"], "declared new class(es) with no example: alarm"),
])
def test_bad_labels_are_clear_errors(model_dir, labels, declared, message):
    with pytest.raises(TaskError, match=message.replace("(", r"\(").replace(")", r"\)")):
        continue_adapt(FewShotClassifier.load(model_dir), ["some text"], labels, declared)


def test_cli_continue_adds_a_class_and_unknown_label_leaves_the_folder_untouched(model_dir, tmp_path):
    new = tmp_path / "new.csv"
    new.write_text("text,label\nset an alarm for seven,alarm\nwake me at six,alarm\n")  # one class: allowed here
    before = _digest(model_dir)
    cmd = [sys.executable, "-m", "llm_meta.cli", "adapt", "--continue", str(model_dir), "--support", str(new),
           "--output", str(model_dir)]
    refused = subprocess.run(cmd, capture_output=True, text=True)  # over its own input, without --overwrite
    assert refused.returncode == 2 and "add --overwrite" in refused.stderr and _digest(model_dir) == before
    bad = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True)
    assert bad.returncode == 2, bad.stderr
    assert "not declared as new classes: alarm" in bad.stderr and "--new-class" in bad.stderr
    assert "Traceback" not in bad.stderr and _digest(model_dir) == before

    out = tmp_path / "model_v2"
    ok = subprocess.run(cmd[:-1] + [str(out), "--new-class", "alarm", "steps=1"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    clf = FewShotClassifier.load(out)
    assert clf.labels == list(TOPICS) + ["alarm"] and len(clf.support) == 14
    assert _digest(model_dir) == before


def test_a_new_class_whose_name_holds_a_comma_is_one_class(model_dir, tmp_path):
    new = tmp_path / "new.csv"
    new.write_text('text,label\nmy parcel is stuck,"shipping, delays"\nstill no delivery,"shipping, delays"\n'
                   "set an alarm,alarm\n")
    done = subprocess.run([sys.executable, "-m", "llm_meta.cli", "adapt", "--continue", str(model_dir), "--support",
                           str(new), "--output", str(tmp_path / "v2"), "--new-class", "shipping, delays",
                           "--new-class", "alarm", "steps=1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert FewShotClassifier.load(tmp_path / "v2").labels == [*TOPICS, "shipping, delays", "alarm"]
