"""How far a trained start moves the body's sentence embeddings from the untrained start.

    python experiments/start_shift.py runs/family_smollm2/starts/protonet-seed0 \
        --config recipes/configs/benchmark_family.yaml --task tweets_apple --texts 48 \
        model.name=SmolLM2-135M-Instruct model.lora_layers=2

A diagnosis for a start whose held-out scores equal the untrained start's: did training not move
the LoRA, or does the moved LoRA not move the embedding? Loads the benchmark's body and the
untrained LoRA of meta-seed `--seed` (as the benchmark builds them), then the start's adapter
(`START/adapter`), embeds the first `--texts` texts of the task's test split with both, and prints:
the mean L2 distance between the two unit-length embeddings of each text, the least cosine between
them, the mean pairwise cosine among the untrained embeddings (how crowded the space is), and the
Frobenius norm of each adapted matrix's B·A (before the LoRA scale). The embeddings are the ones
the prototype heads use (`llm_meta.modeling.forward.embed_texts`, normalised as `model.normalize` says).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from llm_meta.saving.checkpoint import load_adapter_params
from llm_meta.config import load_config
from llm_meta.modeling.forward import embed_texts
from llm_meta.data.tasks import load_task
from llm_meta.bench.config import Config
from llm_meta.bench.starts import untrained_start


def lora_norms(params: dict[str, torch.Tensor]) -> dict[str, float]:
    """‖B·A‖_F per adapted matrix (module name -> norm), from a LoRA parameter dict."""
    return {name.removesuffix(".lora_A.default.weight"): (params[name.replace("lora_A", "lora_B")] @ params[name])
            .norm().item() for name in sorted(params) if "lora_A" in name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("start", type=Path, help="a trained start's folder (holds adapter/)")
    ap.add_argument("--config", required=True, help="the benchmark config that trained it")
    ap.add_argument("--task", required=True, help="a registered task; its test split's first texts are embedded")
    ap.add_argument("--texts", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0, help="the meta-seed of the untrained start to compare with")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the benchmark config (e.g. model.name=...)")
    args = ap.parse_intermixed_args()  # overrides may follow the options

    cfg = load_config(Config, args.config, args.overrides)
    body, untrained = untrained_start(cfg.model, args.seed)
    trained = load_adapter_params(body, args.start / "adapter")
    texts = load_task(args.task).split("test")["text"][: args.texts]
    with torch.no_grad():
        before, after = embed_texts(body, untrained, texts), embed_texts(body, trained, texts)
    before, after = F.normalize(before, dim=-1), F.normalize(after, dim=-1)
    n = len(texts)
    pairwise = (before @ before.T - torch.eye(n)).sum() / (n * (n - 1))
    print(f"{n} texts of {args.task} (test): mean embedding shift {(after - before).norm(dim=-1).mean():.4f} "
          f"(unit vectors), least cosine {F.cosine_similarity(before, after).min():.5f}, "
          f"mean pairwise cosine before {pairwise:.3f}")
    norms = lora_norms(trained)
    print(f"|B·A| over {len(norms)} adapted matrices: {min(norms.values()):.4f} to {max(norms.values()):.4f}")


if __name__ == "__main__":
    main()
