import subprocess
import sys

import pytest

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


def test_help_of_every_command_imports_no_torch():
    """`llm-meta --help` and each `llm-meta COMMAND --help` answer before torch, transformers or
    datasets are imported (they take seconds to import)."""
    from llm_meta.cli import build_parser

    commands = list(build_parser()._subparsers._group_actions[0].choices)
    probe = ("import sys\nfrom llm_meta.cli import main\nfor argv in [['--help']] + [[c, '--help'] for c in sys.argv[1:]]:\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe, *commands], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert len(commands) >= 10


def test_thread_choice_follows_option_then_variable_then_the_idle_cores(monkeypatch):
    from llm_meta import threads

    monkeypatch.setenv("LLM_META_THREADS", "3")
    assert threads.choose_threads("2")[0] == 2  # --threads first
    assert threads.choose_threads(None)[0] == 3  # then the variable
    monkeypatch.setenv("LLM_META_THREADS", "many")
    with pytest.raises(ValueError, match="LLM_META_THREADS='many': give a number of threads"):
        threads.choose_threads(None)
    monkeypatch.setenv("LLM_META_THREADS", "auto")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert 1 <= threads.choose_threads(None)[0] <= threads.usable_cores()
    # One competing process keeps about one core busy: auto leaves that core to it.
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.5)
        assert threads.busy_cores(0.5) >= 0.6
        assert threads.choose_threads(None)[0] <= max(1, threads.usable_cores() - 1)
    finally:
        hog.kill()
