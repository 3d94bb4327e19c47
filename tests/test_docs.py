"""The README and docs/ stay true to the code: every documented `llm-meta` line parses with the
real parser, every Python block compiles and the README's runs, every relative link resolves,
and the front page stays a front page."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from llm_meta.cli import parse_args

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(page.read_text(encoding="utf-8")) if lang == language]


def commands(script: str) -> list[list[str]]:
    """Each `llm-meta ...` command of a shell block, as argv (continuations joined, comments, pipes
    and `&&` chains split off, `.venv/bin/` dropped)."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        if "<<" in line:  # a heredoc's opening line; its body is not shell
            continue
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "|"]:
            if word in ("|", "&&", ";"):
                if command and command[0].rsplit("/", 1)[-1] == "llm-meta":
                    found.append(command[1:])
                command = []
            else:
                command.append(word)
    return found


def test_the_front_pages_stay_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
    assert len((ROOT / "docs" / "results.md").read_text().splitlines()) <= 250


def test_every_documented_command_line_parses():
    seen = 0
    for page in PAGES:
        for script in blocks(page, "bash"):
            for argv in commands(script):
                try:
                    parse_args(argv)
                except SystemExit as exit_:  # argparse's error: name the page and the line
                    raise AssertionError(f"{page.relative_to(ROOT)}: llm-meta {' '.join(argv)} does not parse") from exit_
                seen += 1
    assert seen >= 30  # the pages hold more; a broken extractor would find none


def test_the_parser_rejects_what_the_docs_test_must_catch():
    with pytest.raises(SystemExit):
        parse_args(["adapt", "--support", "x.csv", "--no-such-flag"])
    assert commands("echo hi | .venv/bin/llm-meta predict --model m  # comment\n") == [["predict", "--model", "m"]]


def test_the_generated_reference_pages_match_the_code():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import generate
    finally:
        sys.path.remove(str(ROOT / "docs"))
    for path, make in generate.PAGES.items():
        assert path.read_text(encoding="utf-8") == make(), f"{path.relative_to(ROOT)} is stale: run docs/generate.py"


def test_every_python_block_compiles():
    for page in PAGES:
        for i, body in enumerate(blocks(page, "python")):
            compile(body, f"{page.relative_to(ROOT)} python block {i}", "exec")


def test_every_relative_link_resolves():
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    for page in PAGES:
        for target in link.findall(page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"


def test_the_readme_python_example_runs(tmp_path):
    # The README's example, as written, on the real bundled model.
    [example] = blocks(ROOT / "README.md", "python")
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == "['donate', 'greet']"  # what the comment in the README says
    assert (tmp_path / "my_model" / "adapter_model.safetensors").is_file()
