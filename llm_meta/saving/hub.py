"""Hugging Face Hub conventions: `from_pretrained` / `save_pretrained` / `push_to_hub` for task
models, the upload's staged copy (no local paths, no support set unless asked), and downloads.
`push_to_hub` and `hf:` downloads are the only network calls here. The card every folder carries
is `llm_meta.saving.card`.
"""

from __future__ import annotations

import re
from pathlib import Path, PureWindowsPath
from typing import Any

from llm_meta.saving.card import CARD_FILE, write_model_card
from llm_meta.saving.checkpoint import MANIFEST, METADATA_FILE, read_metadata, verify_folder, write_manifest


# What a task model folder holds (`llm_meta.saving.checkpoint.KNOWN_FILES` less the checkpoint files): the
# only files a Hub download fetches, whatever else the repository has.
TASK_MODEL_FILES = ["adapter_config.json", "adapter_model.safetensors", "head.safetensors", "labels.json",
                    "llm_meta.json", "manifest.json", "README.md", "support.jsonl", "meta_sgd_rates.safetensors",
                    "hypernet.safetensors"]
SUPPORT_FILE = "support.jsonl"  # the user's labelled examples: uploaded only when asked


# An absolute or home-relative path at the start of a string or after a space, "=", "(", a quote or
# a comma: /x/y, ~/x, C:\x, file:///x, support=/home/x.csv.
LOCAL_PATH = re.compile(r"(?:(?<=[\s=(\"',])|^)(?:file://)?(?:~|[A-Za-z]:)?[/\\][^\s\"',)]*")
NOT_PATHS = ("labels", "label_names")  # class names are data: "/start" may be an intent, never touched


def _no_local_paths(value: Any, key: str = "") -> Any:
    """`value` with every absolute or home-relative path in its strings cut to its last part (a
    folder of the uploader's machine says nothing to others, and tells them who and where);
    label names are left as they are."""
    if key in NOT_PATHS:
        return value
    if isinstance(value, dict):
        return {k: _no_local_paths(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_local_paths(v, key) for v in value]
    if isinstance(value, str):
        return LOCAL_PATH.sub(lambda m: PureWindowsPath(m.group(0)).name or m.group(0), value)
    return value


def stage_for_upload(folder: str | Path, staged: Path, include_support: bool = False) -> Path:
    """A copy of a saved folder as it may be shared: verified first, without `support.jsonl` (the
    user's labelled training texts) unless `include_support`, with absolute local paths cut to
    their last part in `llm_meta.json` and `adapter_config.json`, its card and manifest written anew.

    Raises:
        CheckpointError: `folder` is not an intact llm_meta folder.
    """
    import json
    import shutil

    folder = Path(folder)
    metadata = read_metadata(folder)
    verify_folder(folder)
    staged.mkdir(parents=True)
    listed = json.loads((folder / MANIFEST).read_text())
    for name in listed:
        if name not in (CARD_FILE, METADATA_FILE) and (include_support or name != SUPPORT_FILE):
            shutil.copyfile(folder / name, staged / name)
    config = staged / "adapter_config.json"
    if config.is_file():
        config.write_text(json.dumps(_no_local_paths(json.loads(config.read_text())), indent=2))
    metadata = _no_local_paths(metadata)
    (staged / METADATA_FILE).write_text(json.dumps(metadata, indent=1, default=str))
    write_model_card(staged, metadata)
    write_manifest(staged)
    return staged


def push_to_hub(folder: str | Path, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload llm_meta model", include_support: bool = False) -> str:
    """Upload a saved folder (card, adapter, head, labels, metadata, manifest) to the Hub model repo
    `repo_id`, creating it if needed (`private` as given, else the Hub's default for the account,
    which is public); returns the commit URL. What goes up is `stage_for_upload`'s copy: no
    `support.jsonl` unless `include_support`, no absolute local paths. Needs network and a token
    (`huggingface-cli login` or `token=`)."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        staged = stage_for_upload(folder, Path(tmp) / "model", include_support)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(staged), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


HUB_PREFIX = "hf:"  # a Hub model repository, said explicitly, as tasks say hf:<dataset id>


def resolve_pretrained(name_or_path: str | Path, token: str | None = None, revision: str | None = None) -> Path:
    """The local folder of a task model: `name_or_path` itself, or for `hf:<org>/<name>` the Hub
    repository's task-model files (`TASK_MODEL_FILES` only, at `revision` when given: pin a commit
    to get exactly what you checked) downloaded into the Hub cache.

    Anything without the `hf:` prefix is a local path, so a typo in a folder name is an error
    naming it, never a download of a stranger's repository that happens to have that name.

    Raises:
        FileNotFoundError: a local path that does not exist.
    """
    text = str(name_or_path)
    if not text.startswith(HUB_PREFIX):
        path = Path(text).expanduser()
        if not path.exists():
            hint = f" (a Hub repository is written {HUB_PREFIX}{text})" if text.count("/") == 1 and \
                not text.startswith((".", "/", "~")) else ""
            raise FileNotFoundError(f"no model folder {text}{hint}")
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(text[len(HUB_PREFIX):], repo_type="model", token=token, revision=revision,
                                  allow_patterns=TASK_MODEL_FILES))


class HubMixin:
    """Hugging Face names for a task model class that has `save(folder)` and `load(folder)`:
    `save_pretrained`, `from_pretrained` (a folder or a Hub id) and `push_to_hub`."""

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:  # implemented by the task model class
        raise NotImplementedError

    @classmethod
    def load(cls, folder: str | Path, trust_remote_code: bool = False) -> Any:  # implemented by the class
        raise NotImplementedError

    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the folder (the same as `save`)."""
        return self.save(folder, overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, token: str | None = None, revision: str | None = None,
                        trust_remote_code: bool = False) -> Any:
        """Load from a local folder, or from `hf:<org>/<name>`, a Hub model repo written by
        `push_to_hub` (`resolve_pretrained`: only its task-model files, at `revision` if given).
        `trust_remote_code`: the caller's choice only, never the folder's."""
        return cls.load(resolve_pretrained(name_or_path, token, revision), trust_remote_code=trust_remote_code)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    include_support: bool = False) -> str:
        """Save to a temporary folder and upload it to the Hub model repo `repo_id` (see the module's
        `push_to_hub`: the support set only with `include_support`); the commit URL."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return push_to_hub(self.save(Path(tmp) / "model"), repo_id, private=private, token=token,
                               include_support=include_support)
