"""The body's forward pass: tokenising (long texts cut or split into windows, with what was cut
reported), the LoRA folded into the base weights for passes without gradients, pooling, and
embedding texts in batches of similar length. Every pass is `torch.func.functional_call` on the
LoRA tensors in `params`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from llm_meta.modeling.body import Body, Params, autocast_dtype

log = logging.getLogger(__name__)


WINDOWS_KEY = "overflow_to_sample_mapping"  # in a tokenised batch of windows: the text each window belongs to


# No token of any tokenizer here covers more characters than this (WordPiece gives up on a word at
# 100): the characters of a text past max_length x this can never be read, so they are dropped
# before tokenising. At least MIN_CHARS are kept, so the truncation warning still gives the true
# length of any real document; one 2 GB line is tokenised as its first megabyte, not whole.
CHARS_PER_TOKEN = 100


MIN_CHARS = 1_000_000


def capped(body: Body, texts: list[str]) -> tuple[list[str], list[bool]]:
    """`texts` cut to the characters `body` can read (`CHARS_PER_TOKEN` per token of max_length, of
    each window with long_texts=windows, and at least `MIN_CHARS`), and which were cut."""
    cap = max(body.max_length * (body.max_windows if body.long_texts == "windows" else 1) * CHARS_PER_TOKEN,
              MIN_CHARS)
    cut = [len(t) > cap for t in texts]
    return ([t[:cap] for t in texts] if any(cut) else list(texts)), cut


def tokenize(body: Body, texts: list[str]) -> dict[str, Tensor]:
    """Tokenise with dynamic padding: the batch is as long as its longest text, capped at max_length.
    With `long_texts=windows` the rows are windows (`split_windows`) and `WINDOWS_KEY` maps each
    window to its text; `embed` averages them back to one embedding per text. (Counting what is cut
    is `tokenize_counted`'s: training batches do not pay for the overflow rows.)"""
    if body.long_texts == "windows":
        return tokenize_counted(body, texts)[0]
    texts, _ = capped(body, texts)
    enc = body.tokenizer(texts, padding=True, truncation=True, max_length=body.max_length, return_tensors="pt")
    return {k: v.to(body.device) for k, v in enc.items()}


@dataclass
class Cut:
    """Of `total` texts, how many were read only in part (`cut`), and the longest: its length in tokens,
    or with `long_texts=windows` the most windows any text needed; `capped`: how many were cut to
    their readable characters before tokenising (`capped`), whose length is then a lower bound.
    Added up over batches."""

    cut: int = 0
    total: int = 0
    longest: int = 0
    capped: int = 0

    def __iadd__(self, other: "Cut") -> "Cut":
        self.cut += other.cut
        self.total += other.total
        self.longest = max(self.longest, other.longest)
        self.capped += other.capped
        return self


def tokenize_counted(body: Body, texts: list[str]) -> tuple[dict[str, Tensor], Cut]:
    """`tokenize`, and what it cut, from the same tokenisation (prediction tokenises once: a second pass
    just to count cost ~4% of short-text throughput). A fast tokenizer's overflow with no overlap gives
    the count: a text longer than max_length has more than one row, and only each text's first row
    (exactly the plainly truncated encoding) is kept. A text cut to its readable characters
    (`capped`) counts as cut."""
    texts, chars_cut = capped(body, texts)
    enc, cut, tokens_cut = _tokenize_counted(body, texts)
    cut.cut += sum(c and not t for c, t in zip(chars_cut, tokens_cut))  # cut by characters only
    cut.capped = sum(chars_cut)
    return enc, cut


def _tokenize_counted(body: Body, texts: list[str]) -> tuple[dict[str, Tensor], Cut, list[bool]]:
    """`tokenize_counted` of texts already `capped`; also whether each text was cut."""
    if body.long_texts == "windows":
        enc, windows = split_windows(body, texts, return_tensors="pt")
        was_cut = (windows > body.max_windows).tolist()
        cut = Cut(sum(was_cut), len(texts), int(windows.max()) if len(texts) else 0)
    elif body.tokenizer.is_fast:
        enc = dict(body.tokenizer(texts, padding=True, truncation=True, max_length=body.max_length,
                                  return_overflowing_tokens=True, return_tensors="pt"))
        mapping = enc.pop(WINDOWS_KEY)
        rows = torch.bincount(mapping, minlength=len(texts))
        was_cut = (rows > 1).tolist()
        if any(was_cut):
            # A text's length: its rows' tokens without their special tokens, plus the specials once.
            specials = body.tokenizer.num_special_tokens_to_add()
            content = torch.zeros(len(texts), dtype=torch.long).index_add_(0, mapping, enc["attention_mask"].sum(1)
                                                                           - specials) + specials
            first = torch.ones(len(mapping), dtype=torch.bool)
            first[1:] = mapping[1:] != mapping[:-1]  # rows come in text order
            enc = {k: v[first] for k, v in enc.items()}
            cut = Cut(int((rows > 1).sum()), len(texts), int(content.max()))
        else:
            cut = Cut(0, len(texts), int(enc["attention_mask"].sum(1).max()) if len(texts) else 0)
    else:  # a slow tokenizer has no overflow mapping: count with a second pass
        enc = body.tokenizer(texts, padding=True, truncation=True, max_length=body.max_length, return_tensors="pt")
        lengths = body.tokenizer(list(texts), truncation=False, return_length=True, verbose=False)["length"]
        was_cut = [n > body.max_length for n in lengths]
        cut = Cut(sum(was_cut), len(texts), max(lengths, default=0))
    return {k: v.to(body.device) for k, v in enc.items()}, cut, was_cut


def split_windows(body: Body, texts: list[str], **kwargs: Any) -> tuple[dict[str, Any], Tensor]:
    """Every text as windows of at most max_length tokens, each repeating the last `window_overlap`
    tokens of the one before (the tokenizer's own overflow, so every window has its special tokens),
    at most `max_windows` per text: a padded batch [windows, tokens] plus `WINDOWS_KEY` [windows],
    and how many windows each text needed before the cap [texts]."""
    enc = body.tokenizer(list(texts), padding=True, truncation=True, max_length=body.max_length,
                         stride=body.window_overlap, return_overflowing_tokens=True, **kwargs)
    mapping = [int(i) for i in enc[WINDOWS_KEY]]  # windows come in text order
    windows = torch.bincount(torch.tensor(mapping, dtype=torch.long), minlength=len(texts))
    counts: dict[int, int] = {}
    keep = []
    for i in mapping:
        counts[i] = counts.get(i, 0) + 1
        keep.append(counts[i] <= body.max_windows)
    if all(keep):
        return dict(enc), windows
    rows = [r for r, k in enumerate(keep) if k]
    return {k: v[rows] if hasattr(v, "shape") else [v[r] for r in rows] for k, v in enc.items()}, windows


def warn_truncated(body: Body, texts: list[str], what: str = "texts") -> int:
    """Warn once when texts are longer than `body.max_length` tokens (they are read only up to it),
    or with `long_texts=windows` longer than `max_windows` windows, with their count; return the
    count. Truncation is a choice the user must see. (Tokenises the texts once more; prediction
    counts inside its own pass instead: `embed_texts(..., what=...)`.)"""
    if not texts:
        return 0
    cut = Cut()
    for start in range(0, len(texts), 1024):  # bounded memory for the padded batch
        cut += tokenize_counted(body, list(texts[start : start + 1024]))[1]
    return report_cut(body, cut, what)


def report_cut(body: Body, cut: Cut, what: str) -> int:
    """The truncation warning for `cut` (nothing when no text was cut); returns the count."""
    longest = f"{cut.longest}+" if cut.capped else str(cut.longest)  # a capped text was not tokenised whole
    capped = f"; {cut.capped} of them so long that only their first characters were tokenised" if cut.capped else ""
    if cut.cut and body.long_texts == "windows":
        log.warning("%d of %d %s need more than model.max_windows=%d windows of %d tokens (most: %s) and are read "
                    "only up to them%s; set model.max_windows higher to read more", cut.cut, cut.total, what,
                    body.max_windows, body.max_length, longest, capped)
    elif cut.cut:
        log.warning("%d of %d %s are longer than model.max_length=%d tokens (longest: %s) and are read only up to "
                    "it%s; set model.max_length higher or model.long_texts=windows to read more", cut.cut, cut.total,
                    what, body.max_length, longest, capped)
    return cut.cut


@torch.no_grad()
def folded_lora(body: Body, params: Params) -> Params | None:
    """Each LoRA-wrapped layer's base weight with its update folded in, W + s·B·A (s = alpha / r,
    transposed for GPT-2's Conv1D), keyed by the base weight's name: a forward with these weights and
    the LoRA branches switched off (`hidden_states(..., folded=...)`) computes the same function with
    no extra matmuls or activations per layer, which is what prediction pays for (the fold of a
    22M-parameter body takes milliseconds). The same logits as the LoRA forward up to float rounding
    (tests/test_speed.py). None where a layer cannot be folded this way (DoRA, non-Linear LoRA):
    callers then run the LoRA forward.
    """
    from peft.tuners.lora import Linear as LoraLinear

    modules = dict(body.model.named_modules())
    out: Params = {}
    for name in body.lora_names:
        if ".lora_A." not in name:
            continue
        prefix, adapter = name.split(".lora_A.")[0], name.split(".lora_A.")[1].split(".")[0]
        layer = modules[prefix]
        if not isinstance(layer, LoraLinear) or layer.use_dora.get(adapter, False):
            return None
        a, b = params[name], params[name.replace(".lora_A.", ".lora_B.")]
        delta = layer.scaling[adapter] * (b @ a)  # [out, in]
        weight = layer.get_base_layer().weight
        out[f"{prefix}.base_layer.weight"] = weight + (delta.T if layer.fan_in_fan_out else delta).to(weight.dtype)
    return out


def lora_branches_off(body: Body, folded: Params | None) -> contextlib.AbstractContextManager:
    """peft's `disable_adapter` when running on folded weights (not entered twice: it costs ~8 ms)."""
    already = getattr(body.model, "_adapters_disabled", False)
    return body.model.disable_adapter() if folded is not None and not already else contextlib.nullcontext()


@contextlib.contextmanager
def folded_pass(body: Body, params: Params) -> Iterator[Params | None]:
    """For a pass of many batches without gradients: `folded_lora(body, params)` (None: not
    foldable), with the LoRA branches off for the whole pass; give it to `hidden_states`."""
    folded = folded_lora(body, params)
    with lora_branches_off(body, folded):
        yield folded


def hidden_states(body: Body, params: Params, batch: dict[str, Tensor], folded: Params | None = None,
                  cache: bool = True) -> Tensor:
    """Last hidden states [batch, tokens, hidden] with the LoRA tensors in `params`, or (no
    gradient) with the base weights `folded_lora(body, params)` and the LoRA branches off.
    `cache` False: with top-layer LoRA, run every layer instead of storing the frozen layers' states
    (for texts seen once, e.g. prediction)."""
    lora = folded if folded is not None else {n: params[n] for n in body.lora_names}  # params may carry a head
    dtype = autocast_dtype(body)
    kwargs = {**batch, "use_cache": False} if body.is_decoder else batch  # no KV cache: one pass per text
    body.active = lora
    with torch.autocast(body.device.type, dtype=dtype, enabled=dtype is not None), lora_branches_off(body, folded):
        if body.prefix is not None and cache:  # top-layer LoRA: only the layers above the cached frozen ones run
            out = body.prefix.forward(body.model, lora, kwargs)
        else:
            out = torch.func.functional_call(body.model, lora, args=(), kwargs=kwargs, strict=False)
    return out.last_hidden_state.float()  # heads, losses and prototypes stay in fp32


def pool(body: Body, states: Tensor, mask: Tensor, windows: Tensor | None = None) -> Tensor:
    """[B, T, H] -> [B, H]: masked mean for encoders, last non-pad token for decoders. With
    `windows` ([B] text index of each row), rows of one text are averaged, weighted by their real
    tokens, before normalising: [texts, H]; a text read as one window gets exactly its own row."""
    if body.pooling == "mean":
        m = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * m).sum(1) / m.sum(1).clamp_min(1.0)
    else:
        # Index of the last 1 in the mask works for left and right padding alike.
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(1)
        pooled = states[torch.arange(states.shape[0], device=states.device), last]
    if windows is not None:
        weight = mask.sum(1, keepdim=True).to(pooled.dtype)
        texts = int(windows.max()) + 1
        total = pooled.new_zeros(texts, pooled.shape[1]).index_add(0, windows, pooled * weight)
        pooled = total / pooled.new_zeros(texts, 1).index_add(0, windows, weight)
    return torch.nn.functional.normalize(pooled, dim=-1) if body.normalize else pooled


