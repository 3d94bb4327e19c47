"""The meta-training run's configuration: typed dataclasses read from YAML with `key.sub=value`
overrides (`llm_meta.config`); recipes/configs/*.yaml set them. `llm_meta.meta_training` runs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from llm_meta.classifier import default_adapt_config
from llm_meta.data.ner import NerConfig
from llm_meta.data.smlmt import SmlmtConfig
from llm_meta.meta.core import InnerConfig
from llm_meta.meta.hypernet import HypernetConfig
from llm_meta.modeling.body import ModelConfig


@dataclass
class CurriculumStage:
    """One stage of a way/shot curriculum."""

    from_step: int  # meta-step at which this stage's episodes start
    n_way: int
    k_shot: int


@dataclass
class EpisodeConfig:
    n_way: int = 10
    k_shot: int = 5
    q_query: int = 5
    weighting: str = "uniform"  # uniform | size: how an episode's task is chosen
    # Way/shot curriculum, e.g. [{from_step: 50, n_way: 30, k_shot: 5}]: from that meta-step on,
    # episodes have that shape (before the first stage: n_way/k_shot above).
    curriculum: list[CurriculumStage] = field(default_factory=list)
    # n_way above a task's usable classes: that task's episodes take all of them (full-way) instead
    # of failing, e.g. n_way: 150 gives 120-way CLINC150 and 15-way StackOverflow episodes.
    cap_way: bool = False


@dataclass
class TaskSource:
    """One entry of a weighted task mixture: a labelled task (`name`) or an SMLMT corpus (`smlmt`)."""

    name: str | None = None  # registry name, local file/folder, or hf:<id>
    text_column: str = "text"  # a file's columns (`llm-meta meta-train --text-column` sets them for every file task)
    label_column: str = "label"
    smlmt: str | None = None  # a corpus spec (see llm_meta.data.smlmt.load_corpus), settings from the smlmt section
    ner: bool = False  # the NER task of the ner section
    weight: float = 1.0  # share of episodes


@dataclass
class OuterConfig:
    steps: int = 30  # meta-steps
    meta_batch: int = 2  # episodes per meta-step, split across processes
    optimizer: str = "adam"  # adam | sgd (sgd with lr = ε and algorithm reptile is classic Reptile)
    lr: float = 1e-3  # with the proximal pull below; without it, 1e-4: a good sentence encoder pulled far hurts
    warmup: int = 3  # meta-steps of linear lr warm-up
    schedule: str = "cosine"  # constant | cosine (decay to 0 at the last step)
    proximal: float = 0.1  # λ of λ‖θ − θ0‖² added to the meta-loss: keeps the LoRA near the untrained start θ0


@dataclass
class EvalConfig:
    """Episodes scored after adaptation with `Config.adapt` (the test-time procedure)."""

    tasks: list[str] = field(default_factory=lambda: ["clinc", "hwu"])
    class_role: str | None = "meta_val"  # registry class split to draw from; None: all classes
    episodes: int = 6  # per task
    n_way: int = 10  # capped at the task's number of classes
    k_shot: int = 5
    # Query texts per class; 0: every class of the task, K support texts per class drawn from its
    # train split and every text of `split` as the query (the real class balance, as a user's task
    # and the benchmark's full-way rows are scored), one episode per support draw.
    q_query: int = 10
    split: str = "train"
    seed: int = 1


@dataclass
class Config:
    """The meta-training recipe's config. Its defaults are the one default configuration, written
    out in recipes/configs/meta_train.yaml (a test keeps the two equal)."""

    # fomaml | maml (second order) | metasgd | reptile | protonet | transfer | hypernet (a LoRA-writing
    # hypernetwork trained end to end with a ProtoNet query loss) | hypernet+fomaml (its output starts FOMAML)
    algorithm: str = "fomaml"
    seed: int = 0
    output_dir: str = "runs/meta_train"
    # A folder holding a run is continued only with resume (--resume) or started again only with
    # overwrite (--overwrite); resuming with a config other than the checkpoint's is refused, with
    # the differing keys listed, unless force (--resume --force; the differences go to log.jsonl).
    resume: bool = False
    overwrite: bool = False
    force: bool = False
    # Start from this adapter folder instead of the untrained LoRA, e.g. a transfer start (meta-learning
    # *from* transfer). It is then θ0 everywhere: the step-0 candidate, the proximal anchor and the
    # interpolation origin, so selection never keeps worse than it on meta-validation. In a benchmark,
    # `start:NAME` means the start NAME of the same meta-seed.
    init: str | None = None
    mixed_precision: str = "no"  # no | bf16 | fp16 (Accelerate autocast)
    # Accelerate trackers to log steps and validations to, besides log.jsonl: e.g. [tensorboard],
    # [wandb], [all] (every one installed); files go under output_dir/trackers.
    log_with: list[str] = field(default_factory=list)
    # Intents are 10-15 tokens: 48 keeps meta-steps cheap (adapt's default is 64).
    model: ModelConfig = field(default_factory=lambda: ModelConfig(max_length=48))
    # Labelled tasks, or a weighted mixture: [clinc, {name: hwu, weight: 2}, {smlmt: corpus.txt, weight: 1}].
    # HWU64 is left out: it is the validation task, kept whole.
    tasks: list[str | TaskSource] = field(default_factory=lambda: ["clinc", "stackoverflow"])
    smlmt: SmlmtConfig = field(default_factory=SmlmtConfig)  # smlmt.data: one more (self-supervised) source
    # ner.data: NER episodes only (tasks ignored), unless tasks has a {ner: true} entry that mixes them in.
    ner: NerConfig = field(default_factory=NerConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)  # inner loop during meta-training
    adapt: InnerConfig = field(default_factory=default_adapt_config)  # at validation/test time: as `llm-meta adapt`
    outer: OuterConfig = field(default_factory=OuterConfig)
    hypernet: HypernetConfig = field(default_factory=HypernetConfig)  # algorithm hypernet*
    validate_every: int = 15  # meta-steps between validations (and checkpoints)
    # Each validation also scores the weight change ΔW0 + α(ΔW − ΔW0) for these α (algorithms.interpolate;
    # 1.0: the trained LoRA itself); the best (step, α) on meta-validation is kept. α < 1 pulls a
    # trained start back towards the pretrained model.
    interpolation: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    # Selection on HWU64 kept whole, every class per episode: 10-way episodes of meta-val classes
    # score ~94% for every start and cannot tell starts apart.
    validation: EvalConfig = field(default_factory=lambda: EvalConfig(
        tasks=["hwu"], class_role=None, episodes=2, n_way=64, k_shot=5, q_query=5, split="train", seed=1))
    test: EvalConfig = field(default_factory=lambda: EvalConfig(
        tasks=["banking77", "mcid", "tweet_sentiment"], class_role=None, episodes=20, n_way=5, split="test", seed=0))
