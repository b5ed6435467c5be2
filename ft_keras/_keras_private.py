"""Every private Keras name ft_keras uses, each behind one small function.

Keras 3 has no public API for these; each function's docstring says what is
missing and the Keras version its body was checked against. A Keras upgrade
that renames or removes one of them fails `tests/test_keras_private.py`,
which calls each function on real Keras objects, rather than a training run.
The multi-worker checkpointing patch is the other private-Keras module,
`ft_keras._keras_multiworker`.
"""

# `keras.src` has no public alias for this function (checked: Keras 3.15.1).
from keras.src.losses.loss import unscale_loss_for_distribution as _unscale


def unscale_loss_for_distribution(value):
    """A loss value as Keras' trainer records its `loss` tracker: under
    `tf.distribute`, one replica's loss (already divided by the number of
    replicas) times the number of replicas, i.e. the loss of the global
    batch; `value` itself on the other backends and without a strategy.

    Missing public API: `keras.src.losses.loss.unscale_loss_for_distribution`
    has no `keras.losses` alias; a model's extra loss trackers need it to
    report as `loss` is reported. Checked against Keras 3.15.1.
    """
    return _unscale(value)


def nested_layers(model):
    """Every layer inside `model`, at any depth (the layers of nested
    models and layers too), each once, without `model` itself.

    Missing public API: `Layer.layers` / `Model.layers` list one level only;
    this is `model._flatten_layers(include_self=False)`, which Keras itself
    uses to collect weights. Checked against Keras 3.15.1.
    """
    return model._flatten_layers(include_self=False)


def is_graph_network(model):
    """Whether `model` is a functional model (a graph of layer calls) whose
    nodes `graph_nodes` can list; False for a `Sequential` or subclassed
    model.

    Missing public API: Keras has no public accessor for a model's graph;
    this tests its `_nodes_by_depth`. Checked against Keras 3.15.1.
    """
    return bool(getattr(model, "_nodes_by_depth", None))


def graph_nodes(model):
    """The nodes (layer calls) of a functional `model`'s graph, from the
    outputs' depth down.

    Each is a `keras.src.ops.node.Node`, of which ft_keras reads
    `node.operation` (the layer called), `node.arguments.keras_tensors` (its
    input tensors) and `node.arguments.kwargs` (the call's keyword
    arguments).

    Missing public API: the graph of a functional model (`_nodes_by_depth`)
    and the `Node` class have no public accessor. Checked against Keras
    3.15.1.
    """
    return [node for depth in model._nodes_by_depth.values() for node in depth]


def producer(keras_tensor):
    """The layer (operation) whose call gave the symbolic `keras_tensor`,
    or None for a model input.

    Missing public API: a `KerasTensor` keeps its history in
    `_keras_history` only. Checked against Keras 3.15.1.
    """
    return keras_tensor._keras_history.operation


def optimizer_uses_weight_decay(optimizer, variable):
    """Whether `optimizer` decays `variable`: False for the variables named
    by `optimizer.exclude_from_weight_decay`.

    Missing public API: `exclude_from_weight_decay` records the exclusion;
    only the private `_use_weight_decay` answers it, as an optimizer's
    `update_step` needs. Checked against Keras 3.15.1.
    """
    return optimizer._use_weight_decay(variable)


def optimizer_variable_index(optimizer, variable):
    """The index of the built `optimizer`'s slots (e.g. `momentums[i]`)
    that belong to the trainable `variable`.

    Missing public API: an optimizer's `update_step` receives the variable,
    not the index of its slot variables; Keras' own optimizers call the
    private `_get_variable_index`. Checked against Keras 3.15.1.
    """
    return optimizer._get_variable_index(variable)


def tf_data_seed_generator(layer):
    """The seed generator a Keras core preprocessing `layer` draws from
    when `tf.data` runs it, or None for a layer without one (keras-cv's).

    Missing public API: a preprocessing layer (`keras.layers.RandAugment`,
    `CutMix`, `MixUp`, ...) draws through the private `_get_seed_generator`,
    which under another Keras backend makes a TensorFlow generator of its
    own the first time `tf.data` calls the layer; the layer has no way to
    draw from a given seed. This makes that generator now, with the layer's
    backend set as `tf.data` sets it. Checked against Keras 3.15.1.
    """
    if not hasattr(layer, "_get_seed_generator"):
        return None
    layer.backend.set_backend("tensorflow")
    try:
        return layer._get_seed_generator("tensorflow")
    finally:
        layer.backend.reset()
