"""Few-shot NER task models: adapt a start to new entity types from K mentions each, then tag text.

    tagger = adapt_tagger(TaggerConfig(data="my_ner.conll", shots=5, adapter="runs/ner_fomaml/adapter"))
    tagger.save("my_tagger")
    FewShotTagger.load("my_tagger").predict(["Paris Hilton flew to Paris"])   # entity spans

The same `adapt` inner loop and folder format as `FewShotClassifier` (PEFT adapter, head,
labels, metadata, checksums); labels are ["O", type, ...]. By default the head is decomposed
(`llm_meta.spans`: detected spans, each typed as a whole); with `inner.ner_head=io` every word is
classified over O and the types (IO).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_meta.adaptation import adapt as adapt_params
from llm_meta.checkpoint import load_adapter_params, read_start
from llm_meta.classifier import load_task_model, save_task_model
from llm_meta.config import to_dict
from llm_meta.core import InnerConfig
from llm_meta.episodes import WordExamples
from llm_meta.hub import HubMixin
from llm_meta.metrics import entity_metrics
from llm_meta.models import Body, ModelConfig, Params, capped, load_body, lora_params, recorded_model_config, \
    start_model_config
from llm_meta.ner import NerEpisodeSampler, Sentence, entity_type, entity_types, io_to_bio, load_ner, report_cut, \
    sentences_fingerprint, tag_words
from llm_meta.tasks import TaskError
from llm_meta.training import environment

log = logging.getLogger(__name__)

TAGGER_FORMAT = "llm_meta.tagger/1"


@dataclass
class TaggerConfig:
    """Config of `llm-meta adapt --ner` (and of `adapt_tagger`)."""

    data: str | None = None  # wnut16, a CoNLL file, a .jsonl/.parquet with tokens/ner_tags, hf:<id>
    adapter: str | None = None  # an llm_meta adapter folder (e.g. from ner_fomaml.yaml); None: untrained LoRA
    shots: int = 5  # K: mentions per entity type in the support set (Few-NERD's K~2K sampling)
    types: list[str] = field(default_factory=list)  # entity types to learn; empty: every type of the data
    seed: int = 0
    model: ModelConfig = field(default_factory=lambda: ModelConfig(max_length=128))  # when adapter is None
    # Decomposed head (span detection, then typing; llm_meta.spans): on held-out WNUT-16 types it
    # scored several times the IO head's entity F1 (experiments/BENCHMARKS.md, "Few-shot NER: silver corpus and
    # decomposed heads"); `inner.ner_head=io` gives the IO head. Each entity-type name joins the
    # support set twice as a sentence of its type: +5.2 micro F1 at K = 5 and +5.9 at K = 1 from the
    # untrained start with these 15 steps (experiments/BENCHMARKS.md, "Entity-type names by default");
    # `inner.label_examples=0` turns it off.
    inner: InnerConfig = field(default_factory=lambda: InnerConfig(steps=15, lr=1e-3, ner_head="decomposed",
                                                                   label_examples=2))


@dataclass
class FewShotTagger(HubMixin):
    body: Body
    params: Params  # LoRA + head tensors
    labels: list[str]  # ["O", type, ...]
    scale: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def tag(self, sentences: list[list[str]]) -> list[list[int]]:
        """Class id per word (0 = O); words past max_length are tagged O (align_words warns)."""
        return tag_words(self.body, self.params, sentences, self.scale)

    def predict(self, texts: list[str], first_row: int = 1) -> list[list[dict[str, Any]]]:
        """Entity spans of each text (split into words on whitespace): word start/end (exclusive), type,
        text. Words past `model.max_length` tokens are not tagged, and a warning names them (by row,
        counted from `first_row`)."""
        sentences = [t.split() for t in capped(self.body, texts)[0]]  # characters past the window never read
        report_cut(self.body, sentences, role="tag", first_row=first_row)
        spans = []
        for words, ys in zip(sentences, self.tag(sentences)):
            found, i = [], 0
            while i < len(ys):  # a run of one type is one entity (IO)
                j = i + 1
                while j < len(ys) and ys[j] == ys[i]:
                    j += 1
                if ys[i] != 0:
                    found.append({"start": i, "end": j, "type": self.labels[ys[i]], "text": " ".join(words[i:j])})
                i = j
            spans.append(found)
        return spans

    def evaluate(self, data: str | list[Sentence]) -> dict[str, Any]:
        """Entity precision/recall/F1 (seqeval through `evaluate`) on every sentence of `data`;
        entities of types this model does not know count as O in the references."""
        sentences = load_ner(data) if isinstance(data, str) else data
        index = {t: y for y, t in enumerate(self.labels)}
        refs = [[index.get(entity_type(t), 0) for t in s.tags] for s in sentences]
        report_cut(self.body, [s.tokens for s in sentences], refs, self.labels, role="score")
        preds = self.tag([s.tokens for s in sentences])
        unknown = sorted(set(entity_types(sentences)) - set(self.labels))
        metrics = entity_metrics([io_to_bio(p, self.labels) for p in preds], [io_to_bio(r, self.labels) for r in refs])
        return {"sentences": len(sentences), **metrics, "types_ignored": unknown}

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the tagger folder atomically; see `FewShotClassifier.save` for what is refused."""
        return save_task_model(self.body, self.params, self.labels, self.scale, self.metadata, TAGGER_FORMAT, folder,
                               overwrite=overwrite)

    @classmethod
    def load(cls, folder: str | Path, trust_remote_code: bool = False) -> "FewShotTagger":
        """Load a tagger folder (verified as `FewShotClassifier.load` verifies a classifier's)."""
        return cls(*load_task_model(folder, TAGGER_FORMAT, "an NER task model (make one with `llm-meta adapt --ner`)",
                                    trust_remote_code)[:5])


