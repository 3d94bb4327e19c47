"""Few-shot NER task models: adapt a start to new entity types from a few tagged sentences, then tag text.

    tagger = FewShotTagger.from_pretrained("all-MiniLM-L6-v2")       # or a meta-trained adapter folder
    tagger.fit([["Ada", "lives", "in", "Paris"]], [["B-person", "O", "O", "B-city"]])  # or a Dataset, frame, CoNLL file
    tagger.predict(["Paris Hilton flew to Paris"])   # [[{"start": 0, "end": 2, "type": "person", "text": ...}, ...]]
    tagger.save_pretrained("my_tagger"); FewShotTagger.from_pretrained("my_tagger")
    tagger = adapt_tagger(TaggerConfig(data="my_ner.conll", shots=5))  # K~2K mentions per type drawn from a file

The same `adapt` inner loop and folder format as `FewShotClassifier` (PEFT adapter, head,
labels, metadata, checksums); labels are ["O", type, ...]. By default the head is decomposed
(`llm_meta.meta.spans`: detected spans, each typed as a whole); with `inner.ner_head=io` every word is
classified over O and the types (IO).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from llm_meta.config import from_dict, to_dict
from llm_meta.data.conll import Sentence, as_sentences, entity_type, entity_types, sentences_fingerprint
from llm_meta.data.episodes import WordExamples
from llm_meta.data.kinds import TOKEN
from llm_meta.data.ner import NerEpisodeSampler, io_to_bio, load_ner, word_examples
from llm_meta.data.tasks import IN_MEMORY, TaskError, mapped_columns
from llm_meta.eval.metrics import entity_metrics
from llm_meta.meta.adaptation import adapt as adapt_params
from llm_meta.meta.core import InnerConfig
from llm_meta.meta.token_heads import tag_words
from llm_meta.meta.training import environment
from llm_meta.modeling.body import Body, ModelConfig, Params, lora_params
from llm_meta.modeling.forward import capped
from llm_meta.modeling.loading import load_body, recorded_model_config, start_model_config
from llm_meta.modeling.words import report_cut
from llm_meta.saving.checkpoint import load_adapter_params, read_start
from llm_meta.start_choice import AUTO, built_candidates, choose
from llm_meta.task_model import PretrainedMixin, load_task_model, save_task_model

log = logging.getLogger(__name__)

TAGGER_FORMAT = TOKEN.folder_format


@dataclass
class TaggerConfig:
    """Config of `llm-meta adapt --ner` (and of `adapt_tagger`)."""

    data: str | None = None  # wnut16, a CoNLL file, a .jsonl/.parquet/.csv with token and tag columns, hf:<id>
    tokens_column: str = "tokens"  # of a dataset file (a CSV cell holds the words split by spaces)
    tags_column: str = "ner_tags"
    # an llm_meta adapter folder (e.g. from ner_fomaml.yaml); None: untrained LoRA; "auto": the untrained
    # start or an NER start built on this machine (`llm-meta starts build ner`) for this body, whichever
    # fits the support set's words best before any step (start_choice.choose; an NER start records no
    # entity-type family, so the leave-one-out fit decides)
    adapter: str | None = None
    shots: int = 5  # K: mentions per entity type in the support set (Few-NERD's K~2K sampling)
    types: list[str] = field(default_factory=list)  # entity types to learn; empty: every type of the data
    seed: int = 0
    model: ModelConfig = field(default_factory=lambda: ModelConfig(max_length=128))  # when adapter is None
    # Decomposed head (span detection, then typing; llm_meta.meta.spans): on held-out WNUT-16 types it
    # scored several times the IO head's entity F1 (experiments/BENCHMARKS.md, "Few-shot NER: silver corpus and
    # decomposed heads"); `inner.ner_head=io` gives the IO head. Each entity-type name joins the
    # support set twice as a sentence of its type: +5.2 micro F1 at K = 5 and +5.9 at K = 1 from the
    # untrained start with these 15 steps (experiments/BENCHMARKS.md, "Entity-type names by default");
    # `inner.label_examples=0` turns it off.
    inner: InnerConfig = field(default_factory=lambda: InnerConfig(steps=15, lr=1e-3, ner_head="decomposed",
                                                                   label_examples=2))


@dataclass
class FewShotTagger(PretrainedMixin):
    """An adapted NER model: body with adapted LoRA, a head, and its labels ["O", type, ...]; or,
    from `from_pretrained` of a body or a meta-trained adapter, a start (body None) that `fit` adapts."""

    body: Body
    params: Params  # LoRA + head tensors
    labels: list[str]  # ["O", type, ...]
    scale: float
    metadata: dict[str, Any] = field(default_factory=dict)
    fit_config: TaggerConfig | None = None  # a start's adaptation, until `fit`
    trust_remote_code: bool = False  # the caller's choice, kept for `fit`
    config_class: ClassVar[type] = TaggerConfig  # from_pretrained (PretrainedMixin): a start's adaptation

    def fit(self, sentences: Any, tags: Sequence[Sequence[str]] | None = None, tokens_column: str = "tokens",
            tags_column: str = "ner_tags", progress: bool = False, column_mapping: dict[str, str] | None = None
            ) -> "FewShotTagger":
        """Adapt to these tagged sentences, every one of them in the support set, and return self,
        ready to predict. `sentences`: word lists (or texts split on whitespace) with `tags` (one BIO
        or IO tag per word), or a `datasets.Dataset`, a pandas DataFrame or a file with
        `tokens_column`/`tags_column` (or `column_mapping={"words": "tokens", "labels": "tags"}`), or a
        CoNLL file (`llm_meta.data.conll.as_sentences`). The entity types are the data's (or `cfg.types`).

        Raises:
            TaskError, ColumnError: no entity tags, tag counts that differ from word counts, a missing column.
        """
        cfg = self.fit_config
        if cfg is None:  # an adapted tagger: its own start and adaptation, as recorded
            cfg = from_dict(TaggerConfig, self.metadata.get("adapt_config", {}))
        columns = mapped_columns(column_mapping, {"tokens": tokens_column, "tags": tags_column})
        data = as_sentences(sentences, tags, columns["tokens"], columns["tags"])
        fitted = adapt_tagger(dataclasses.replace(cfg, data=None), self.trust_remote_code, progress, support=data)
        self.body, self.params, self.labels, self.scale = fitted.body, fitted.params, fitted.labels, fitted.scale
        self.metadata, self.fit_config = fitted.metadata, cfg
        return self

    def tag(self, sentences: list[list[str]]) -> list[list[int]]:
        """Class id per word (0 = O); words past max_length are tagged O (align_words warns)."""
        return tag_words(self.body, self.params, sentences, self.scale)

    def predict(self, texts: Sequence[str] | Sequence[Sequence[str]], first_row: int = 1) -> list[list[dict[str, Any]]]:
        """Entity spans of each text (a string, split into words on whitespace, or a word list): word
        start/end (exclusive), type, text. Words past `model.max_length` tokens are not tagged, and a
        warning names them (by row, counted from `first_row`).

        Raises:
            ValueError: a start that has not been fitted yet.
        """
        if self.body is None:
            raise ValueError("this tagger is a start, not yet adapted: call fit(sentences, tags) first")
        if isinstance(texts, str):  # a string is a sequence too: it would be tagged character by character
            raise TypeError("predict takes a list of texts (or of word lists), not one string: predict([text])")
        texts = list(texts)
        if not texts:
            return []
        sentences = [list(t) if not isinstance(t, str) else t for t in texts]
        strings = [t for t in sentences if isinstance(t, str)]
        cut = iter(capped(self.body, strings)[0])  # characters past the window never read
        sentences = [next(cut).split() if isinstance(t, str) else [str(w) for w in t] for t in sentences]
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

    def evaluate(self, data: Any, tags: Sequence[Sequence[str]] | None = None, tokens_column: str = "tokens",
                 tags_column: str = "ner_tags") -> dict[str, Any]:
        """Entity precision/recall/F1 (seqeval through `evaluate`) on every sentence of `data` (what
        `fit` reads: word lists with `tags`, a Dataset, a frame, a file); entities of types this
        model does not know count as O in the references.

        Raises:
            ValueError: a start that has not been fitted yet. TaskError, ColumnError: as for `fit`.
        """
        if self.body is None:
            raise ValueError("this tagger is a start, not yet adapted: call fit(sentences, tags) first")
        sentences = as_sentences(data, tags, tokens_column, tags_column)
        index = {t: y for y, t in enumerate(self.labels)}
        refs = [[index.get(entity_type(t), 0) for t in s.tags] for s in sentences]
        report_cut(self.body, [s.tokens for s in sentences], refs, self.labels, role="score")
        preds = self.tag([s.tokens for s in sentences])
        unknown = sorted(set(entity_types(sentences)) - set(self.labels))
        metrics = entity_metrics([io_to_bio(p, self.labels) for p in preds], [io_to_bio(r, self.labels) for r in refs])
        return {"sentences": len(sentences), **metrics, "types_ignored": unknown}

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the tagger folder atomically; see `FewShotClassifier.save` for what is refused."""
        if self.body is None:
            raise ValueError("this tagger is a start, not yet adapted: call fit(sentences, tags) before saving it")
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


