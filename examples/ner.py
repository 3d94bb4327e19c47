"""Few-shot NER: a tagger for entity types from K mentions each, then entity spans.

    .venv/bin/python examples/ner.py [--model all-MiniLM-L6-v2]

The support set is drawn from a CoNLL file (here the bundled WNUT-16 tweets, `wnut16`; give your
own file's path instead) with Few-NERD's sampler: K to 2K mentions of each type.
"""

import argparse

from llm_meta import ModelConfig
from llm_meta.data.conll import load_ner
from llm_meta.tagger import TaggerConfig, adapt_tagger

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="all-MiniLM-L6-v2")
args = parser.parse_args()

cfg = TaggerConfig(data="wnut16", types=["person", "geo-loc"], shots=5, model=ModelConfig(name=args.model,
                                                                                            max_length=128))
tagger = adapt_tagger(cfg)  # untrained start, type names as examples, 15 steps
print(tagger.predict(["Paris Hilton flew to Paris"]))  # [[{"start", "end", "type", "text"}, ...]]
print(tagger.evaluate(load_ner("wnut16")[:200])["f1"])  # entity F1 (texts it may have seen: a check, not a score)
