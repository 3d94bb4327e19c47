"""Per-episode classifier heads.

Tasks have different label sets, so the head is never meta-learned as a fixed matrix: each
episode builds it from its support set (Proto-MAML) or from embeddings of its label names,
and the inner loop then adapts it together with the LoRA tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llm_meta.data.episodes import Examples
from llm_meta.modeling.models import Params

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


def label_name_text(name: str) -> str:
    """How a label name is read as text: `card_arrival` -> "card arrival"."""
    return " ".join(name.replace("_", " ").replace("-", " ").split())


def with_label_names(support: Examples, label_names: list[str], times: int) -> Examples:
    """The support set plus each label name, read as text, `times` times (labelled with its class).

    Label names carry the task's semantics for free: the project's first prototype measured +4 points on
    BANKING77 77-way 5-shot from adding each name twice before adaptation. For a token task (NER)
    each entity-type name is a sentence of its words, every word of that type, so the name's words
    join the type's prototype; class 0 is O, which has no name to add.
    """
    if support.token_level:
        named = [(label_name_text(n).split(), y) for y, n in enumerate(label_names) if y > 0 and label_name_text(n)]
        return type(support)(support.texts + [words for words, _ in named for _ in range(times)],
                             support.labels + [[y] * len(words) for words, y in named for _ in range(times)])
    names = [label_name_text(n) for n in label_names]
    return Examples(support.texts + [n for n in names for _ in range(times)],
                    support.labels + [y for y in range(len(names)) for _ in range(times)])
