"""Few-shot NER speed: adapting a tagger to new entity types, and tagging sentences with it.

    .venv/bin/python experiments/ner_speed.py [--adapter DIR] [--shots 5] [--repeats 3] [--sentences 1000]
        [--label-examples N]

Adapts `llm-meta adapt --ner`'s default tagger (`llm_meta.tagger.TaggerConfig`: decomposed head, type names ×2,
15 steps) to the four held-out WNUT-16 types (movie, musicartist, product, sportsteam) from a
K~2K-mention support set drawn from their sentences, `--repeats` times with other support seeds,
and reports: model load (once, in this process), adaptation (support encoding + steps; the model
is loaded already), tagging throughput over `--sentences` WNUT-16 sentences (every sentence of
the corpus, repeated to that count) in sentences per second, and the body's forward pass alone on
the same length-sorted batches, tokenised beforehand and with no head (the ceiling tagging could
reach here with this body, whatever the code around the model), and the linear layers' FLOPs at
this machine's measured matrix-product rate (a bound below even that). Wall-clock seconds on this
machine's CPU threads (torch.get_num_threads()); run nothing else beside it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from llm_meta.meta.adaptation import adapt  # noqa: E402
from llm_meta.saving.checkpoint import load_adapter_params  # noqa: E402
from llm_meta.modeling.body import Body, Params, lora_params, num_layers  # noqa: E402
from llm_meta.modeling.forward import by_tokens, folded_pass, hidden_states, tokenize  # noqa: E402
from llm_meta.modeling.loading import load_body  # noqa: E402
from llm_meta.data.ner import NerEpisodeSampler, load_ner  # noqa: E402
from llm_meta.meta.token_heads import tag_words  # noqa: E402
from llm_meta.modeling.prefix import find_layer_stack  # noqa: E402
from llm_meta.tagger import TaggerConfig  # noqa: E402

HELD_OUT = ["movie", "musicartist", "product", "sportsteam"]
BATCH = 64  # sentences per tagging batch, for tag_words and the bare forward alike


def forward_alone(body: Body, params: Params, sentences: list[list[str]], batch_size: int) -> tuple[float, int]:
    """(seconds, padded tokens) of the body's forward pass over the batches tag_words runs (sorted
    by token count, LoRA folded in), tokenised beforehand: no tokenizer, alignment or head timed."""
    texts = [" ".join(words) for words in sentences]
    order = by_tokens(body, texts)
    batches = [tokenize(body, [texts[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)]
    began = time.perf_counter()
    with torch.no_grad(), folded_pass(body, params) as folded:
        for batch in batches:
            hidden_states(body, params, batch, folded)
    return time.perf_counter() - began, sum(b["input_ids"].numel() for b in batches)  # padding is computed too


def linear_gflop_of(body: Body, tokens: int) -> float:
    """GFLOP of the transformer layers' matrix products over `tokens`: 2 per base weight per token
    (the LoRA is folded into the base weights, so its own small matrices do not run)."""
    _, _, layers = find_layer_stack(body.model, num_layers(body.model))  # any body's layer list, not a name
    weights = sum(m.weight.numel() for n, m in layers.named_modules()
                  if isinstance(m, torch.nn.Linear) and "lora_" not in n)
    return 2 * weights * tokens / 1e9


def gemm_rate(hidden: int, repeats: int = 20) -> float:
    """This machine's fp32 matrix-product rate in GFLOP/s on a feed-forward shape, [2048, hidden] x
    [hidden, 4 hidden]: the time of the linear layers at this rate bounds tagging from below."""
    x, w = torch.randn(2048, hidden), torch.randn(4 * hidden, hidden)
    torch.nn.functional.linear(x, w)  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, w)
    return repeats * 2 * x.shape[0] * w.numel() / (time.perf_counter() - began) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", default=None, help="a meta-trained adapter folder (default: untrained LoRA)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--label-examples", type=int, default=None,
                        help="entity-type names as support sentences, times each (default: the tagger's, 2)")
    args = parser.parse_args()
    cfg = TaggerConfig()
    if args.label_examples is not None:
        cfg.inner.label_examples = args.label_examples
    began = time.perf_counter()
    body = load_body(cfg.model, adapter=args.adapter)
    params = lora_params(body) if args.adapter is None else load_adapter_params(body, args.adapter)
    load_s = time.perf_counter() - began
    corpus = load_ner("wnut16")
    pool = [s for s in corpus if any(t[2:] in HELD_OUT for t in s.tags)]
    labels = ["O", *HELD_OUT]
    adapt_s, fast = [], None
    for seed in range(args.repeats):
        support = NerEpisodeSampler(pool, HELD_OUT, len(HELD_OUT), args.shots, 0, seed=seed).episode(0).support
        began = time.perf_counter()
        fast = adapt(body, params, support, len(labels), cfg.inner, seed=seed, label_names=labels)
        adapt_s.append(time.perf_counter() - began)
    sentences = [s.tokens for s in corpus] * (args.sentences // len(corpus) + 1)
    sentences = sentences[: args.sentences]
    began = time.perf_counter()
    tag_words(body, fast, sentences, cfg.inner.scale, batch_size=BATCH)
    tag_s = time.perf_counter() - began
    forward_s, tokens = forward_alone(body, fast, sentences, BATCH)
    hidden = body.model.config.hidden_size
    linear_gflop, rate = linear_gflop_of(body, tokens), gemm_rate(hidden)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; start: {args.adapter or 'untrained'}; head: {cfg.inner.ner_head}, "
          f"{cfg.inner.steps} steps, type names x{cfg.inner.label_examples}, max_length {cfg.model.max_length}")
    print(f"model load: {load_s:.1f} s")
    print(f"adapt to {len(HELD_OUT)} types x {args.shots} shots ({len(support)} support sentences in the last draw): "
          + ", ".join(f"{t:.2f}" for t in adapt_s) + f" s (mean {sum(adapt_s) / len(adapt_s):.2f} s)")
    print(f"tagging: {len(sentences)} sentences in {tag_s:.2f} s = {len(sentences) / tag_s:.0f} sentences/s")
    print(f"the body's forward alone on the same batches ({tokens} tokens): {forward_s:.2f} s = "
          f"{len(sentences) / forward_s:.0f} sentences/s (tagging's ceiling with this body here)")
    print(f"its linear layers alone: {linear_gflop:.0f} GFLOP; at this machine's fp32 matrix-product rate "
          f"({rate:.0f} GFLOP/s on [2048, {hidden}] x [{hidden}, {4 * hidden}]) that is "
          f"{linear_gflop / rate:.2f} s = {len(sentences) * rate / linear_gflop:.0f} sentences/s at most")


if __name__ == "__main__":
    main()