def adapt_tagger(cfg: TaggerConfig, trust_remote_code: bool = False, progress: bool = False,
                 support: list[Sentence] | None = None) -> FewShotTagger:
    """Adapt a start to new entity types: to every sentence of `support` when given (what
    `FewShotTagger.fit` does), else to a K~2K-mention support set drawn from `cfg.data`.
    `cfg` is not changed. `trust_remote_code`: as for `llm_meta.adapt` (the caller's choice only).

    Raises:
        ValueError: neither `support` nor `cfg.data`. TaskError: K below 1, types absent from the data,
            no support sentences.
    """
    start_time = time.perf_counter()
    cfg = dataclasses.replace(cfg)
    if support is None and cfg.data is None:
        raise ValueError("give the NER data to draw the support set from (--task or data=)")
    if cfg.adapter not in (None, AUTO):
        meta = read_start(cfg.adapter)
        cfg.model = start_model_config(recorded_model_config(meta["config"]["model"]), cfg.model,
                                       TaggerConfig().model, cfg.adapter)
    if support is None:
        if cfg.shots < 1:
            raise TaskError(f"K (--shots; Python: shots=) must be at least 1 mention per entity type, got {cfg.shots}")
        sentences = load_ner(cfg.data, cfg.tokens_column, cfg.tags_column)
        examples, labels = support_sentences(sentences, cfg)
    else:
        sentences = support
        types = cfg.types or entity_types(sentences)
        missing = sorted(set(types) - set(entity_types(sentences)))
        if missing:
            raise TaskError(f"entity type(s) {missing} do not occur in the sentences given (they have: "
                            f"{entity_types(sentences)})")
        examples, labels = word_examples(sentences, sorted(types)), ["O", *sorted(types)]
    types = labels[1:]
    if examples.texts == []:
        raise TaskError(f"{cfg.data}: no support sentences for types {types}")
    load_start = time.perf_counter()
    timings: dict[str, float] = {}
    chosen, selection, inner, model = cfg.adapter or "untrained", None, cfg.inner, cfg.model
    if cfg.adapter == AUTO:  # the untrained tagger, then every NER start built on this machine for this body
        candidates = built_candidates(cfg.model, TaggerConfig().model, cfg.seed, trust_remote_code, kind=TOKEN)
        timings["model_load"] = round(time.perf_counter() - load_start, 3)
        choice = choose(candidates, examples, labels, cfg.inner)
        cand, inner, selection = choice.candidate, choice.inner, choice.record
        body, params, model, chosen = cand.body, cand.params, cand.model, cand.adapter or cand.name
        if selection:
            timings["start_selection"] = round(time.perf_counter() - load_start - timings["model_load"], 3)
    else:
        body = load_body(cfg.model, seed=cfg.seed, trust_remote_code=trust_remote_code)
        params = lora_params(body) if cfg.adapter is None else load_adapter_params(body, cfg.adapter)
        timings["model_load"] = round(time.perf_counter() - load_start, 3)
    report_cut(body, examples.texts, examples.labels, labels, role="train")
    fast = adapt_params(body, params, examples, len(labels), inner, seed=cfg.seed, label_names=labels,
                        progress=progress)
    meta = {"base_model": model.name, "model": to_dict(model), "start": chosen, "start_selection": selection,
            "task": str(cfg.data) if support is None else IN_MEMORY,
            "task_hash": sentences_fingerprint(sentences), "support_size": len(examples),
            "adapt_config": to_dict(cfg), "adapt_seconds": round(time.perf_counter() - start_time, 2),
            "adapt_timings": timings, "environment": environment()}
    log.info("adapted to %d entity types from %d support sentences in %.1f s", len(types), len(examples),
             meta["adapt_seconds"])
    return FewShotTagger(body, fast, labels, cfg.inner.scale, meta)
