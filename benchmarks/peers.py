"""SetFit side by side with the quality suite: the same body, the same support draws, the same test
texts, SetFit's own default recipe.

    pip install "llm_meta[peers]"     # setfit
    .venv/bin/python benchmarks/peers.py [--bodies minilm,mpnet] [--shots 8] [--draws 5] [--max-steps 500]

For each task of `benchmarks/quality.py` (`SUITE`), K and draw d: the support set `llm_meta.adapt`
draws with seed d (`llm_meta.data.episodes.support_set`, so both tools see the same examples), then
SetFit (Tunstall et al. 2022) as its README trains it: `SetFitModel.from_pretrained(body)` with its
default logistic-regression head, `Trainer` with `TrainingArguments()` at its defaults (contrastive
pairs by oversampling, 1 epoch, batch 16, body lr 2e-5). Pair generation grows with the square of
the support set: where it would exceed `--max-steps` steps, training stops there, as SetFit's
docs advise for large support sets (`max_steps`); the table marks such rows. Seconds are SetFit's
training wall time (model load excluded). Results join `benchmarks/results/quality.json` under the
variants `setfit_minilm` / `setfit_mpnet`, and `quality.py`'s table prints them next to `adapt`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from quality import NER_TASKS, ROOT, SUITE, run_draws, scored, table, test_sample  # benchmarks/quality.py, beside this script

from llm_meta.data.episodes import support_set
from llm_meta.modeling.model_files import resolve_model_path
from llm_meta.data.tasks import load_task

BODIES = {"minilm": "all-MiniLM-L6-v2", "mpnet": "all-mpnet-base-v2"}


def setfit_run(body: str, texts: list[str], labels: list[str], test_texts: list[str], test_labels: list[str],
               max_steps: int, seed: int) -> dict[str, Any]:
    """Train SetFit on (texts, labels) with its defaults (steps capped at `max_steps`) and score it."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from setfit.sampler import ContrastiveDataset

    model = SetFitModel.from_pretrained(resolve_model_path(body))
    # The steps SetFit takes at its defaults: its own pair sampler's length over its batch size (one
    # epoch). Only above `max_steps` is training cut; passing max_steps below that would instead
    # make the Trainer run that many steps, many epochs over a small support set.
    defaults = TrainingArguments()
    pairs = len(ContrastiveDataset(texts, labels, multilabel=False, sampling_strategy=defaults.sampling_strategy))
    full_steps = -(-pairs // defaults.embedding_batch_size)
    scratch = tempfile.mkdtemp(prefix="setfit-")  # its checkpoints (default: ./checkpoints) go there, not here
    args = TrainingArguments(max_steps=max_steps if full_steps > max_steps else -1, seed=seed, output_dir=scratch)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": labels}))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    shutil.rmtree(scratch, ignore_errors=True)
    predicted = [str(p) for p in model.predict(test_texts, as_numpy=True)]
    return {**scored(predicted, test_labels), "adapt_seconds": round(seconds, 2), "steps": min(full_steps, max_steps), "uncapped_steps": full_steps,
            "capped": full_steps > max_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(SUITE))
    parser.add_argument("--bodies", default="minilm")
    parser.add_argument("--shots", type=int, nargs="+", default=[8])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/quality.json"))
    args = parser.parse_args()
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    variants = []
    for body in args.bodies.split(","):
        variant = f"setfit_{body}"
        variants.append(variant)
        for name in args.tasks.split(","):
            registry_name, kind, overrides = SUITE[name]
            if overrides.get("max_length") or name in NER_TASKS:  # SetFit: no NER; it reads its own max_seq_length
                continue
            task = load_task(registry_name)
            test_texts, test_labels = test_sample(task)
            for shots in args.shots:
                def one(draw: int) -> dict[str, Any]:
                    support, label_names = support_set(task, shots, "train", draw)
                    return setfit_run(BODIES[body], support.texts, [label_names[y] for y in support.labels],
                                      test_texts, test_labels, args.max_steps, draw)

                entry = {"task": name, "kind": kind, "shots": shots, "variant": variant, "test_texts": len(test_texts)}
                run_draws(results, out_path, f"{name}/K{shots}/{variant}", entry, one, args.draws,
                          lambda r: f"accuracy {100 * r['accuracy']:.1f}, {r['adapt_seconds']:.1f} s"
                                    + (" (steps capped)" if r["capped"] else ""))
    table(results, ["default", *variants])


if __name__ == "__main__":
    main()
