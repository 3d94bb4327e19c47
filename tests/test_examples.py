"""Every script in examples/ runs, on a tiny random model, so none can rot (the real model is the
default each script uses; tests/test_docs.py runs the README's example on it)."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_the_examples_are_short():
    assert EXAMPLES, "no examples found"
    for script in EXAMPLES:
        assert len(script.read_text().splitlines()) <= 40, f"{script.name} is over 40 lines"


TINY = {"task_family": ["--steps", "4"]}  # a few meta-steps are enough to run every line


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_the_example_runs(script, tiny_bert_dir, tmp_path):
    done = subprocess.run([sys.executable, str(script), "--model", str(tiny_bert_dir), *TINY.get(script.stem, [])],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the example printed nothing"
