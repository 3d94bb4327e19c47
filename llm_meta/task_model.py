"""What the two task models share: `from_pretrained` (a saved task model, or a start to `fit`: a
meta-trained adapter or a body) and the folder of an adapted task model, whatever its kind: a
standard PEFT adapter (the adapted LoRA), `head.safetensors` (the adapted head), `labels.json`,
`support.jsonl` (the support set it was adapted on, replayed by `llm_meta.online.continue_adapt`),
`llm_meta.json` and `manifest.json` (checksums).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from safetensors.torch import save_file

from llm_meta.data.episodes import Examples
from llm_meta.io.outputs import claim
from llm_meta.meta.heads import HEAD_KEYS
from llm_meta.meta.spans import SPAN_KEYS
from llm_meta.meta.starts import Start
from llm_meta.modeling.body import Body, Params, lora_params
from llm_meta.modeling.loading import load_body, recorded_model_config
from llm_meta.modeling.model_files import BUNDLED_GGUF, BUNDLED_MODELS, BUNDLED_SPLIT_ZIPS
from llm_meta.saving.checkpoint import (ADAPTER_FILES, ADAPTER_FORMAT, METADATA_FILE as METADATA, CheckpointError,
                                        read_metadata, read_tensors, readable_folder, save_adapter, verify_folder)
from llm_meta.saving.hub import HUB_PREFIX, HubMixin


BUNDLED_NAMES = {*BUNDLED_MODELS, *BUNDLED_GGUF, *BUNDLED_SPLIT_ZIPS}  # bodies from_pretrained knows by name


class PretrainedMixin(HubMixin):
    """`from_pretrained` for both task models: a saved one, ready to predict, or a start to `fit`."""

    config_class: ClassVar[type]  # AdaptConfig or TaggerConfig: the adaptation `fit` runs

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, token: str | None = None, revision: str | None = None,
                        trust_remote_code: bool = False, cfg: Any = None) -> Any:
        """A saved task model, ready to predict: a folder written by `save`, or `hf:<org>/<name>` (a
        Hub repository written by `push_to_hub`, at `revision` if given). Or a start to `fit`: a
        meta-trained adapter folder, or a body (a bundled name such as all-MiniLM-L6-v2, a model
        folder, a .gguf file); `cfg` then sets the adaptation (default: the class's config,
        `AdaptConfig()` or `TaggerConfig()`).

        Raises:
            FileNotFoundError: a name that is neither a bundled model nor an existing path.
        """
        kind = pretrained_kind(name_or_path)
        if kind == "task model":
            return super().from_pretrained(name_or_path, token, revision, trust_remote_code)
        start = start_config(kind, name_or_path, cfg or cls.config_class())
        return cls(None, {}, [], start.inner.scale, {}, fit_config=start, trust_remote_code=trust_remote_code)


SUPPORT_FILE = "support.jsonl"


def start_config(kind: str, name_or_path: str | Path, cfg: Any) -> Any:
    """A copy of an adaptation config (AdaptConfig or TaggerConfig) that starts from `name_or_path`:
    a meta-trained adapter (with its own body) or a body, as `pretrained_kind` says."""
    start = dataclasses.replace(cfg)
    if kind == "adapter":
        start.adapter = str(Path(name_or_path).expanduser())
    else:
        start.model = dataclasses.replace(start.model, name=str(name_or_path))
    return start


def pretrained_kind(name_or_path: str | Path) -> Literal["task model", "adapter", "body"]:
    """What `from_pretrained` was given: a task model (a folder `save` wrote, or `hf:<org>/<name>`),
    a meta-trained adapter folder, or a body (a bundled model name, a model folder, a .gguf file).

    Raises:
        FileNotFoundError: a name that is neither a bundled model nor an existing path.
    """
    text = str(name_or_path)
    folder = Path(text).expanduser()
    if text.startswith(HUB_PREFIX):
        return "task model"
    if (folder / METADATA).is_file():
        return "adapter" if read_metadata(folder).get("format") == ADAPTER_FORMAT else "task model"
    if text in BUNDLED_NAMES or folder.exists() or text.endswith(".gguf"):
        return "body"
    hint = f"; a Hub repository is written {HUB_PREFIX}{text}" if text.count("/") == 1 and \
        not text.startswith((".", "/", "~")) else ""
    raise FileNotFoundError(f"no model folder {text}, and not a bundled model ({', '.join(sorted(BUNDLED_NAMES))})"
                            f"{hint}")


def write_support(path: Path, support: Examples, labels: list[str]) -> None:
    """The support set as JSON lines of {"text", "label"} (label names, so the file reads on its own)."""
    with path.open("w", encoding="utf-8") as f:
        for text, y in zip(support.texts, support.labels):
            f.write(json.dumps({"text": text, "label": labels[y]}, ensure_ascii=False) + "\n")


def read_support(path: Path, labels: list[str]) -> Examples:
    index = {name: i for i, name in enumerate(labels)}
    # Split at "\n" only: str.splitlines would also split at U+2028, U+2029 and U+0085, which
    # json.dumps(ensure_ascii=False) leaves raw inside a text.
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not JSON lines ({err})") from err
    if not all(isinstance(r, dict) and isinstance(r.get("text"), str) and isinstance(r.get("label"), str)
               for r in rows):
        raise CheckpointError(f"{path}: every line must be an object with a string text and label")
    unknown = sorted({r["label"] for r in rows} - set(index))
    if unknown:
        raise CheckpointError(f"{path} has labels the model does not know: {', '.join(unknown[:10])}")
    return Examples([r["text"] for r in rows], [index[r["label"]] for r in rows])


def save_task_model(body: Body, params: Params, labels: list[str], scale: float, metadata: dict[str, Any],
                    fmt: str, folder: str | Path, extra_files: dict[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """A task model folder (classifier or NER tagger): PEFT adapter, head, labels, metadata,
    checksums; claimed first (`llm_meta.io.outputs.claim`: never over a folder llm_meta did not write,
    over one of ours only with `overwrite`)."""
    parts = Start.of(params)  # LoRA and the head (a decomposed NER head has its span rows too)
    lora = parts.lora
    head = {k: parts.head[k].detach().contiguous().cpu() for k in (*HEAD_KEYS, *SPAN_KEYS) if k in parts.head}
    meta = {**metadata, "format": fmt, "labels": labels, "scale": scale}
    with claim(folder, overwrite=overwrite):
        return save_adapter(body, lora, folder, meta, extra_files={
            "head.safetensors": lambda path: save_file(head, str(path)),
            "labels.json": lambda path: path.write_text(json.dumps(labels, ensure_ascii=False, indent=1)),
            **(extra_files or {}),
        })


TASK_MODEL_FILES = ("head.safetensors", "labels.json")  # beside the adapter's own files


def load_task_model(folder: str | Path, fmt: str, what: str, trust_remote_code: bool = False
                    ) -> tuple[Body, Params, list[str], float, dict[str, Any], Path]:
    """(body, params, labels, scale, metadata, the folder read) of a folder written by
    `save_task_model` with format `fmt`. The manifest must list every file a task model needs, the
    labels must agree with the metadata, and the head must have one finite row per label.

    Raises:
        CheckpointError: a missing, foreign, corrupt or inconsistent folder, or one of another format.
    """
    folder = readable_folder(folder)
    meta = read_metadata(folder)
    if meta.get("format") != fmt:
        raise CheckpointError(f"{folder} is an llm_meta {meta.get('format', 'folder')}, not {what}")
    verify_folder(folder, (*ADAPTER_FILES, *TASK_MODEL_FILES))
    try:
        labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{folder}: labels.json is not JSON ({err})") from err
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)
            and labels == meta.get("labels") and len(set(labels)) == len(labels)):
        raise CheckpointError(f"{folder}: labels.json is not the list of distinct label names that {METADATA} records")
    head = read_tensors(folder / "head.safetensors")
    _check_head(folder, head, len(labels))
    read_tensors(folder / "adapter_model.safetensors")  # readable and finite before peft is handed it
    body = load_body(recorded_model_config(meta["model"]), adapter=folder, trust_remote_code=trust_remote_code)
    params = {**lora_params(body), **{k: v.to(body.device) for k, v in head.items()}}
    return body, params, list(labels), float(meta["scale"]), meta, folder


def _check_head(folder: Path, head: dict[str, torch.Tensor], n_labels: int) -> None:
    """head.weight [labels, hidden] and head.bias [labels] (and a decomposed NER head's detection
    rows, span.weight [2, hidden] and span.bias [2]), nothing else."""
    rows = {"head.weight": n_labels, "head.bias": n_labels, "span.weight": 2, "span.bias": 2}
    wrong = sorted(set(head) - set(rows)) or [k for k in HEAD_KEYS if k not in head]
    if wrong:
        raise CheckpointError(f"{folder}: head.safetensors has tensors {sorted(head)}, expected {list(HEAD_KEYS)} "
                              f"(and {list(SPAN_KEYS)} for a decomposed NER head)")
    for key, tensor in head.items():
        expected_dims = 2 if key.endswith("weight") else 1
        if tensor.dim() != expected_dims or tensor.shape[0] != rows[key]:
            raise CheckpointError(f"{folder}: {key} has shape {list(tensor.shape)}, but labels.json has {n_labels} "
                                  f"labels: the head and the labels do not belong together")
