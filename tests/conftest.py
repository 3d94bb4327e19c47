"""Shared fixtures. Tests never reach the Hub: offline mode is forced before any HF import."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Each pytest worker gets its share of the cores (`make test`: two workers on two cores, one thread
# each), and the subprocesses many tests start inherit it. Two processes of two OpenMP threads each
# on two cores wait for each other: the suite ran ~12 minutes that way (llm_meta/threads.py).
_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))
# Converted models and SMLMT indexes go to a throw-away cache, not the user's.
os.environ.setdefault("LLM_META_CACHE", __import__("tempfile").mkdtemp(prefix="llm_meta_cache_"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from llm_meta.modeling.body import Body, ModelConfig
from llm_meta.modeling.loading import load_body
from tests.tiny import make_tiny_model  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def minilm() -> Body:
    """The real bundled all-MiniLM-L6-v2 with a fresh LoRA (shared: tests must not mutate it)."""
    return load_body(ModelConfig())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model("bert", tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_mpnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model("mpnet", tmp_path_factory.mktemp("tiny_mpnet"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model("gpt2", tmp_path_factory.mktemp("tiny_gpt2"))