def embed(body: Body, params: Params, batch: dict[str, Tensor], folded: Params | None = None, cache: bool = True
          ) -> Tensor:
    """One embedding per text, [texts, hidden], computed functionally from `params` (or `folded`);
    a batch of windows (`tokenize` with long_texts=windows) gives one per text, not per window."""
    windows = batch.get(WINDOWS_KEY)
    inputs = {k: v for k, v in batch.items() if k != WINDOWS_KEY}
    return pool(body, hidden_states(body, params, inputs, folded, cache), inputs["attention_mask"], windows)


def embed_tokens(body: Body, params: Params, batch: dict[str, Tensor], folded: Params | None = None) -> Tensor:
    """One embedding per token, [batch, tokens, hidden] (token tasks such as NER)."""
    states = hidden_states(body, params, batch, folded)
    return torch.nn.functional.normalize(states, dim=-1) if body.normalize else states


def token_counts(body: Body, texts: list[str]) -> list[int]:
    """Tokens of each text, untruncated and without special tokens: the key that length-sorted
    batching sorts by."""
    if not texts:
        return []
    texts, _ = capped(body, list(texts))
    return body.tokenizer(texts, add_special_tokens=False, return_length=True, verbose=False)["length"]


def by_tokens(body: Body, texts: list[str]) -> list[int]:
    """Indices of `texts`, fewest tokens first (untruncated, so long texts sort by their windows):
    batches of neighbours in this order pad little. Characters are a poor key for it: in batches of
    64, a character-sorted pass pads BANKING77's test texts to 29% more tokens than it reads and
    WNUT-16 tweets (URLs, emoji, hashtags) to 42% more; token order, 4% and 3% (experiments/BENCHMARKS.md,
    "Prediction throughput"). The extra tokenisation costs ~3% of a pass."""
    lengths = token_counts(body, texts)
    return sorted(range(len(texts)), key=lengths.__getitem__)


