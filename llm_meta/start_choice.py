"""Which start to adapt for the user's task: the untrained LoRA, a meta-trained adapter, or (with
`adapter=auto`) any start built on this machine (`llm-meta starts build`), chosen on the support
set before any step.

The rule, for every candidate list (`choose`):

1. *The family's labels.* A start whose meta-training class names include every class name of the
   task (`in_family`) is used as its algorithm trained it (`own_adaptation`: a ProtoNet start takes
   no steps). With `select_start=names`, a start whose class names match the task's by meaning
   (`match_names`: `liked`/`disliked` to `positive`/`negative`, through the start's own embeddings of
   the names) counts too, and its label examples use the matched names. Several such starts: the
   best leave-one-out fit among them.
2. *Any other task.* The candidate with the best leave-one-out fit on the support set
   (`leave_one_out_fit`: one embedding pass per candidate), the untrained start first so that ties
   keep it, then adapted with the configured steps, whichever it is.

Why: a start meta-trained on another family can be worse than none (experiments/BENCHMARKS.md), and
the family's no-step route is where a meta-learned start paid on a held-out domain (issue 59's
check: 71.4 against 64.8 for transfer's start on a sentiment task of another genre).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment

from llm_meta.data.episodes import Examples
from llm_meta.data.kinds import SEQUENCE, TaskKind
from llm_meta.errors import CheckpointError, ModelLoadError
from llm_meta.meta.adaptation import best_fit, in_family, leave_one_out_fit, own_adaptation
from llm_meta.meta.core import InnerConfig, interpolate
from llm_meta.modeling.body import Body, ModelConfig, Params, lora_params
from llm_meta.modeling.forward import embed_texts
from llm_meta.modeling.loading import load_body, recorded_model_config, start_model_config
from llm_meta.saving.built_starts import built_starts
from llm_meta.saving.checkpoint import load_adapter_params, read_start

log = logging.getLogger(__name__)

AUTO = "auto"  # `adapter=auto`: choose among the untrained start and every start built on this machine
# A class name matches a family's name (`match_names`) when that name is its nearest by cosine
# similarity of the start's embeddings, at least this similar, and this much nearer than the
# family's next name. Set on the two built starts' names (2026-12): liked/disliked, good/bad and
# favorable/unfavorable/mixed match the sentiment start's negative/neutral/positive; spam/ham,
# angry/calm, sports/politics/tech and any intent names do not.
NAME_SIMILARITY, NAME_MARGIN = 0.4, 0.05


@dataclass
class Candidate:
    """A start that `choose` considers."""

    name: str  # "untrained", "adapter", a built start's name...
    body: Body  # loaded with `model` (candidates may differ in max_length, layers, ...)
    params: Params  # its LoRA tensors, keyed like lora_params(body)
    model: ModelConfig
    adapter: str | None = None  # its adapter folder; None for the untrained start and mixtures
    meta: dict[str, Any] = field(default_factory=dict)  # the adapter's llm_meta.json ({} if none)


@dataclass
class Choice:
    """The start `choose` kept and how to adapt it."""

    candidate: Candidate
    inner: InnerConfig  # its adaptation (own_adaptation for a start of the task's family)
    label_names: list[str]  # the names its label examples use: the task's, or the family's matched names
    record: dict[str, Any] | None  # what was chosen and why: the task model's "start_selection" (and card);
    # None when there was one candidate


def match_names(body: Body, params: Params, names: list[str], family: list[str]) -> dict[str, str] | None:
    """A one-to-one map from the task's class `names` to `family`'s names by meaning, or None.

    Each name's embedding (one pass over both lists, the start's LoRA `params`) is compared by
    cosine similarity; the assignment maximising the total (`scipy.optimize.linear_sum_assignment`)
    is kept only when every name's partner is its nearest family name, at least NAME_SIMILARITY
    similar and NAME_MARGIN nearer than the next: a confident match or none.
    """
    if not names or not family or len(names) > len(family):
        return None
    emb = torch.nn.functional.normalize(embed_texts(body, params, [*names, *family]).float(), dim=-1)
    sim = (emb[:len(names)] @ emb[len(names):].T).cpu()  # [len(names), len(family)]
    rows, cols = linear_sum_assignment(sim.numpy(), maximize=True)
    top2 = sim.topk(min(2, len(family)), dim=1)
    for i, j in zip(rows.tolist(), cols.tolist()):
        second = float(top2.values[i, 1]) if len(family) > 1 else -1.0
        if int(top2.indices[i, 0]) != j or float(sim[i, j]) < NAME_SIMILARITY or float(sim[i, j]) - second < NAME_MARGIN:
            return None
    return {names[i]: family[j] for i, j in zip(rows.tolist(), cols.tolist())}


def choose(candidates: list[Candidate], support: Examples, labels: list[str], inner: InnerConfig,
           select: str = "auto") -> Choice:
    """The start to adapt among `candidates` (the untrained start first) for this support set, by
    the module's rule; a sole candidate is kept as given, with no record. `select`: "auto" (the family's labels, else the fit), "names" (also class
    names matched by meaning), "support" (the fit alone).

    Cost: one embedding pass of the support set per candidate judged by the fit (none when one
    start of the family's labels is found); `names` adds one pass over the class names per start.
    """
    if not candidates:
        raise ValueError("choose needs at least one candidate start (the untrained start first)")
    if len(candidates) == 1:  # nothing to choose: the sole start as given, no record
        return Choice(candidates[0], inner, labels, None)
    family: list[tuple[Candidate, list[str], dict[str, str] | None]] = []
    for cand in candidates if select in ("auto", "names") else []:
        names = cand.meta.get("label_names")
        if in_family(labels, names):
            family.append((cand, labels, None))
        elif select == "names" and isinstance(names, list) and (match := match_names(cand.body, cand.params, labels,
                                                                                     [str(n) for n in names])):
            log.info("class names matched to start %s's by meaning: %s", cand.name,
                     ", ".join(f"{a} -> {b}" for a, b in match.items()))
            family.append((cand, [match[n] for n in labels], match))
    if family:
        fits = ({c.name: leave_one_out_fit(c.body, c.params, support, len(labels), inner, names)
                 for c, names, _ in family} if len(family) > 1 else None)
        cand, names, match = family[best_fit(fits)] if fits else family[0]
        own = own_adaptation(inner, cand.meta.get("algorithm"))
        log.info("start: %s, the task's class names being its family's%s; %d inner steps", cand.name,
                 " (matched by meaning)" if match else "", own.steps)
        return Choice(cand, own, names, {
            "chosen": cand.name, "leave_one_out_fit": recorded(fits), "inner_steps": own.steps,
            **({"name_match": match} if match else {}),
            "method": "the support set's class names are all among the start's meta-training class names"
                      + (" (matched by meaning: the start's embeddings of the names)" if match else "")})
    fits = {c.name: leave_one_out_fit(c.body, c.params, support, len(labels), inner, labels) for c in candidates}
    best = candidates[best_fit(fits)]
    log.info("start chosen on the support set: %s (leave-one-out fit: %s); %d inner steps", best.name,
             ", ".join(f"{k} {v:.3f}" for k, v in fits.items()), inner.steps)
    return Choice(best, inner, labels, {
        "chosen": best.name, "leave_one_out_fit": recorded(fits), "inner_steps": inner.steps,
        "method": "mean leave-one-out log-probability of each support example's class under the prototype head "
                  "of the others, before any step (adaptation.leave_one_out_fit)"})


def recorded(fits: dict[str, float] | None) -> dict[str, float | None] | None:
    """The fits as llm_meta.json keeps them: NaN (no class with two examples) as null, valid JSON."""
    return None if fits is None else {k: None if math.isnan(v) else v for k, v in fits.items()}


def adapter_candidates(body: Body, params: Params, model: ModelConfig, adapter: str,
                       meta: dict[str, Any]) -> list[Candidate]:
    """The candidates of one given adapter (`adapt --adapter DIR`): the untrained start on the same
    body, the adapter, and the adapter's weight change halved (`interpolate`, α = 0.5)."""
    untrained = lora_params(body)  # the body's own fresh LoRA (drawn from its seed): B = 0
    return [Candidate("untrained", body, untrained, model),
            Candidate("adapter", body, params, model, adapter, meta),
            Candidate("adapter at α=0.5", body, interpolate(untrained, params, 0.5), model)]


def built_candidates(model: ModelConfig, default: ModelConfig, seed: int = 0, trust_remote_code: bool = False,
                     kind: TaskKind = SEQUENCE) -> list[Candidate]:
    """The untrained start with `model`, then every usable start built on this machine for
    `kind`'s task models (classifiers, or NER taggers with the token kind) on the same body
    (`built_starts`), each loaded with its own model settings plus the
    runtime settings the user changed from `default` (`start_model_config`); starts with equal
    settings share one loaded body. Left out with a message: a start whose settings the user's
    contradict (say model.lora_layers=2 against a start trained on every layer), a corrupt or
    foreign folder (listed by `llm-meta starts list`), one whose recorded config or tensors do not
    load, one named "untrained"; left out quietly: Meta-SGD and hypernetwork starts (their learned
    rates or generated adapter are not a LoRA start to judge; name their folder to use them)."""
    body = load_body(model, seed=seed, trust_remote_code=trust_remote_code)
    out, bodies = [Candidate("untrained", body, lora_params(body), model)], {repr(model): body}
    for row in built_starts():
        if "error" in row or row["name"] == "untrained":
            log.warning("built start %s left out: %s", row["name"], row.get("error", "its name is the untrained start's"))
            continue
        if row["kind"] != kind.name or row["body"] != model.name:
            continue
        try:
            meta = read_start(row["adapter"])
            own = start_model_config(recorded_model_config(meta["config"]["model"]), model, default, row["adapter"])
            if repr(own) not in bodies:
                bodies[repr(own)] = load_body(own, seed=seed, trust_remote_code=trust_remote_code)
            params = load_adapter_params(bodies[repr(own)], row["adapter"])
        except (ValueError, KeyError, TypeError, CheckpointError, ModelLoadError) as err:
            log.warning("built start %s left out: %s", row["name"],
                        f"its llm_meta.json has no {err} entry" if isinstance(err, KeyError) else err)
            continue
        if set(params) != set(bodies[repr(own)].lora_names):  # Meta-SGD rates, a hypernetwork
            continue
        out.append(Candidate(row["name"], bodies[repr(own)], params, own, row["adapter"], meta))
    if len(out) == 1:
        log.info("no start for %s built on this machine (llm-meta starts list): the untrained start", model.name)
    return out

