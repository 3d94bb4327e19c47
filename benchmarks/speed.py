"""Meta-step time vs the same forward/backward passes done with a plain training loop.

    .venv/bin/python benchmarks/speed.py [--episodes 8] [--n-way 10] [--inner-steps 5]
    .venv/bin/python benchmarks/speed.py --memory [--steps-list 1 2 3 5]
    .venv/bin/python benchmarks/speed.py --memory --skip-maml --n-way 100 --steps-list 5 --chunk 32
    .venv/bin/python benchmarks/speed.py --model SmolLM2-135M-Instruct --algorithms fomaml --episodes 2

--memory: the extra resident memory (peak RSS during one episode minus RSS just before it, each
measurement in a fresh process) of plain LoRA fine-tuning, FOMAML and second-order MAML as the
inner steps grow. First-order memory stays flat; MAML keeps every inner step's graph.

For each algorithm, a meta-step on one episode runs: one no-grad forward of the support set
(prototype head), `inner_steps` forward+backward passes on the inner data, and one more pass on
the query set (with backward for FOMAML, without for Reptile). The "plain" loop runs exactly those
passes through the module itself with `loss.backward()` and `torch.optim.Adam`, which is the cost
a meta-learning library cannot avoid. efficiency = plain time / meta-step time (1.0 = no overhead).
Second-order MAML is timed against FOMAML's plain passes: its ratio is the price of the second
order (backward through every inner step), not overhead.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from llm_meta.meta.adaptation import init_head  # noqa: E402
from llm_meta.meta.algorithms import ALGORITHMS, InnerConfig  # noqa: E402
from llm_meta.data.episodes import Episode, EpisodeSampler, Examples  # noqa: E402
from llm_meta.meta.heads import head_logits  # noqa: E402
from llm_meta.modeling.body import Body, ModelConfig, lora_params  # noqa: E402
from llm_meta.modeling.loading import default_targets, load_body  # noqa: E402
from llm_meta.modeling.forward import pool, tokenize  # noqa: E402
from llm_meta.data.tasks import load_task  # noqa: E402


def plain_passes(body: Body, episode: Episode, cfg: InnerConfig, algorithm: str) -> None:
    """The meta-step's forward/backward passes, done the ordinary way on the module."""
    params = lora_params(body)
    maml_like = algorithm in ("fomaml", "maml")  # MAML's limit: the same passes, without the second order
    inner = episode.support if maml_like else Examples(
        episode.support.texts + episode.query.texts, episode.support.labels + episode.query.labels)
    head = {k: v.requires_grad_(True) for k, v in init_head(body, params, inner, episode.n_way, cfg).items()}
    named = dict(body.model.named_parameters())
    trainable = [named[n] for n in body.lora_names] + list(head.values())
    opt = torch.optim.Adam(trainable, lr=cfg.lr)

    def loss_on(examples: Examples) -> torch.Tensor:
        batch = tokenize(body, examples.texts)
        emb = pool(body, body.model(**batch).last_hidden_state, batch["attention_mask"])
        return F.cross_entropy(head_logits(head, emb, cfg.scale), torch.tensor(examples.labels, device=emb.device))

    for _ in range(cfg.steps):
        opt.zero_grad()
        loss_on(inner).backward()
        opt.step()
    if maml_like:
        opt.zero_grad()
        loss_on(episode.query).backward()
    else:
        with torch.no_grad():
            loss_on(episode.query)
    with torch.no_grad():  # leave the module as it was
        for n, v in params.items():
            named[n].copy_(v)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_extra_memory(fn, device: torch.device) -> float:
    """MiB of memory `fn` needs above what was held just before it: resident memory (RSS) on CPU,
    allocated tensor memory (`max_memory_allocated`) on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)
    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], _rss_mib()) - base


def peak_process_mib(device: torch.device) -> float:
    """The whole process's peak: resident memory on CPU (model weights included), allocated on a GPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def memory_one(args: argparse.Namespace) -> None:
    """One measurement (run in its own process, so earlier allocations do not hide this one's)."""
    body = load_body(ModelConfig(name=args.model, max_length=48, lora_layers=args.lora_layers))
    body.model.to(args.device)
    episode = EpisodeSampler([load_task(args.task)], args.n_way, args.k_shot, args.q_query,
                             class_role="meta_train").episode(0)
    cfg = InnerConfig(steps=args.inner_steps, chunk=args.chunk)
    params = lora_params(body)
    if args.memory_one == "plain":
        extra = peak_extra_memory(lambda: plain_passes(body, episode, cfg, "fomaml"), body.device)
    else:
        extra = peak_extra_memory(lambda: ALGORITHMS[args.memory_one](body, params, episode, cfg, 0), body.device)
    print(f"{extra:.1f} {peak_process_mib(body.device):.1f}")


