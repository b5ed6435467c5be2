"""CRD's memory banks and its negatives: the scores of embeddings against a
memory, the memory's momentum update, the draws of negatives, and the
global batch they work on across replicas (RepDistiller's
`crd/memory.py` and `dataset/cifar100.py`; see `ft_keras.terms.crd`)."""

import keras
import numpy as np
from keras import ops


def contrast_scores(memory, anchors, contrast_indices, temperature):
    """`exp(<memory[contrast_indices[i, j]], anchors[i]> / T)`, shape
    `(batch, 1 + K)`: `ContrastMemory.forward`'s `out_v1` / `out_v2` before
    the division by `Z` (crd/memory.py). The products are taken against the
    whole memory (`anchors @ memory^T`) and the sampled columns gathered:
    the same numbers as its `bmm` of the gathered rows, without gathering
    `batch x (1 + K)` rows of the memory. The memory is read as a copy:
    PyTorch's matmul keeps the tensor it read for the gradient, and
    `CRD`'s update after it writes the memory variable in place (free on
    TensorFlow and JAX)."""
    memory = ops.stop_gradient(ops.copy(memory))
    products = ops.matmul(anchors, ops.transpose(memory))
    picked = ops.take_along_axis(products, contrast_indices, axis=1)
    return ops.exp(picked / temperature)


def updated_rows(memory, indices, embeddings, momentum):
    """The rows `indices` of `memory` after `ContrastMemory`'s update
    (crd/memory.py): `momentum * row + (1 - momentum) * embedding`,
    divided by its Euclidean norm."""
    rows = ops.take(memory, indices, axis=0) * momentum
    rows = rows + embeddings * (1.0 - momentum)
    return rows / ops.sqrt(ops.sum(ops.square(rows), axis=1, keepdims=True))


def replica_context():
    """The `tf.distribute` replica context of a step on several replicas,
    or None (one replica, another backend)."""
    if keras.config.backend() != "tensorflow":
        return None
    from ft_keras import _tf_kernels

    return _tf_kernels.replica_context()


def gather(context, value):
    """`value` of every replica, concatenated in replica order (each
    replica's own as it is with one replica)."""
    return value if context is None else context.all_gather(value, axis=0)


def own_rows(context, global_value, local_size):
    """This replica's rows of a value of the global batch."""
    if context is None:
        return global_value
    sizes = context.all_gather(ops.reshape(local_size, (1,)), axis=0)
    offset = ops.sum(sizes[:context.replica_id_in_sync_group])
    return ops.slice(global_value,
                     ops.stack([offset, ops.zeros_like(offset)]),
                     ops.stack([local_size, ops.shape(global_value)[1]]))


def class_table(labels, num_classes):
    """`(labels, order, start, count)`, int32: the classes of the training
    examples, the examples sorted by class (stable), and each class's start
    in that order and count, from which `sample_negatives` draws."""
    labels = labels.astype("int32")
    order = np.argsort(labels, kind="stable").astype("int32")
    count = np.bincount(labels, minlength=num_classes).astype("int32")
    start = (np.cumsum(count) - count).astype("int32")
    return labels, order, start, count


def sample_negatives(indices, num_examples, num_negatives, seed_generator,
                     class_table=None):
    """`(batch, 1 + K)` contrast indices: each example's own index, then
    `K` negatives drawn from `seed_generator`: uniform over all examples,
    with replacement, without `class_table`; else from the other classes'
    examples (`CRD`'s `negatives`), `class_table` being `(labels, order,
    start, count)` as variables or tensors, as `class_table` gives them."""
    n, k = num_examples, num_negatives
    batch = ops.shape(indices)[0]
    if class_table is None:
        drawn = keras.random.randint((batch, k), 0, n, dtype="int32",
                                     seed=seed_generator)
    else:
        labels, class_order, class_start, class_count = class_table
        classes = ops.take(labels, indices, axis=0)
        start = ops.take(class_start, classes, axis=0)[:, None]
        count = ops.take(class_count, classes, axis=0)[:, None]
        others = n - count  # len(cls_negative[target])
        # With replacement: a rank uniform in [0, others), skipping
        # the example's own class in the class-sorted table.
        uniform = keras.random.uniform((batch, k), dtype="float64",
                                       seed=seed_generator)
        rank = ops.cast(ops.floor(uniform * ops.cast(others, "float64")),
                        "int32")
        position = rank + ops.where(rank >= start, count, 0)
        drawn = ops.take(class_order, position, axis=0)
        if k <= n - 1:
            # Without replacement: the K largest of uniform keys, the
            # own class's keys set to -1.
            keys = keras.random.uniform((batch, n), dtype="float64",
                                        seed=seed_generator)
            same = ops.equal(labels[None, :], classes[:, None])
            keys = ops.where(same, -1.0, keys)
            subset = ops.cast(ops.top_k(keys, k, sorted=True)[1], "int32")
            drawn = ops.where(k > others, drawn, subset)
    return ops.concatenate([indices[:, None], drawn], axis=1)
