"""The errors llm_meta raises for things a user can fix, in one small module: the command line
catches them (one line, exit status 2) without importing the libraries that raise them."""


class ConfigError(ValueError):
    """A config file or override that does not fit the recipe's dataclass."""


class TaskError(ValueError):
    """A task that cannot be used: names the file or dataset and what is wrong with it."""


class ModelLoadError(RuntimeError):
    """A model name that is neither bundled, a usable local folder, nor reachable on the Hub."""


class CheckpointError(RuntimeError):
    """A checkpoint or adapter folder that is missing, corrupt, or not written by llm_meta."""


class OutputError(ValueError):
    """An output target that cannot be written without losing something, or that another process
    is writing: names the path, why, and what to do."""


class ColumnError(TaskError):
    """A file without the text or label column it was read with. Its hint is written in the
    caller's syntax: `text_column=<name>` for Python (the message), `--text-column <name>` on the
    command line (`cli_message`)."""

    def __init__(self, where: str, role: str, column: str, columns: list[str]) -> None:
        self.where, self.role, self.column, self.columns = where, role, column, list(columns)
        super().__init__(self._message(f"{role}_column=<name>"))

    def _message(self, how: str) -> str:
        return f"{self.where}: no {self.role} column '{self.column}' (columns: {', '.join(self.columns)}); pass {how}"

    def cli_message(self) -> str:
        if self.role in ("tokens", "tags"):  # NER columns are config keys (TaggerConfig), not flags
            return self._message(f"the override {self.role}_column=<name>")
        return self._message(f"--{self.role}-column <name>")
