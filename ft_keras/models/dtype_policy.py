"""A network computing under another dtype policy: `with_dtype_policy`
clones it with every layer's policy replaced, keeping its weights."""

import keras

from ft_keras import _keras_private


def _set_policies(config, policy):
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and "config" in config:
            return {**config, "config": {**config["config"], "name": policy}}
        return {k: _set_policies(v, policy) for k, v in config.items()}
    if isinstance(config, list):
        return [_set_policies(v, policy) for v in config]
    return config


def with_dtype_policy(model, policy):
    """`model` computing under the dtype `policy` (e.g. `"float32"`,
    `"mixed_bfloat16"`): the model itself if every layer already does, else
    a copy built from its config with every layer's policy replaced, holding
    the same weight values (mixed precision keeps weights in float32, so
    nothing is lost either way). Under a mixed policy the layers that give
    the model's outputs compute in float32, as they do when our networks are
    built under one. A teacher trained in float32 runs in bfloat16 this way,
    and a student trained under a mixed policy is exported in float32.

    Example:

    ```python
    import keras

    from ft_keras import models

    trained = models.get("resnet20", num_classes=10)
    fast = with_dtype_policy(trained, "mixed_bfloat16")
    fast.get_layer("stem_conv").compute_dtype  # 'bfloat16'
    fast.get_layer("logits").compute_dtype  # 'float32', as the outputs
    with_dtype_policy(fast, "float32").get_layer("stem_conv").compute_dtype
    ```
    """
    policy = keras.DTypePolicy(policy).name
    mixed = keras.DTypePolicy(policy).compute_dtype != "float32"
    if not mixed and all(
        layer.dtype_policy.name == policy
        for layer in _keras_private.nested_layers(model)
        if not isinstance(layer, keras.layers.InputLayer)
    ):
        return model
    config = _set_policies(keras.saving.serialize_keras_object(model), policy)
    outputs = set()
    if mixed:
        # As when built under a mixed policy (`blocks.classifier`, Keras's
        # mixed precision guide): the layers that give the outputs (the
        # logits) compute in float32.
        inner = config.get("config", {})
        outputs = inner.get("output_layers") or []
        if outputs and isinstance(outputs[0], str):  # a single output
            outputs = [outputs]
        outputs = {entry[0] for entry in outputs}
        for layer in inner.get("layers", []):
            if layer.get("config", {}).get("name") in outputs:
                layer["config"] = _set_policies(layer["config"], "float32")
    if all(
        layer.dtype_policy.name == ("float32" if layer.name in outputs else policy)
        for layer in _keras_private.nested_layers(model)
        if not isinstance(layer, keras.layers.InputLayer)
    ):
        return model
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    return copy
