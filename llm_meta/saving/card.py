"""Model cards: a `README.md` in every saved adapter and task-model folder, whose YAML front
matter is what the Hugging Face Hub reads (`library_name: peft`, `base_model`, `tags`, `datasets`,
`metrics`), written with `huggingface_hub`'s `ModelCard`; its text says how the folder was made
and how to load it. Uploads and downloads are `llm_meta.saving.hub`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from llm_meta.data.kinds import SEQUENCE, kind_of_format
from llm_meta.data.tasks import IN_MEMORY

CARD_FILE = "README.md"
# Bundled model names (llm_meta.modeling.model_files.BUNDLED_MODELS / BUNDLED_GGUF) and the Hub repositories they come from.
HUB_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
           "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# Files beside the PEFT adapter that plain `PeftModel.from_pretrained` does not read.
EXTRA_FILES = {"meta_sgd_rates.safetensors": "Meta-SGD's learned inner learning rates",
               "hypernet.safetensors": "the hypernetwork that writes a LoRA from a support set",
               "head.safetensors": "the classification head (one row per label in labels.json)"}


def hub_model_id(name: str) -> str | None:
    """The Hub id of a base model name: bundled names mapped, `org/name` ids kept, local paths None."""
    if name in HUB_IDS:
        return HUB_IDS[name]
    if Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return None
    return name


def model_card(metadata: dict[str, Any], files: list[str]) -> ModelCard:
    """The card of a saved folder from its llm_meta metadata (`llm_meta.json`) and file names."""
    # A task model's kind is its format's; a meta-learned start keeps the sequence kind's tags.
    kind = kind_of_format(metadata.get("format", "")) or SEQUENCE
    task_model = "labels" in metadata
    base = metadata.get("base_model", "?")
    tags = ["llm_meta", "lora", "few-shot", "meta-learning",
            kind.pipeline_tag]
    if metadata.get("algorithm"):
        tags.append(str(metadata["algorithm"]))
    task = metadata.get("task")
    datasets = [str(task)[3:] if str(task).startswith("hf:") else Path(str(task)).name] if task_model and task \
        and task != IN_MEMORY else [] if task_model else sorted(metadata.get("tasks") or [])
    data = ModelCardData(library_name="peft", base_model=hub_model_id(base), tags=tags, datasets=datasets or None,
                         metrics=[kind.metric])
    lines = [f"# {kind.title if task_model else 'Meta-learned LoRA start'}"
             f" on `{base}`", "", "Made with llm_meta (few-shot fine-tuning of language models by meta-learning "
             "LoRA adapters).", "", "## How it was made", ""]
    if task_model:
        lines += [f"- adapted from: `{metadata.get('start', 'untrained')}` (meta-learned start, or the untrained LoRA)",
                  f"- task: `{task}`, {metadata.get('support_size', '?')} support "
                  f"{kind.unit}, labels: {', '.join(map(str, metadata['labels'][:20]))}"
                  f"{' ...' if len(metadata['labels']) > 20 else ''}",
                  f"- adaptation: {_inner(metadata.get('adapt_config', {}).get('inner', {}))}"]
        if selection := metadata.get("start_selection"):
            fits = selection["leave_one_out_fit"]
            lines.append((f"- start chosen on the support set: {selection['chosen']} (leave-one-out fit, higher is "
                          f"better: {', '.join(f'{k} {v:.3f}' if v is not None else f'{k} none (no class with two examples)' for k, v in fits.items())})" if fits else
                          f"- start: {selection['chosen']}, the task's class names being the start's family's")
                         + (f" (matched by meaning: {', '.join(f'{a} → {b}' for a, b in selection['name_match'].items())})"
                            if selection.get("name_match") else "")
                         + (f", then {selection['inner_steps']} inner steps" if "inner_steps" in selection else ""))
    else:
        step0, kept = metadata.get("step0_validation_accuracy"), metadata.get("validation_accuracy")
        lines += [f"- algorithm: `{metadata.get('algorithm', '?')}`; meta-training tasks: "
                  f"{', '.join(f'`{t}`' for t in sorted(metadata.get('tasks') or [])) or '?'}",
                  f"- kept: step {metadata.get('step', '?')}, interpolation α = {metadata.get('alpha', 1.0)} "
                  "(chosen on meta-validation; step 0 is the untrained start and always a candidate)"]
        if kept is not None and step0 is not None:
            lines.append(f"- meta-validation score: {100 * kept:.1f} kept vs {100 * step0:.1f} for the untrained "
                         f"start ({100 * (kept - step0):+.1f})")
    lines += ["", "## How to load", "", "```python"]
    if task_model:
        cls = kind.model_class
        lines += [f"from llm_meta import {cls}", "", f'model = {cls}.from_pretrained("hf:org/name")  # or a local folder',
                  kind.usage]
    else:
        lines += ["from llm_meta import FewShotClassifier", "",
                  "# adapt the start to your task from a few labelled examples per class",
                  'clf = FewShotClassifier.from_pretrained("path/to/this/folder").fit(texts, labels)']
    lines += ["```", "", "It is a standard PEFT LoRA adapter: `peft.PeftModel.from_pretrained(base, folder)` loads "
              "the LoRA weights."]
    extra = [f"`{name}` ({what})" for name, what in EXTRA_FILES.items() if name in files]
    if extra:
        lines += ["Plain PEFT ignores " + ", ".join(extra) + ": load the folder with llm_meta to use them."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _inner(inner: dict[str, Any]) -> str:
    if not inner:
        return "?"
    return (f"{inner.get('steps')} {inner.get('optimizer')} steps at lr {inner.get('lr')}, head "
            f"{inner.get('head_init')}, label names as examples ×{inner.get('label_examples', 0)}")


def write_model_card(folder: Path, metadata: dict[str, Any]) -> None:
    """Write `folder/README.md` for the files already in `folder`."""
    model_card(metadata, sorted(p.name for p in folder.iterdir())).save(str(folder / CARD_FILE))
