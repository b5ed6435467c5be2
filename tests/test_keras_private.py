"""Every private Keras name ft_keras uses (`ft_keras._keras_private`),
called on real Keras objects: a Keras upgrade that renames, removes or
changes one of them fails here."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from ft_keras import _keras_private


def conv_bn_model():
    """Input -> Conv2D `conv` -> BatchNormalization `bn` -> ReLU, and a
    nested Sequential `head` of two Dense layers."""
    inputs = keras.Input((6, 6, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x, training=False)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    head = keras.Sequential(
        [keras.layers.Dense(3, name="hidden"), keras.layers.Dense(2, name="out")],
        name="head",
    )
    return keras.Model(inputs, head(x), name="net")


def test_unscale_loss_for_distribution_is_the_identity_without_a_strategy():
    value = keras.ops.convert_to_tensor(1.25)
    np.testing.assert_array_equal(
        _keras_private.unscale_loss_for_distribution(value), 1.25
    )


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute only"
)
def test_unscale_loss_for_distribution_multiplies_by_the_replicas():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        scaled = _keras_private.unscale_loss_for_distribution(tf.constant(1.25))
    np.testing.assert_array_equal(scaled, 2.5)


def test_nested_layers_reach_into_nested_models_without_the_model():
    model = conv_bn_model()
    layers = _keras_private.nested_layers(model)
    names = [layer.name for layer in layers]
    assert model not in layers
    assert set(names) >= {
        "image", "conv", "bn", "relu", "pool", "head", "hidden", "out"
    }
    assert len(names) == len(set(names))
    assert all(isinstance(layer, keras.layers.Layer) for layer in layers)
    # `Model.layers` lists one level only: the nested Dense layers are not
    # in it.
    assert "hidden" not in [layer.name for layer in model.layers]


def test_is_graph_network_only_for_functional_models():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert _keras_private.is_graph_network(conv_bn_model())
    assert not _keras_private.is_graph_network(sequential)
    assert not _keras_private.is_graph_network(Subclassed())


def test_graph_nodes_give_each_call_its_inputs_and_keyword_arguments():
    model = conv_bn_model()
    nodes = _keras_private.graph_nodes(model)
    operations = {node.operation.name: node for node in nodes
                  if node.operation is not None}
    assert {"conv", "bn", "relu", "pool", "head"} <= set(operations)
    bn = operations["bn"]
    (bn_input,) = bn.arguments.keras_tensors
    assert isinstance(bn_input, keras.KerasTensor)
    assert bn.arguments.kwargs == {"training": False}
    assert bn_input is operations["conv"].outputs[0]


def test_producer_is_the_layer_whose_call_gave_the_tensor():
    model = conv_bn_model()
    nodes = {node.operation.name: node for node in
             _keras_private.graph_nodes(model) if node.operation is not None}
    (bn_input,) = nodes["bn"].arguments.keras_tensors
    assert _keras_private.producer(bn_input) is model.get_layer("conv")
    assert _keras_private.producer(model.output) is model.get_layer("head")
    (image,) = nodes["conv"].arguments.keras_tensors
    assert _keras_private.producer(image) is model.get_layer("image")


def test_optimizer_uses_weight_decay_follows_the_exclusions():
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    bias = keras.Variable(np.zeros((2,), "float32"), name="bias")
    optimizer = keras.optimizers.SGD(0.1, weight_decay=1e-4)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    optimizer.build([kernel, bias])
    assert _keras_private.optimizer_uses_weight_decay(optimizer, kernel) is True
    assert _keras_private.optimizer_uses_weight_decay(optimizer, bias) is False


def test_optimizer_variable_index_finds_the_slot_of_each_variable():
    variables = [
        keras.Variable(np.full((2,), i, "float32"), name=f"v{i}")
        for i in range(3)
    ]
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(variables)
    for i, variable in enumerate(variables):
        index = _keras_private.optimizer_variable_index(optimizer, variable)
        assert index == i
        assert optimizer.momentums[index].shape == variable.shape


def test_tf_data_seed_generator_is_what_the_layer_draws_from_in_tf_data():
    layer = keras.layers.MixUp(seed=7)
    generator = _keras_private.tf_data_seed_generator(layer)
    images = tf.random.stateless_uniform((4, 8, 8, 3), seed=(1, 2))
    labels = tf.one_hot([0, 1, 2, 3], 4)

    def mixed(seed):
        generator.state.assign(tf.cast(seed, generator.state.dtype))
        return layer({"images": images, "labels": labels})["images"]

    ds = tf.data.Dataset.from_tensor_slices(tf.constant([[5, 6], [5, 6], [8, 9]]))
    out = [x.numpy() for x in ds.map(mixed)]
    np.testing.assert_array_equal(out[0], out[1])  # the same seed
    assert not np.array_equal(out[0], out[2])
    assert _keras_private.tf_data_seed_generator(keras.layers.Dense(2)) is None
