"""The evaluation layer: metrics (through `evaluate`), episode scoring, statistics (crossed
bootstrap intervals, paired differences, Holm's correction)."""
