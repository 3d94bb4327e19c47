"""llm_meta: few-shot fine-tuning of language models by meta-learning LoRA adapters."""

__version__ = "0.1.0"
