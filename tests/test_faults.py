"""Faults: SIGKILL at random points of a meta-training run, torn and corrupt checkpoints.

The kill test is the slowest test of the default suite (about a minute: every resume is a fresh
process). It stays in the default run on purpose: it is the proof behind "a crash never loses
the last good checkpoint and resuming gives the uninterrupted result".
"""

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_meta.saving.checkpoint import CheckpointError, load_checkpoint, readable_folder, save_adapter, verify_folder
from llm_meta.modeling.body import ModelConfig, lora_params
from llm_meta.modeling.loading import load_body
from tests.test_meta_train import ROOT, final_params, tiny_overrides, toy_csv  # noqa: F401 (fixture)

STEPS = 16


def launch(overrides: list[str], out: Path) -> subprocess.Popen:
    """A meta-training process on `out`: --resume when a checkpoint is there, --overwrite when the run
    was killed before its first checkpoint (there is nothing to resume: it starts again)."""
    has_checkpoint = any((out / "checkpoints").glob("step-*[0-9]"))
    flag = ["--resume"] if has_checkpoint else ["--overwrite"] if out.exists() else []
    cmd = [sys.executable, "-m", "llm_meta.cli", "meta-train", "--config", str(ROOT / "recipes/configs/meta_train.yaml"),
           *flag, *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def steps_logged(out: Path) -> int:
    log = out / "log.jsonl"
    return sum('"event": "step"' in line for line in log.read_text().splitlines()) if log.exists() else 0


def assert_no_torn_checkpoint(out: Path) -> None:
    """Every folder that looks like a checkpoint is complete, and `latest` names one of them."""
    ckpts = sorted((out / "checkpoints").glob("step-*[0-9]")) if (out / "checkpoints").exists() else []
    for ckpt in ckpts:
        verify_folder(ckpt)
    latest = out / "checkpoints" / "latest"
    if latest.exists():
        verify_folder(out / "checkpoints" / latest.read_text())
    if (out / "adapter").exists() or list(out.glob(".adapter.old-*")):
        verify_folder(readable_folder(out / "adapter"))


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tiny_bert_dir, toy_csv, tmp_path):  # noqa: F811
    def overrides(out: Path) -> list[str]:
        return tiny_overrides(tiny_bert_dir, toy_csv, out, steps=STEPS, validate_every=1)

    reference = tmp_path / "reference"
    done = launch(overrides(reference), reference)
    assert done.wait(timeout=300) == 0, done.stderr.read()[-2000:]

    out, rng, kills, launches = tmp_path / "killed", random.Random(0), 0, 0
    while True:
        before = steps_logged(out)
        proc = launch(overrides(out), out)
        launches += 1
        assert launches < 30, "the killed run never finished"
        # Kill after a random number of new meta-steps plus a random delay, so kills land in
        # compute, validation and checkpoint writes alike; the last launch runs to the end. The
        # target stays in the first half of the log (which replays steps after a resume, so it runs
        # ahead of the real progress): a launch aimed near the end could finish its last steps within
        # the delay and never be killed. Once the log is half full, the kills land at start-up.
        if kills < 5:
            target = min(before + rng.randint(1, 2), STEPS // 2)
            while proc.poll() is None and steps_logged(out) < target:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.3))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                assert_no_torn_checkpoint(out)
                continue
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
        break

    assert kills == 5
    ref, got = final_params(reference, STEPS), final_params(out, STEPS)
    assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)  # bitwise
    ref_adapter = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    got_adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(ref_adapter[k], got_adapter[k]) for k in ref_adapter)
    assert json.loads((out / "adapter" / "llm_meta.json").read_text())["step"] == \
        json.loads((reference / "adapter" / "llm_meta.json").read_text())["step"]


