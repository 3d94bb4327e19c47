"""The import contracts of pyproject.toml (`[tool.importlinter]`) hold: the library never imports
recipes/, its modules form no cycle (imports inside functions count), the algorithm core imports
no text library, and imports go downward through the layers listed there. Checked with
import-linter, whose analysis also runs here on a contract that must break (so a checker that
saw no imports could not pass)."""

import re
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
                      'forbidden_modules = ["llm_meta.modeling.forward"]\n')
    done = lint(str(config))
    assert done.returncode == 1 and "BROKEN" in done.stdout, done.stdout[-2000:]


def test_only_the_task_kind_modules_tell_the_kinds_apart():
    # The kinds are told apart in llm_meta/data/kinds.py and llm_meta/meta/kinds.py; the examples
    # types name theirs, and the NER modules are NER's. No other module may branch on a flag, a
    # kind constant or an isinstance of the examples.
    allowed_token = {"data/kinds.py", "meta/kinds.py", "data/episodes.py", "tagger.py"}
    for path in sorted((ROOT / "llm_meta").rglob("*.py")):
        name = path.relative_to(ROOT / "llm_meta").as_posix()
        text = path.read_text(encoding="utf-8")
        assert "token_level" not in text, name
        assert "isinstance" not in text or "WordExamples)" not in text, name
        if name not in allowed_token:
            assert not re.search(r"\bTOKEN\b", text), f"{name} names the token kind"


def test_no_module_of_the_library_or_a_recipe_is_over_400_lines():
    long = {p.relative_to(ROOT).as_posix(): n for p in [*(ROOT / "llm_meta").rglob("*.py"), *(ROOT / "recipes").glob("*.py")]
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long
