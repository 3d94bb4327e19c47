import subprocess
import sys

from llm_meta.cli import main


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "llm_meta.cli", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("tasks", "episode", "meta-train", "adapt", "predict", "evaluate", "benchmark"):
        assert cmd in out.stdout


def test_tasks_lists_real_counts(capsys):
    main(["tasks"])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) >= {"clinc", "hwu", "stackoverflow", "dbpedia", "banking77", "mcid", "tweet_sentiment"}
    assert rows["banking77"][1:5] == ["held_out", "77", "-", "9003"]
    assert rows["clinc"][2:5] == ["150", "120/30/0", "18000"]
    assert rows["tweet_sentiment"][2] == "3"


def test_bad_input_is_one_line_error_not_traceback():
    out = subprocess.run([sys.executable, "-m", "llm_meta.cli", "episode", "mcid", "--n-way", "20"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "error: task 'mcid'" in out.stderr and "Traceback" not in out.stderr
