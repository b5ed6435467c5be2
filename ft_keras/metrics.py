"""Metrics of a classifier whose labels may be mixed.

`TopKAccuracy` takes class indices and one-hot or soft (CutMix / MixUp)
labels alike, as `ft_keras.losses.ClassificationCrossentropy` does, so one
compiled model trains on mixed batches and validates on plain labels.
"""

import keras
from keras import ops

_PACKAGE = "ft_keras"


def holds_distributions(y_true, y_pred):
    """Whether `y_true` are one-hot or soft (mixed) labels, one score per
    class as `y_pred`, rather than class indices: they have `y_pred`'s
    rank."""
    return len(y_true.shape) == len(y_pred.shape)


def class_indices(y_true, y_pred):
    """`y_true` as class indices: one-hot or soft (mixed) labels, with the
    rank of `y_pred`, become their argmax."""
    if holds_distributions(y_true, y_pred):
        return ops.argmax(y_true, axis=-1)
    return y_true


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TopKAccuracy(keras.metrics.MeanMetricWrapper):
    """Top-k accuracy against class indices or one-hot labels.

    One-hot or soft (mixed) labels count as their argmax class, so a step
    on CutMix / MixUp batches and an evaluation on plain labels report the
    same metric. `k=1` is `keras.metrics.SparseCategoricalAccuracy`'s
    value, other `k` `SparseTopKCategoricalAccuracy`'s.

    Args:
        k: How many of the highest scores may hold the label.
        name: Name of the metric.
        dtype: Dtype of the result.

    Example:

    >>> metric = TopKAccuracy(k=1, name="top1")
    >>> metric.update_state(ops.array([[0.2, 0.8]]), ops.array([[1.0, 3.0]]))
    >>> float(metric.result())
    1.0
    """

    def __init__(self, k=1, name="top_k_accuracy", dtype=None):
        super().__init__(self._accuracy, name=name, dtype=dtype)
        self.k = k
        # Higher is better, for callbacks that monitor it.
        self._direction = "up"

    def _accuracy(self, y_true, y_pred):
        labels = class_indices(y_true, y_pred)
        if self.k == 1:
            return keras.metrics.sparse_categorical_accuracy(labels, y_pred)
        return keras.metrics.sparse_top_k_categorical_accuracy(
            labels, y_pred, k=self.k)

    def get_config(self):
        return {"k": self.k, "name": self.name, "dtype": self.dtype}


def top_k_metrics(num_classes):
    """Top-1 accuracy, and top-5 when there are more than 5 classes, of
    class indices or mixed labels alike: what every stage of the runner
    reports.

    ```python
    [m.name for m in top_k_metrics(10)]  # ['top1', 'top5']
    ```
    """
    metrics = [TopKAccuracy(k=1, name="top1")]
    if num_classes > 5:
        metrics.append(TopKAccuracy(k=5, name="top5"))
    return metrics
