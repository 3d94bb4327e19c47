"""`llm-meta starts`: a start built by its recipe into the cache, listed with what it is; a corrupt
or foreign folder in the cache listed as not usable; a second build refused without --overwrite."""

import json

import pytest
import yaml

from llm_meta.cli import main as cli_main
from llm_meta.start_library import built_starts, start_recipes
from tests.test_meta_train import ROOT, tiny_overrides, toy_csv  # noqa: F401  (fixture: a small labelled CSV)


def test_a_start_is_built_listed_and_a_corrupt_or_foreign_one_refused(tiny_bert_dir, toy_csv, tmp_path,  # noqa: F811
                                                                     monkeypatch, capsys):
    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path / "cache"))
    recipes = tmp_path / "starts.yaml"
    overrides = [o for o in tiny_overrides(tiny_bert_dir, toy_csv, tmp_path) if not o.startswith("output_dir=")]
    # the recipe's config beside the recipes file, named relative to it (the working folder is elsewhere)
    (tmp_path / "train.yaml").write_text((ROOT / "recipes/configs/meta_train.yaml").read_text())
    recipes.write_text(yaml.safe_dump({"toy": {"family": "toys", "config": "train.yaml",
                                               "overrides": overrides, "about": "a tiny start"}}))
    assert start_recipes(recipes)["toy"].family == "toys"
    assert start_recipes(recipes)["toy"].config == str(tmp_path / "train.yaml")

    cli_main(["starts", "build", "toy", "--recipes", str(recipes)])
    adapter = tmp_path / "cache" / "starts" / "toy" / "adapter"
    assert "built start 'toy'" in capsys.readouterr().out and (adapter / "adapter_model.safetensors").is_file()
    [row] = built_starts()
    assert (row["name"], row["family"], row["body"], row["algorithm"]) == ("toy", "toys", str(tiny_bert_dir), "fomaml")
    assert 0 <= row["validation"] <= 1 and 0 <= row["step0"] <= 1 and row["size_bytes"] > 0 and row["build_seconds"] > 0
    cli_main(["starts", "list", "--recipes", str(recipes)])
    assert "toy [toys]: fomaml on" in capsys.readouterr().out

    with pytest.raises(SystemExit):  # built before: kept unless --overwrite
        cli_main(["starts", "build", "toy", "--recipes", str(recipes)])
    assert "--overwrite" in capsys.readouterr().err and adapter.is_dir()

    weights = adapter / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in a weight
    weights.write_bytes(bytes(data))
    (tmp_path / "cache" / "starts" / "mine").mkdir()
    (tmp_path / "cache" / "starts" / "mine" / "notes.txt").write_text("the user's own folder")
    rows = {r["name"]: r for r in built_starts()}
    assert "does not match its checksum" in rows["toy"]["error"] and "no manifest" in rows["mine"]["error"]
    cli_main(["starts", "list", "--recipes", str(recipes)])
    out = capsys.readouterr().out
    assert "toy: not usable, never chosen" in out and "mine: not usable" in out


def test_no_start_of_the_declared_benchmark_trains_or_validates_on_its_held_out_tasks():
    # benchmarks/starts.yaml declares held-out tasks; every start it builds must keep away from them
    # (their tasks, SMLMT corpus and validation), and the NER start from the scored entity types.
    from llm_meta.config import load_config, to_dict
    from llm_meta.data.kinds import kind_of_start
    from llm_meta.meta_config import Config

    protocol = yaml.safe_load((ROOT / "benchmarks" / "starts.yaml").read_text())
    held_out, recipes = set(protocol["held_out"]), start_recipes(ROOT / "recipes/configs/starts.yaml")
    assert {"banking77", "mcid", "yahoo", "tweets_apple", "drug_reviews"} <= held_out
    for name, start in protocol["starts"].items():
        recipe = recipes[start["recipe"]] if "recipe" in start else None
        cfg = load_config(Config, ROOT / (recipe.config if recipe else start["config"]), recipe.overrides if recipe else [])
        used = {t if isinstance(t, str) else (t.name or t.smlmt) for t in cfg.tasks}
        used |= set((cfg.smlmt.data or "").split(",")) | set(cfg.validation.tasks)
        assert not used & held_out, (name, used & held_out)
        if cfg.ner.data:
            assert sorted(cfg.ner.held_out_types) == ["movie", "musicartist", "product", "sportsteam"], name
        # the kind a built start is listed and chosen for, from its config as llm_meta.json records it
        # (an NER config inherits the default sequence tasks, unread: still a tagger's start)
        assert kind_of_start(json.loads(json.dumps(to_dict(cfg)))).name == ("token" if name == "ner" else "sequence")


def test_the_start_benchmark_report_reads_every_declared_row_and_contrast():
    # benchmarks/starts.py's table on made-up outcomes: a row that is right on every text beats one
    # that is wrong on every text, on the mean and on each task; a missing row leaves its cells empty.
    import numpy as np

    from benchmarks import starts as bench

    proto = bench.protocol()
    rng = np.random.default_rng(0)
    results = {}
    for task in [*proto["held_out"], proto["ner_held_out"]]:
        rows = proto["ner_rows"] if task == proto["ner_held_out"] else proto["rows"]
        for k in proto["shots"]:
            for row_name, row in rows.items():
                if row_name == "auto_names":
                    continue  # left out: its cells and contrast stay empty
                for seed in bench.row_seeds(row, proto):
                    if task == proto["ner_held_out"]:
                        runs = [{"counts": [[1, 0, 0]] * 4 if row_name == "ner" else [[0, 1, 1]] * 4,
                                 "text_ids": [0, 1, 2, 3]} for _ in range(proto["draws"])]
                    else:
                        value = {"auto": 1, "untrained": 0}.get(row_name)
                        runs = [{"correct": ([value] * 12 if value is not None else rng.integers(0, 2, 12).tolist())}
                                for _ in range(proto["draws"])]
                    results[f"{task}/K{k}/{row_name}/s{seed}"] = {"test_texts": 4 if task == "wnut16" else 12,
                                                                  "runs": runs}
    text = bench.report(results, proto)
    assert "| auto vs untrained (primary) | 8 | +100.0 [+100.0, +100.0] | " in text
    assert "| auto | 100.0 [100.0, 100.0] |" in text and "| auto_names | - |" in text
    assert "auto_names vs auto" not in text and "banking77 +100.0" in text and "ner vs untrained +100.0" in text
    assert text.count("| win |") >= 2
