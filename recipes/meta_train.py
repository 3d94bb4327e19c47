"""Meta-train a LoRA start: the recipe behind `llm-meta meta-train`, and the script Accelerate runs.

    llm-meta meta-train --config recipes/configs/meta_train.yaml [key.sub=value ...] [--resume]
    accelerate launch --num_processes 2 --cpu recipes/meta_train.py --config ... (meta-batch split)
    llm_meta.meta_train("recipes/configs/meta_train.yaml", "outer.steps=30")   # the same, from Python

The work is `llm_meta.meta_training.meta_train` (its `train` reads top to bottom: accelerator,
model, tasks, samplers, the meta-training loop with validation, the kept adapter, the held-out
test); this file gives it a config file and the command line's overrides. The configs are in
recipes/configs/.
"""

import sys

from llm_meta.meta_config import Config  # noqa: F401  (the names `llm-meta` reads)
from llm_meta.meta_training import meta_train as main  # noqa: F401  (the names `llm-meta` reads)

if __name__ == "__main__":
    from llm_meta.cli import main as cli_main

    cli_main(["meta-train", *sys.argv[1:]])
