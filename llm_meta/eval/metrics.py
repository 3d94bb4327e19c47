"""Metrics computed through `evaluate`'s Metric API, defined here so they work offline.

`evaluate.load("accuracy")` fetches the metric's script from the Hugging Face Hub, which this
toolkit must not need at run time; subclassing `evaluate.Metric` keeps evaluate's input checking
and batching without the download.
"""

from __future__ import annotations

import datasets
import evaluate
from sklearn.metrics import f1_score


class _LabelMetric(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.__doc__ or "", citation="", inputs_description="integer class ids",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )


class Accuracy(_LabelMetric):
    """Fraction of predictions equal to the reference label."""

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / len(references)}


class MacroF1(_LabelMetric):
    """F1 averaged over the classes present in the references or predictions, unweighted."""

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        return {"macro_f1": float(f1_score(references, predictions, average="macro"))}


def classification_metrics(predictions: list[int], references: list[int]) -> dict[str, float]:
    """Accuracy and macro-F1 of integer predictions against integer references."""
    metrics = evaluate.combine([Accuracy(), MacroF1()])
    return {k: float(v) for k, v in metrics.compute(predictions=predictions, references=references).items()}


class EntityF1(evaluate.Metric):
    """Entity-level precision, recall and F1 (seqeval, exact span and type match) over BIO tag lists."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.__doc__ or "", citation="", inputs_description="lists of BIO tags, one per sentence",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions: list[list[str]], references: list[list[str]]) -> dict[str, float]:
        from seqeval.metrics import f1_score as entity_f1, precision_score, recall_score

        return {"precision": float(precision_score(references, predictions, zero_division=0)),
                "recall": float(recall_score(references, predictions, zero_division=0)),
                "f1": float(entity_f1(references, predictions, zero_division=0))}


def entity_metrics(predictions: list[list[str]], references: list[list[str]]) -> dict[str, float]:
    """Entity precision/recall/F1 of predicted BIO tag lists against reference ones."""
    return EntityF1().compute(predictions=predictions, references=references)