@torch.no_grad()
def embed_texts(body: Body, params: Params, texts: list[str], batch_size: int = 64, progress: str | None = None,
                cache: bool = True, what: str | None = None) -> Tensor:
    """Embed many texts without gradients, [len(texts), hidden], in batches sorted by token count
    (`by_tokens`) so padding stays small (all texts sorted together: sorting in slices pads more), on
    the LoRA folded into the base weights (`folded_lora`). `progress`: a progress bar with this description;
    `cache`: see `hidden_states`; `what`: name the texts to warn, after the pass, how many were cut
    (`warn_truncated`'s warning, counted from the pass's own tokenisation)."""
    from llm_meta.progress import progress_bar

    order = by_tokens(body, texts)
    out = torch.empty(len(texts), body.hidden_size, device=body.device)
    starts = progress_bar(range(0, len(order), batch_size), desc=progress, unit="batch", leave=False,
                          enabled=progress is not None and len(order) > batch_size)
    cut = Cut()
    with folded_pass(body, params) as folded:  # no gradient here: the LoRA can be folded in
        for start in starts:
            idx = order[start : start + batch_size]
            batch, batch_cut = tokenize_counted(body, [texts[i] for i in idx])
            cut += batch_cut
            out[idx] = embed(body, params, batch, folded, cache).float()
    if what is not None:
        report_cut(body, cut, what)
    return out
