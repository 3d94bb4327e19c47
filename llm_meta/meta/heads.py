"""Per-episode classifier heads.

Tasks have different label sets, so the head is never meta-learned as a fixed matrix: each
episode builds it from its support set (Proto-MAML) or from embeddings of its label names,
and the inner loop then adapts it together with the LoRA tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_meta.modeling.body import Params

HEAD_KEYS = ("head.weight", "head.bias")


def prototypes(emb: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Class means: emb [S, H], labels [S] in 0..N-1 -> [N, H]."""
    sums = torch.zeros(n_way, emb.shape[1], dtype=emb.dtype, device=emb.device).index_add_(0, labels, emb)
    counts = torch.bincount(labels, minlength=n_way).clamp_min(1).to(emb.dtype)
    return sums / counts.unsqueeze(1)


def proto_head(emb: Tensor, labels: Tensor, n_way: int) -> Params:
    """Proto-MAML head: W_k = 2 c_k, b_k = -||c_k||^2, so logits = -||x - c_k||^2 + ||x||^2.

    Its argmax is the nearest prototype, so before any step the classifier equals ProtoNet.
    """
    return prototype_head(prototypes(emb, labels, n_way))


def prototype_head(c: Tensor) -> Params:
    """The Proto-MAML head of prototypes c [N, H]."""
    return {"head.weight": 2 * c, "head.bias": -(c * c).sum(1)}


def soft_kmeans(support_emb: Tensor, support_labels: Tensor, query_emb: Tensor, n_way: int, iterations: int,
                scale: float, min_confidence: float = 0.0) -> Tensor:
    """Prototypes [N, H] refined with the unlabelled query embeddings (transductive soft k-means,
    Ren et al. 2018): each iteration adds every query to every class, weighted by the class
    probability under the current prototypes; queries whose top probability is below
    `min_confidence` are left out. Zero iterations: the plain support prototypes."""
    sums = torch.zeros(n_way, support_emb.shape[1], dtype=support_emb.dtype, device=support_emb.device)
    sums.index_add_(0, support_labels, support_emb)
    counts = torch.bincount(support_labels, minlength=n_way).to(support_emb.dtype)
    c = sums / counts.clamp_min(1).unsqueeze(1)
    for _ in range(iterations):
        z = torch.softmax(head_logits(prototype_head(c), query_emb, scale), dim=1)  # [Q, N]
        z = z * (z.max(1, keepdim=True).values >= min_confidence)
        c = (sums + z.T @ query_emb) / (counts + z.sum(0)).clamp_min(1e-8).unsqueeze(1)
    return c


def zero_head(hidden: int, n_way: int, device: torch.device | None = None) -> Params:
    """All-zero head (uniform predictions before the first inner step), as in plain MAML."""
    return {"head.weight": torch.zeros(n_way, hidden, device=device), "head.bias": torch.zeros(n_way, device=device)}


def head_logits(params: Params, emb: Tensor, scale: float) -> Tensor:
    """[B, H] -> [B, N]. `scale` is an inverse temperature: normalised embeddings make raw
    prototype logits differ by at most 4, too flat for useful cross-entropy gradients."""
    return scale * (emb @ params["head.weight"].T + params["head.bias"])


def protonet_loss(support_emb: Tensor, support_labels: Tensor, query_emb: Tensor, query_labels: Tensor, n_way: int,
                  scale: float) -> tuple[Tensor, Tensor]:
    """Prototypical networks (Snell et al. 2017): cross-entropy of -scale·‖q - c_k‖² over the
    support prototypes c_k. Embeddings [S, H] and [Q, H], labels [S] and [Q]."""
    c = prototypes(support_emb, support_labels, n_way)
    logits = -scale * ((query_emb.unsqueeze(1) - c.unsqueeze(0)) ** 2).sum(-1)
    return F.cross_entropy(logits, query_labels), (logits.argmax(1) == query_labels).float().mean()
