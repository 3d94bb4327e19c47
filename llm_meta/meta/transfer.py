"""The multi-task transfer baseline: supervised training of the LoRA and one head per dataset.

The same episodes as meta-learning (so the same data), no inner loop: every example is classified
over *all* meta-train classes of its dataset by a persistent head kept in `params`, one row
([hidden + 1]: weight and bias) per class under `transfer_head_key(task, label)`. This is the
baseline meta-learning has to beat (CrossFit, Ye et al. 2021, found it often does not).
"""

from __future__ import annotations


import torch
from torch import Tensor

from llm_meta.data.conll import entity_type
from llm_meta.data.episodes import Episode, WordExamples
from llm_meta.meta.core import InnerConfig, StepStats
from llm_meta.meta.heads import proto_head
from llm_meta.meta.kinds import labelled_embeddings, loss_and_accuracy
from llm_meta.modeling.body import Body, Params
from llm_meta.modeling.forward import embed_texts

TRANSFER_PREFIX = "transfer."


def transfer_head_key(task: str, label: str) -> str:
    """Key of one class's row ([hidden + 1]: weight and bias) in the transfer baseline's heads."""
    return f"{TRANSFER_PREFIX}{task}.{label}"


def transfer(body: Body, params: Params, episode: Episode, cfg: InnerConfig, seed: int = 0) -> tuple[Params, StepStats]:
    """One step's gradient of multi-task supervised training: cross-entropy of the episode's
    support and query examples (words, for NER) over all rows of their dataset's head; the
    gradient covers LoRA and that head (zero for the other datasets' rows)."""
    prefix = f"{TRANSFER_PREFIX}{episode.task}."
    rows = sorted(k for k in params if k.startswith(prefix))
    keys = [k for k in params if not k.startswith(TRANSFER_PREFIX)] + rows
    live = {k: params[k].detach().requires_grad_(True) for k in keys}
    table = torch.stack([live[k] for k in rows])  # [classes, hidden + 1]
    head = {"head.weight": table[:, :-1], "head.bias": table[:, -1]}
    to_row = [rows.index(prefix + name) for name in episode.label_names]
    both = episode.support + episode.query
    loss, acc = loss_and_accuracy(body, {**live, **head}, both.relabelled(to_row), cfg.scale)
    grads = dict(zip(keys, torch.autograd.grad(loss, [live[k] for k in keys])))
    return {k: grads.get(k, torch.zeros_like(v)) for k, v in params.items()}, StepStats(loss.item(), acc.item())


def _head_rows(task: str, names: list[str], emb: Tensor, labels: Tensor) -> Params:
    """One Proto-MAML row per class name, keyed by `transfer_head_key`, from embeddings [M, hidden]
    and their class ids [M] (indices into `names`)."""
    head = proto_head(emb, labels, len(names))
    return {transfer_head_key(task, name): torch.cat([head["head.weight"][y], head["head.bias"][y : y + 1]])
            for y, name in enumerate(names)}


@torch.no_grad()
def transfer_heads(body: Body, params: Params, task: str, pool: dict[str, list[str]], per_class: int = 16) -> Params:
    """Initial transfer-baseline heads for one dataset: Proto-MAML rows from up to `per_class`
    texts per class, the same head initialisation every other method gets."""
    labels = sorted(pool)
    texts = [t for label in labels for t in pool[label][:per_class]]
    ys = torch.tensor([y for y, label in enumerate(labels) for _ in pool[label][:per_class]], device=body.device)
    return _head_rows(task, labels, embed_texts(body, params, texts), ys)


@torch.no_grad()
def ner_transfer_heads(body: Body, params: Params, task: str, sentences: list, types: list[str],
                       max_sentences: int = 200) -> Params:
    """The transfer baseline's NER head: one Proto-MAML row per class (O and every meta-training
    type) from the words of up to `max_sentences` training sentences (`ner.Sentence`)."""
    names = ["O", *types]
    index = {t: y for y, t in enumerate(names)}
    part = sentences[:max_sentences]
    words = WordExamples([list(s.tokens) for s in part], [[index.get(entity_type(t), 0) for t in s.tags] for s in part])
    return _head_rows(task, names, *labelled_embeddings(body, params, words))