def test_truncated_newest_checkpoint_falls_back_to_the_previous_with_a_warning(tiny_bert_dir, toy_csv, tmp_path,  # noqa: F811
                                                                               caplog):
    from tests.test_meta_train import run

    out = tmp_path / "run"
    run(tiny_overrides(tiny_bert_dir, toy_csv, out, steps=4))
    newest = out / "checkpoints" / "step-0000004" / "params.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    params = {k: torch.zeros_like(v).requires_grad_(True) for k, v in final_params(out, 2).items()}
    optimizer = torch.optim.Adam(params.values())
    with caplog.at_level(logging.WARNING):
        state = load_checkpoint(out, params, optimizer)
    assert state["step"] == 2
    assert "skipping checkpoint step-0000004" in caplog.text and "does not match its checksum" in caplog.text
    expected = final_params(out, 2)
    assert all(torch.equal(params[k].detach(), expected[k]) for k in expected)
    # Every checkpoint corrupt: an error, never a silent restart from scratch.
    second = out / "checkpoints" / "step-0000002" / "state.json"
    second.write_text(second.read_text()[:-5])
    with pytest.raises(CheckpointError, match="every checkpoint is corrupt"):
        load_checkpoint(out, params, optimizer)


def test_adapter_replacement_cut_between_renames_is_read_in_place_then_restored(tiny_bert_dir, tmp_path, caplog):
    from llm_meta.saving.checkpoint import read_metadata

    body = load_body(ModelConfig(name=str(tiny_bert_dir)))
    folder = save_adapter(body, lora_params(body), tmp_path / "adapter", {"step": 0})
    aside = tmp_path / ".adapter.old-123-0badc0de"
    os.replace(folder, aside)  # the state a kill between the two renames leaves
    (tmp_path / "adapter.old").mkdir()  # a user's own folder of that name: never touched
    (tmp_path / "adapter.old" / "notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING):
        assert read_metadata(tmp_path / "adapter")["step"] == 0  # a read renames nothing
    assert "cut off while being replaced" in caplog.text and aside.is_dir() and not folder.exists()
    save_adapter(body, lora_params(body), tmp_path / "adapter", {"step": 1})  # a write restores, then replaces
    assert read_metadata(tmp_path / "adapter")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "adapter.old"]
    assert (tmp_path / "adapter.old" / "notes.txt").read_text() == "mine"


def test_an_atomic_file_or_folder_appears_whole_or_not_at_all(tmp_path):
    # llm_meta.io.atomic: an error inside the block leaves the final name untouched and no temporary
    # behind; a write-once folder that another process finished first is kept, ours dropped.
    from llm_meta.io.atomic import atomic_file, atomic_folder

    final = tmp_path / "scores" / "a.json"
    with atomic_file(final) as tmp:
        tmp.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert final.read_text() == "old" and [p.name for p in final.parent.iterdir()] == ["a.json"]
    with atomic_file(final) as tmp:
        tmp.write_text("new")
    assert final.read_text() == "new"

    folder = tmp_path / "cache" / "model"
    with pytest.raises(RuntimeError), atomic_folder(folder) as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("interrupted unpacking")
    assert not folder.parent.exists() or list(folder.parent.iterdir()) == []
    with atomic_folder(folder) as tmp:
        (tmp / "config.json").write_text("theirs")
    with atomic_folder(folder) as tmp:  # finished by another process meanwhile
        (tmp / "config.json").write_text("ours")
    assert (folder / "config.json").read_text() == "theirs" and list(folder.parent.iterdir()) == [folder]
    # Something in the way that is not a finished folder is an error, and is left as it was.
    (tmp_path / "blocked").write_text("a file in the way")
    with pytest.raises(OSError, match="not a finished folder"), atomic_folder(tmp_path / "blocked") as tmp:
        (tmp / "x").write_text("")
    assert (tmp_path / "blocked").read_text() == "a file in the way"
    half = tmp_path / "half"
    half.mkdir()
    (half / "stray.txt").write_text("left by something else")
    with pytest.raises(OSError, match="not a finished folder"), \
            atomic_folder(half, lambda f: (f / "config.json").is_file()) as tmp:
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in half.iterdir()] == ["stray.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "cache", "half", "scores"]  # no temporaries
