import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from llm_meta.config import ConfigError, load_config
from llm_meta.modeling.body import ModelConfig


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 5


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    model: ModelConfig = field(default_factory=ModelConfig)
    tags: list[str] = field(default_factory=list)


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("# launch: llm-meta ...\nname: a\ninner:\n  steps: 3\n")
    cfg = load_config(Outer, f, ["inner.lr=3e-4", "model.lora_r=4", "tags=[a, b]"])
    assert (cfg.name, cfg.inner.steps, cfg.inner.lr, cfg.model.lora_r, cfg.tags) == ("a", 3, 3e-4, 4, ["a", "b"])
    assert load_config(Outer, None, ["inner.lr=1"]).inner.lr == 1.0  # int accepted for float


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match="unknown config key 'inner.step'; did you mean 'inner.steps'"):
        load_config(Outer, None, ["inner.step=3"])


def test_wrong_type():
    with pytest.raises(ConfigError, match="'inner.steps' expects int, got str 'many'"):
        load_config(Outer, None, ["inner.steps=many"])
    with pytest.raises(ConfigError, match="'model.normalize' expects true/false"):
        load_config(Outer, None, ["model.normalize=3"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not of the form key.sub=value"):
        load_config(Outer, None, ["inner.steps"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_base_file_is_merged_section_by_section(tmp_path):
    (tmp_path / "base.yaml").write_text("name: a\ninner: {lr: 0.5, steps: 3}\ntags: [x]\n")
    (tmp_path / "variant.yaml").write_text("base: base.yaml\ninner: {steps: 7}\n")
    cfg = load_config(Outer, tmp_path / "variant.yaml", ["name=b"])
    assert (cfg.name, cfg.inner.lr, cfg.inner.steps, cfg.tags) == ("b", 0.5, 7, ["x"])
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="in a loop"):
        load_config(Outer, tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(Outer, tmp_path / "orphan.yaml")


def test_words_that_yaml_1_1_reads_as_booleans_stay_words(tmp_path):
    # `llm-meta adapt ... select_start=off` (docs/concepts/start-selection.md) and `mixed_precision=no`
    # are words of a choice; YAML 1.1 reads on/off/yes/no as booleans, which failed as a type error. Only true/false are.
    from llm_meta.classifier import AdaptConfig
    from llm_meta import meta_training as meta_train

    assert load_config(AdaptConfig, None, ["select_start=off"]).select_start == "off"
    (tmp_path / "adapt.yaml").write_text("select_start: off\n")
    assert load_config(AdaptConfig, tmp_path / "adapt.yaml").select_start == "off"
    assert load_config(meta_train.Config, None, ["mixed_precision=no"]).mixed_precision == "no"
    assert load_config(meta_train.Config, None, ["model.normalize=False"]).model.normalize is False
    with pytest.raises(ConfigError, match="expects true/false, got 'yes'"):
        load_config(meta_train.Config, None, ["model.normalize=yes"])


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "recipes/configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_into_its_recipe(path):
    # Each YAML's first line is its launch command; the config must fit that recipe's dataclass.
    from llm_meta import meta_training as meta_train
    from recipes import benchmark

    command = path.read_text().splitlines()[0]
    if command.startswith("# llm-meta starts build"):  # the start recipes: each a meta-training config + overrides
        from llm_meta.start_library import start_recipes

        for start in start_recipes(path).values():
            load_config(meta_train.Config, Path(__file__).resolve().parent.parent / start.config, start.overrides)
        return
    recipe = {"llm-meta meta-train": meta_train, "llm-meta benchmark": benchmark}
    module = next(m for prefix, m in recipe.items() if command.startswith(f"# {prefix} --config {path.parent.name}")
                  or command.startswith(f"# {prefix} --config recipes/configs/{path.name}"))
    cfg = load_config(module.Config, path)
    if module is benchmark:
        for train in cfg.train_configs.values():
            load_config(meta_train.Config, Path(__file__).resolve().parent.parent / train)


def test_default_job_selects_with_the_adaptation_users_get():
    # Selection must score checkpoints the way `llm-meta adapt` will adapt them (issue: make
    # meta-learning pay off, item 1), on a dataset never trained on, with step 0 a candidate.
    from llm_meta.classifier import default_adapt_config
    from llm_meta import meta_training as meta_train

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(meta_train.Config, root / "recipes/configs/meta_train.yaml")
    assert cfg.adapt == default_adapt_config()
    assert set(cfg.validation.tasks).isdisjoint(cfg.tasks) and cfg.validation.class_role is None
    assert 1.0 in cfg.interpolation and min(cfg.interpolation) > 0


def test_there_is_one_default_and_meta_train_yaml_writes_it_out():
    # `llm-meta meta-train` with no --config, `make quickstart` and the base of every meta-train
    # config are the same configuration.
    from llm_meta import meta_training as meta_train

    root = Path(__file__).resolve().parent.parent
    written = load_config(meta_train.Config, root / "recipes/configs/meta_train.yaml")
    assert written == meta_train.Config()
    for path in sorted((root / "recipes/configs").glob("*.yaml")):
        if path.name != "meta_train.yaml" and path.read_text().startswith("# llm-meta meta-train"):
            chain, at = [], path
            while (base := yaml.safe_load(at.read_text()).get("base")) is not None:
                chain.append(base)
                at = at.parent / base
            assert chain and chain[-1] == "meta_train.yaml", f"{path.name} does not start from the default"


# What may define an algorithm's config beyond the default: the algorithm and its own knobs, the
# budget that makes compute equal, and (ProtoNet, hypernetwork) the zero-step protocol it is scored by.
ALGORITHM_KEYS = {"reptile": {"outer.optimizer", "outer.lr"}, "maml": set(),
                  "metasgd": {"inner.optimizer", "inner.lr", "adapt.optimizer", "adapt.lr", "adapt.steps"},
                  "protonet": {"outer.steps", "validate_every", "adapt.steps"},
                  "transfer": {"outer.steps", "validate_every"},
                  "hypernet": {"outer.steps", "outer.lr", "validate_every", "adapt.steps", "hypernet.hidden",
                               "hypernet.write"},
                  "hypernet_fomaml": {"hypernet.hidden", "hypernet.write"}}


@pytest.mark.parametrize("name", sorted(ALGORITHM_KEYS))
def test_each_algorithm_config_differs_from_the_default_only_in_what_defines_it(name):
    from llm_meta.config import to_dict
    from llm_meta import meta_training as meta_train

    root = Path(__file__).resolve().parent.parent
    default = to_dict(meta_train.Config())
    variant = to_dict(load_config(meta_train.Config, root / f"recipes/configs/{name}.yaml"))

    def flat(d: dict, prefix: str = "") -> dict:
        return {k: v for key, value in d.items()
                for k, v in (flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}).items()}
    changed = {k for k, v in flat(variant).items() if flat(default)[k] != v} - {"algorithm", "output_dir"}
    assert changed <= ALGORITHM_KEYS[name], f"{name}.yaml also changes {sorted(changed - ALGORITHM_KEYS[name])}"


def test_a_partial_section_goes_on_top_of_its_field_s_own_default():
    # The benchmark's `adapt` defaults to `llm-meta adapt`'s procedure (label names twice, chunks of
    # 8), not to InnerConfig(): `adapt.steps=10` changed the steps *and* silently dropped the label
    # names (worth ~17 points at 1-shot) until nested sections merged over their field's default.
    from llm_meta.classifier import AdaptConfig, default_adapt_config
    from recipes import benchmark

    cfg = load_config(benchmark.Config, None, ["adapt.steps=10"])
    assert (cfg.adapt.steps, cfg.adapt.label_examples, cfg.adapt.chunk) == (10, 2, 8)
    assert dataclasses.replace(cfg.adapt, steps=15) == default_adapt_config()
    inner = load_config(AdaptConfig, None, ["inner.lr=0.002"]).inner  # `llm-meta adapt inner.lr=...`
    assert (inner.lr, inner.label_examples, inner.steps) == (0.002, 2, 15)
    # A key given explicitly still wins, including a value equal to the nested class's default.
    assert load_config(benchmark.Config, None, ["adapt.label_examples=0"]).adapt.label_examples == 0


def test_adapt_ner_defaults_to_the_measured_best_adaptation():
    # `llm-meta adapt --ner` adapts as measured best on held-out WNUT-16 types: the decomposed head and
    # entity-type names as support sentences (+5.2 micro F1 at K = 5, experiments/BENCHMARKS.md); a partial
    # `inner` section from the command line keeps them.
    from llm_meta.tagger import TaggerConfig

    inner = load_config(TaggerConfig, None, ["inner.lr=0.002"]).inner
    assert (inner.ner_head, inner.label_examples, inner.steps, inner.lr) == ("decomposed", 2, 15, 0.002)
    assert load_config(TaggerConfig, None, ["inner.label_examples=0"]).inner.label_examples == 0
