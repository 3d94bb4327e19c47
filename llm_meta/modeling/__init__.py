"""The model layer: where a model comes from (bundled packages, GGUF, folders, Hub ids), the body
(a frozen transformers model with LoRA, run functionally on a dict of tensors), tokenising,
embedding and the frozen-prefix cache. Decoder vs encoder is decided here and nowhere else."""
