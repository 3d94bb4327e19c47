"""The meta-training recipe end to end on a tiny model: outputs, processes, resume, divergence."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_meta.saving.checkpoint import CheckpointError, verify_folder
from llm_meta.config import load_config
import llm_meta
from llm_meta import meta_training as meta_train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def toy_csv(tmp_path_factory) -> Path:
    topics = ["card payment", "music playlist", "weather forecast", "restaurant booking", "flight ticket", "alarm clock"]
    rows = [f"{topic} request number {i} please,{topic.split()[0]}" for topic in topics for i in range(12)]
    f = tmp_path_factory.mktemp("data") / "toy.csv"
    f.write_text("text,label\n" + "\n".join(rows) + "\n")
    return f


def tiny_overrides(model_dir: Path, data: Path, out: Path, steps: int = 4, **extra: str) -> list[str]:
    overrides = {
        "model.name": str(model_dir), "tasks": f"[{data}]", "output_dir": str(out),
        "episodes.n_way": 3, "episodes.k_shot": 2, "episodes.q_query": 2,
        "inner.steps": 2, "inner.lr": 0.01, "adapt.steps": 2, "outer.steps": steps, "outer.meta_batch": 2,
        "outer.lr": 0.01, "outer.warmup": 0, "outer.schedule": "constant", "outer.proximal": 0.0,
        "interpolation": "[1.0]", "adapt.label_examples": 0, "validate_every": 2,
        "validation.tasks": f"[{data}]", "validation.class_role": "null", "validation.episodes": 2,
        "validation.n_way": 3, "validation.k_shot": 2, "validation.q_query": 2,
        "test.tasks": f"[{data}]", "test.episodes": 0, "test.split": "train", "test.n_way": 3, "test.k_shot": 2, "test.q_query": 2, **extra,
    }
    return [f"{k}={v}" for k, v in overrides.items()]


def run(overrides: list[str], resume: bool = False, force: bool = False) -> dict:
    # The public Python entry, as a user calls it: a config file and command-line-style overrides.
    return llm_meta.meta_train(ROOT / "recipes/configs/meta_train.yaml", *overrides, resume=resume, force=force)


def final_params(out: Path, step: int) -> dict:
    return load_file(str(out / "checkpoints" / f"step-{step:07d}" / "params.safetensors"))


def test_run_writes_peft_adapter_and_metadata(tiny_bert_dir, toy_csv, tmp_path, capsys):
    out = tmp_path / "run"
    held_out = tmp_path / "held_out.csv"  # a test task must not be a training or validation task
    held_out.write_text(toy_csv.read_text())
    with pytest.raises(ValueError, match=r"held-out task '.*toy.csv' \(test.tasks\) is also read by meta-training"):
        run(tiny_overrides(tiny_bert_dir, toy_csv, out, **{"test.episodes": 2}))
    results = run(tiny_overrides(tiny_bert_dir, toy_csv, out, **{"test.episodes": 2, "test.tasks": f"[{held_out}]"}))
    assert [h["step"] for h in results["validation"]] == [0, 2, 4]
    assert set(results["test"]) == {"held_out"}
    # the run ends by saying where the adapter is and what selection kept, then one table of the
    # held-out test, what it means in a plain line, and the next command
    err = capsys.readouterr().err.strip().splitlines()
    done = next(i for i, line in enumerate(err) if line.startswith("done in "))
    closing = err[done:]
    assert f"adapter in {out / 'adapter'}" in closing[0] and "at step 0" in closing[0]
    assert closing[2] == "| held-out task | untrained start | meta-learned start | difference (95% interval) |"
    row = results["test"]["held_out"]
    assert closing[4].startswith("| held_out (2 episodes) | ") and f"{100 * row['difference']['mean']:+.1f}" in closing[4]
    assert closing[-2].startswith("The meta-learned start ")
    assert closing[-1] == f"Next: llm-meta adapt --adapter {out / 'adapter'} --support your_examples.csv --output my_model"
    verify_folder(out / "adapter")
    assert results["adapter"] == str(out / "adapter")
    meta = json.loads((out / "adapter" / "llm_meta.json").read_text())
    assert meta["algorithm"] == "fomaml" and meta["step"] == results["best_step"]
    assert meta["base_model"] == str(tiny_bert_dir) and "toy" in meta["tasks"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "step" for r in log) == 4
    # A fresh process with plain peft loads the adapter.
    code = ("import sys; from transformers import AutoModel; from peft import PeftModel;"
            "m = PeftModel.from_pretrained(AutoModel.from_pretrained(sys.argv[1]), sys.argv[2]);"
            "print(sum(p.numel() for n, p in m.named_parameters() if 'lora_' in n))")
    done = subprocess.run([sys.executable, "-c", code, str(tiny_bert_dir), str(out / "adapter")],
                          capture_output=True, text=True, check=True)
    assert int(done.stdout.strip()) > 0


def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(tiny_bert_dir, toy_csv, tmp_path):
    run(tiny_overrides(tiny_bert_dir, toy_csv, tmp_path / "full", steps=4))
    run(tiny_overrides(tiny_bert_dir, toy_csv, tmp_path / "cut", steps=2))  # "interrupted" after step 2
    with pytest.raises(CheckpointError, match=r"another config \(outer.steps: 2 -> 4\).*--force"):
        run(tiny_overrides(tiny_bert_dir, toy_csv, tmp_path / "cut", steps=4), resume=True)
    run(tiny_overrides(tiny_bert_dir, toy_csv, tmp_path / "cut", steps=4), resume=True, force=True)
    forced = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
              if '"resume_forced"' in line]
    assert forced[0]["differences"] == ["outer.steps: 2 -> 4"]  # the accepted change is on record
    full, resumed = final_params(tmp_path / "full", 4), final_params(tmp_path / "cut", 4)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert any(not torch.equal(full[k], final_params(tmp_path / "full", 2)[k]) for k in full)


def test_nan_stops_with_clear_error_and_keeps_checkpoint(tiny_bert_dir, toy_csv, tmp_path):
    out = tmp_path / "run"
    run(tiny_overrides(tiny_bert_dir, toy_csv, out, steps=2))
    ckpt = out / "checkpoints" / "step-0000002"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    with pytest.raises(FloatingPointError, match="diverged at step 2.*last good checkpoint.*is intact"):
        run(tiny_overrides(tiny_bert_dir, toy_csv, out, steps=4, **{"inner.optimizer": "sgd", "inner.lr": "1e30"}),
            resume=True, force=True)
    verify_folder(ckpt)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert (out / "checkpoints" / "latest").read_text() == "step-0000002"


def test_two_processes_match_one(tiny_bert_dir, toy_csv, tmp_path):
    """The meta-batch split over 2 CPU processes gives the meta-parameters of 1 process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    outs = {}
    for procs in (1, 2):
        outs[procs] = tmp_path / f"p{procs}"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(procs), "--cpu",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(ROOT / "recipes/meta_train.py"), "--config", str(ROOT / "recipes/configs/meta_train.yaml"),
               *tiny_overrides(tiny_bert_dir, toy_csv, outs[procs], steps=2)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = final_params(outs[1], 2), final_params(outs[2], 2)
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-6), k
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in one.items() if "lora_B" in k)


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "protonet"])
def test_every_algorithm_trains_and_saves_a_loadable_adapter(algorithm, tiny_bert_dir, toy_csv, tmp_path, caplog):
    from llm_meta.saving.checkpoint import RATES_FILE, load_adapter_params
    from llm_meta.meta.core import LR_PREFIX
    from llm_meta.modeling.body import ModelConfig
    from llm_meta.modeling.loading import load_body

    out = tmp_path / algorithm
    results = run(tiny_overrides(tiny_bert_dir, toy_csv, out, steps=2, algorithm=algorithm, **{"outer.lr": 0.05}))
    trained = final_params(out, 2)
    assert any("lora_B" in k and trained[k].abs().sum() > 0 for k in trained)  # the meta-parameters moved
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert [h["step"] for h in results["validation"]] == [0, 2]
    body = load_body(ModelConfig(name=str(tiny_bert_dir)))
    loaded = load_adapter_params(body, out / "adapter")
    rates = {k: v for k, v in trained.items() if k.startswith(LR_PREFIX)}
    if algorithm == "metasgd":
        # One learned rate per LoRA tensor and head tensor (stored as its log), meta-trained away from
        # inner.lr = 0.01; the adapter's file holds the rates themselves and loads back to them.
        assert len(rates) == len(body.lora_names) + 2
        assert any(abs(v.exp().item() - 0.01) > 1e-4 for v in rates.values())
        assert (out / "adapter" / RATES_FILE).is_file()  # (at step 0 every rate is inner.lr)
        from safetensors.torch import load_file, save_file

        saved = load_file(str(out / "adapter" / RATES_FILE))
        assert all((v > 0).all() for v in saved.values())
        assert {LR_PREFIX + k for k in saved} == set(rates)  # (the adapter is the kept step, maybe 0)
        for k, v in saved.items():
            torch.testing.assert_close(loaded[LR_PREFIX + k].exp(), v)
        # A rates file of the earlier format (rates that scaled Adam's step, no mark) is refused.
        from llm_meta.saving.checkpoint import MANIFEST, CheckpointError, _sha256

        old = tmp_path / "old-adapter"
        shutil.copytree(out / "adapter", old)
        save_file(saved, str(old / RATES_FILE))
        manifest = json.loads((old / MANIFEST).read_text())
        (old / MANIFEST).write_text(json.dumps({**manifest, RATES_FILE: _sha256(old / RATES_FILE)}))
        with pytest.raises(CheckpointError, match="earlier llm_meta"):
            load_adapter_params(body, old)
        # adapting with another step count than the rates were learned for is allowed, with a warning
        import logging

        import llm_meta
        from llm_meta.meta.core import InnerConfig
        from llm_meta.classifier import AdaptConfig

        with caplog.at_level(logging.WARNING):
            llm_meta.adapt(adapter=out / "adapter", task=str(toy_csv), shots=2, cfg=AdaptConfig(inner=InnerConfig(steps=3)))
        assert "meta-trained for 2 inner steps; adapting with 3" in caplog.text
    else:
        assert not rates and not (out / "adapter" / RATES_FILE).exists()
    assert set(loaded) - set(body.lora_names) <= {k for k in rates}


def test_same_config_and_seed_give_the_same_adapter_and_traceable_metadata(tiny_bert_dir, toy_csv, tmp_path):
    for name in ("a", "b"):
        run(tiny_overrides(tiny_bert_dir, toy_csv, tmp_path / name, steps=2))
    a, b = (load_file(str(tmp_path / n / "adapter" / "adapter_model.safetensors")) for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pa, pb = final_params(tmp_path / "a", 2), final_params(tmp_path / "b", 2)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    meta = json.loads((tmp_path / "a" / "adapter" / "llm_meta.json").read_text())
    assert meta["config"]["seed"] == 0
    assert {"torch", "transformers", "peft", "accelerate", "datasets"} <= set(meta["environment"]["packages"])
    assert len(meta["tasks"]["toy"]) >= 16  # a hash of the task data
    run(tiny_overrides(tiny_bert_dir, toy_csv, tmp_path / "c", steps=2, seed=1))
    pc = final_params(tmp_path / "c", 2)
    assert pc.keys() == pa.keys() and not all(torch.equal(pa[k], pc[k]) for k in pa)  # the seed matters
