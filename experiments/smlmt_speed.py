"""SMLMT sampling throughput: index build time and episodes per second from a 100k-sentence corpus.

    .venv/bin/python experiments/smlmt_speed.py [--sentences 100000] [--episodes 5000]

The corpus is real text from the bundled packages: every split of every registered task (long
DBpedia/Yahoo texts cut into sentences) plus the WNUT-16 tweets, de-duplicated, first
`--sentences` of them. Times: building the word -> sentences index with the MiniLM tokenizer
(cold, no cache), reading the cached index, and sampling 5-way 5-shot 5-query episodes at text
level (words chosen, sentences drawn, words masked; tokenisation is not included).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer  # noqa: E402

from llm_meta.modeling.model_files import resolve_model_path  # noqa: E402
from llm_meta.data.smlmt import SmlmtSampler, load_corpus  # noqa: E402
from llm_meta.data.registry import load_registry  # noqa: E402
from llm_meta.data.tasks import load_task  # noqa: E402


def real_sentences(limit: int) -> list[str]:
    sentences: list[str] = []
    for name in load_registry():
        task = load_task(name)
        for split in task.splits.values():
            for text in split["text"]:
                sentences += re.split(r"(?<=[.!?])\s+", text)
    sentences += load_corpus("wnut16")
    unique = list(dict.fromkeys(s.strip() for s in sentences if len(s.split()) >= 3))
    if len(unique) < limit:
        raise SystemExit(f"only {len(unique)} sentences available, asked for {limit}")
    return unique[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=100_000)
    parser.add_argument("--episodes", type=int, default=5000)
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--k-shot", type=int, default=5)
    parser.add_argument("--q-query", type=int, default=5)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    corpus = real_sentences(args.sentences)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        sampler = SmlmtSampler.build(corpus, "bench", tokenizer, args.n_way, args.k_shot, args.q_query,
                                     cache=Path(cache))
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        SmlmtSampler.build(corpus, "bench", tokenizer, args.n_way, args.k_shot, args.q_query, cache=Path(cache))
        cached = time.perf_counter() - t0
    sampler.episode(0)  # warm the regex cache the way a long run would be
    t0 = time.perf_counter()
    episodes = sampler.episodes(args.episodes, start=1)
    sample = time.perf_counter() - t0
    words = sum(len(t.split()) for t in corpus) / len(corpus)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one process")
    print(f"corpus: {len(corpus)} real sentences (mean {words:.1f} words), {len(sampler.words)} eligible words "
          f"(in >= K+Q={args.k_shot + args.q_query} sentences, not stop words, one MiniLM token)")
    print("| step | time |")
    print("|---|---|")
    print(f"| build index (cold) | {build:.2f} s |")
    print(f"| load cached index | {cached:.2f} s |")
    print(f"| sample {len(episodes)} {args.n_way}-way {args.k_shot}-shot {args.q_query}-query episodes | "
          f"{sample:.2f} s = **{len(episodes) / sample:.0f} episodes/s** |")


if __name__ == "__main__":
    main()
