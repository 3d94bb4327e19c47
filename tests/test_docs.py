"""The README and docs/ stay true to the code: every documented `llm-meta` line parses with the
real parser, every Python block runs (the README's with its printed output checked; the docs'
blocks in order, page by page, in a folder holding the files they name, on the real bundled
model), every relative link resolves, and the front page stays a front page."""

import re
import shlex
import shutil
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


def test_the_front_pages_stay_short_and_the_lab_stays_out_of_the_product():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
    assert len((ROOT / "docs" / "results.md").read_text().splitlines()) <= 250
    # what a maintainer reruns (quality, peers, starts, three speeds); studies: experiments/
    assert len(list((ROOT / "benchmarks").glob("*.py"))) <= 6
    for source in [*(ROOT / "llm_meta").rglob("*.py"), *(ROOT / "recipes").rglob("*.py"),
                   *(ROOT / "recipes").rglob("*.yaml")]:
        text = source.read_text(encoding="utf-8").lower()
        assert "design notes" not in text and "../shared" not in text, f"{source.relative_to(ROOT)} cites a note " \
                                                                       f"outside the repository"


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


def write_user_folder(folder: Path) -> None:
    """The files the docs' Python blocks name, as a user would have them: intents with their own
    column names (6 MCID intents), a small NER file, and a meta-trained MiniLM adapter (a one-step run)."""
    import csv

    import llm_meta
    from llm_meta.data.ner import load_ner

    mcid = llm_meta.load_task("mcid")
    classes = sorted(set(mcid.split("train")["label"]))[:6]
    for name, split, per_class in (("my_intents.csv", "train", 1000), ("my_support.csv", "train", 5),
                                   ("my_test.csv", "test", 1000)):
        rows, seen = [], dict.fromkeys(classes, 0)
        for text, label in zip(mcid.split(split)["text"], mcid.split(split)["label"]):
            if label in seen and seen[label] < per_class:
                rows.append((text, label))
                seen[label] += 1
        with open(folder / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("utterance", "intent"), *rows])
    sentences = [s for s in load_ner("wnut16") if any(t != "O" for t in s.tags)][:30]
    (folder / "my_ner.conll").write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(s.tokens, s.tags))
                                                      for s in sentences) + "\n", encoding="utf-8")
    tiny = {"tasks": "[mcid]", "validation.tasks": "[mcid]", "validation.class_role": "null",
            "validation.split": "validation", "validation.n_way": 3, "validation.k_shot": 2, "validation.q_query": 2,
            "validation.episodes": 1, "episodes.n_way": 3, "episodes.k_shot": 2, "episodes.q_query": 2,
            "inner.steps": 1, "outer.steps": 1, "validate_every": 1, "interpolation": "[1.0]", "test.episodes": 0,
            "output_dir": "runs/meta_train"}
    done = subprocess.run([sys.executable, "-c", "import sys, llm_meta; llm_meta.meta_train("
                           "'recipes/configs/meta_train.yaml', *sys.argv[1:])", *[f"{k}={v}" for k, v in tiny.items()]],
                          cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_every_python_block_of_the_docs_runs(tmp_path):
    pages = {page: found for page in PAGES[1:] if (found := blocks(page, "python"))}  # README: its own test
    assert len(pages) >= 5, sorted(str(p.relative_to(ROOT)) for p in pages)
    user = tmp_path / "user"
    user.mkdir()
    write_user_folder(user)
    for page, found in pages.items():
        folder = tmp_path / page.stem
        shutil.copytree(user, folder)  # each page starts from the same files; its blocks run in order
        for i, body in enumerate(found):
            done = subprocess.run([sys.executable, "-c", body], cwd=folder, capture_output=True, text=True,
                                  timeout=600)
            assert done.returncode == 0, f"{page.relative_to(ROOT)} python block {i}:\n{done.stderr[-3000:]}"