def support_sentences(sentences: list[Sentence], cfg: TaggerConfig) -> tuple[WordExamples, list[str]]:
    """The support set `adapt_tagger` learns from: Few-NERD's K~2K sampler over `cfg.types` (every
    type of `sentences` when empty), seeded by `cfg.seed`; and the labels ["O", type, ...] its IO
    class ids index."""
    types = cfg.types or entity_types(sentences)
    sampler = NerEpisodeSampler(sentences, types, len(types), cfg.shots, 0, seed=cfg.seed, name=str(cfg.data))
    return sampler.episode(0).support, ["O", *sorted(types)]


def adapt_tagger(cfg: TaggerConfig, trust_remote_code: bool = False, progress: bool = False) -> FewShotTagger:
    """Adapt a start to the entity types of `cfg.data` from a K~2K-mention support set.
    `trust_remote_code`: as for `llm_meta.adapt` (the caller's choice only)."""
    start_time = time.perf_counter()
    if cfg.data is None:
        raise ValueError("give the NER data to draw the support set from (--task or data=)")
    if cfg.adapter is not None:
        meta = read_start(cfg.adapter)
        cfg.model = start_model_config(recorded_model_config(meta["config"]["model"]), cfg.model,
                                       TaggerConfig().model, cfg.adapter)
    if cfg.shots < 1:
        raise TaskError(f"K (--shots; Python: shots=) must be at least 1 mention per entity type, got {cfg.shots}")
    sentences = load_ner(cfg.data)
    support, labels = support_sentences(sentences, cfg)
    types = labels[1:]
    if support.texts == []:
        raise TaskError(f"{cfg.data}: no support sentences for types {types}")
    load_start = time.perf_counter()
    body = load_body(cfg.model, seed=cfg.seed, trust_remote_code=trust_remote_code)
    params = lora_params(body) if cfg.adapter is None else load_adapter_params(body, cfg.adapter)
    model_load = round(time.perf_counter() - load_start, 3)
    report_cut(body, support.texts, support.labels, labels, role="train")
    fast = adapt_params(body, params, support, len(labels), cfg.inner, seed=cfg.seed, label_names=labels,
                        progress=progress)
    meta = {"base_model": cfg.model.name, "model": to_dict(cfg.model), "start": cfg.adapter or "untrained",
            "task": str(cfg.data), "task_hash": sentences_fingerprint(sentences), "support_size": len(support),
            "adapt_config": to_dict(cfg), "adapt_seconds": round(time.perf_counter() - start_time, 2),
            "adapt_timings": {"model_load": model_load}, "environment": environment()}
    log.info("adapted to %d entity types from %d support sentences in %.1f s", len(types), len(support),
             meta["adapt_seconds"])
    return FewShotTagger(body, fast, labels, cfg.inner.scale, meta)