def memory_table(args: argparse.Namespace) -> None:
    what = "allocated GPU memory" if args.device.startswith("cuda") else "RSS"
    print(f"{args.model}, {args.task}, {args.n_way}-way {args.k_shot}-shot {args.q_query}-query on {args.device}, "
          f"inner.chunk={args.chunk}, "
          f"one episode per fresh process; extra {what} in MiB (peak during the episode minus before it), and the "
          f"process's peak with FOMAML (weights included)")
    print("| inner steps | plain LoRA fine-tuning | FOMAML | MAML (second order) | FOMAML / plain | MAML / plain "
          "| FOMAML process peak |")
    print("|---|---|---|---|---|---|---|")
    for steps in args.steps_list:
        row, peak = {}, {}
        for name in ("plain", "fomaml") if args.skip_maml else ("plain", "fomaml", "maml"):
            cmd = [sys.executable, __file__, "--memory-one", name, "--inner-steps", str(steps), "--task", args.task,
                   "--device", args.device, "--model", args.model,
                   *(["--lora-layers", str(args.lora_layers)] if args.lora_layers else []),
                   "--chunk", str(args.chunk),
                   "--n-way", str(args.n_way), "--k-shot", str(args.k_shot), "--q-query", str(args.q_query)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:  # e.g. killed by the kernel for lack of memory: a result, not a crash
                row[name] = peak[name] = float("nan")
                print(f"({name}, {steps} inner steps: the process failed with code {done.returncode})", flush=True)
                continue
            row[name], peak[name] = map(float, done.stdout.strip().splitlines()[-1].split())
        row.setdefault("maml", float("nan"))
        print(f"| {steps} | {row['plain']:.0f} | {row['fomaml']:.0f} | {row['maml']:.0f} | "
              f"{row['fomaml'] / row['plain']:.2f} | {row['maml'] / row['plain']:.2f} | {peak['fomaml']:.0f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--n-way", type=int, default=10)
    parser.add_argument("--k-shot", type=int, default=5)
    parser.add_argument("--q-query", type=int, default=5)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--task", default="clinc")
    parser.add_argument("--memory", action="store_true", help="the memory table instead of the timing table")
    parser.add_argument("--steps-list", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--memory-one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="bundled name, model folder or Hub id")
    parser.add_argument("--algorithms", nargs="+", default=["fomaml", "reptile", "maml"])
    parser.add_argument("--lora-layers", type=int, default=None, help="LoRA on the top L layers (cached below)")
    parser.add_argument("--skip-maml", action="store_true", help="--memory without the second-order column")
    parser.add_argument("--chunk", type=int, default=0, help="inner.chunk: texts per pass (0: whole batches)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.memory_one:
        return memory_one(args)
    if args.memory:
        return memory_table(args)

    body = load_body(ModelConfig(name=args.model, max_length=48, lora_layers=args.lora_layers))
    body.model.to(args.device)
    sampler = EpisodeSampler([load_task(args.task)], args.n_way, args.k_shot, args.q_query, class_role="meta_train")
    episodes = sampler.episodes(args.episodes)
    cfg = InnerConfig(steps=args.inner_steps, chunk=args.chunk)
    params = lora_params(body)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"device {body.device}")
    print(f"{args.task}, {args.n_way}-way {args.k_shot}-shot {args.q_query}-query, {args.inner_steps} inner steps, "
          f"{args.episodes} episodes, {args.model} LoRA r=8 on {', '.join(default_targets(body.model.config))}, "
          f"{body.pooling} pooling, max 48 tokens"
          + (f", LoRA on the top {args.lora_layers} layers (lower layers cached after the warm-up)"
             if args.lora_layers else ""))
    print("| algorithm | meta-step s/episode | plain loop s/episode | efficiency (plain / meta) | episodes/s |")
    print("|---|---|---|---|---|")
    for name in args.algorithms:
        meta = timed(lambda: [ALGORITHMS[name](body, params, ep, cfg, i) for i, ep in enumerate(episodes)], 1)
        plain = timed(lambda: [plain_passes(body, ep, cfg, name) for ep in episodes], 1)
        meta, plain = meta / len(episodes), plain / len(episodes)
        print(f"| {name} | {meta:.3f} | {plain:.3f} | {plain / meta:.2f} | {1 / meta:.2f} |")


if __name__ == "__main__":
    main()
