"""The import contracts of pyproject.toml (`[tool.importlinter]`) hold: the library never imports
recipes/, its modules form no cycle (imports inside functions count), the algorithm core imports
no text library, and imports go downward through the layers listed there. Checked with
import-linter, whose analysis also runs here on a contract that must break (so a checker that
saw no imports could not pass)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    done = lint()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "4 kept, 0 broken" in done.stdout


def test_a_broken_contract_is_reported(tmp_path):
    # adaptation imports the model layer: a contract forbidding it must break
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["llm_meta"]\n\n[[tool.importlinter.contracts]]\n'
                      'name = "must break"\ntype = "forbidden"\nsource_modules = ["llm_meta.meta.adaptation"]\n'
                      'forbidden_modules = ["llm_meta.modeling.models"]\n')
    done = lint(str(config))
    assert done.returncode == 1 and "BROKEN" in done.stdout, done.stdout[-2000:]
