"""The data layer: tasks from files, datasets and the bundled registry (tasks.yaml, families.yaml),
N-way K-shot episodes and their samplers, SMLMT tasks from unlabelled text, CoNLL files and the
silver NER corpus. Imports nothing of the model: a task is text and labels."""
