"""KerasHub image networks by name: `models.get("keras_hub.<ClassName>")`.

KerasHub (`keras_hub`, the successor of KerasCV) holds today's Keras image
backbones. `get("keras_hub.<ClassName>", num_classes=..., input_shape=...,
**arguments)` builds one, where `<ClassName>` is a class of
`keras_hub.models`:

- an image classifier (`"keras_hub.ResNetImageClassifier"`) or a backbone
  (`"keras_hub.ResNetBackbone"`), built from the backbone's constructor
  arguments (`stackwise_num_filters=...`: nothing is downloaded), with new
  weights; a backbone gets a head of global average pooling and a `Dense`
  of `num_classes` logits, a classifier its own head (no softmax);
- or, with `preset="/path/to/preset"` (a preset directory on disk: one a
  user downloaded, or wrote with `save_to_preset`), the network of that
  preset with its weights; a classifier preset keeps its head when it has
  `num_classes` outputs, else gets a new one.

Either way the result is one flat functional model, the backbone's own
layers followed by the head, so that the taps finder (`python -m
ft_keras.taps`) lists the backbone's maps and Factor Transfer and attention
transfer can tap them; a backbone made of Keras' layers (ResNet, VGG,
MobileNet...) saves to a `.keras` file that loads without KerasHub. The
images it takes are the runner's normalised images: KerasHub's
preprocessor is not part of the network.

KerasHub is an optional extra (`pip install 'ft_keras[keras-hub]'`, pinned
to `KERAS_HUB_VERSION`); without it such a name fails in one line saying
how to install it.

Example:

```python
from ft_keras import models

net = models.get("keras_hub.ResNetBackbone", num_classes=10,
                 input_shape=(32, 32, 3), input_conv_filters=[64],
                 input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 128],
                 stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2],
                 block_type="basic_block")
models.feature_taps(net)  # ['conv1_relu', 'stack0_block0_out', ...]
```
"""

import inspect

import keras

PREFIX = "keras_hub."
KERAS_HUB_VERSION = "0.32.0"
# The backbone arguments `build` sets itself.
_SET_HERE = {"self", "image_shape", "data_format", "dtype", "name"}


def _keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise ImportError(
            "KerasHub networks ('keras_hub.<ClassName>') need the keras-hub "
            "package: pip install 'ft_keras[keras-hub]' (keras-hub=="
            f"{KERAS_HUB_VERSION})."
        ) from None
    return keras_hub


def classes(name):
    """`(cls, backbone_cls)` of `"keras_hub.<ClassName>"`: an image
    classifier class and its backbone class, or a backbone class twice.

    Raises:
        ImportError: keras-hub is not installed.
        ValueError: `<ClassName>` is neither, listing the image classifiers.
    """
    keras_hub = _keras_hub()
    attr = name[len(PREFIX):]
    cls = getattr(keras_hub.models, attr, None)
    if inspect.isclass(cls) and issubclass(cls, keras_hub.models.ImageClassifier):
        if cls.backbone_cls is not None:
            return cls, cls.backbone_cls
    if inspect.isclass(cls) and issubclass(cls, keras_hub.models.Backbone):
        return cls, cls
    known = sorted(n for n in dir(keras_hub.models)
                   if n.endswith("ImageClassifier") and n != "ImageClassifier")
    raise ValueError(
        f"Unknown network name: {name!r}: keras_hub.models has no image "
        f"classifier or backbone {attr!r}. Its image classifiers: "
        f"{', '.join(known)} (or name their backbones, e.g. "
        "'keras_hub.ResNetBackbone')."
    )


def arguments(name):
    """The keyword arguments `"keras_hub.<ClassName>"` takes besides
    `num_classes`, `input_shape` and `model_name`: its backbone's
    constructor arguments and `preset`, sorted."""
    _, backbone_cls = classes(name)
    parameters = inspect.signature(backbone_cls.__init__).parameters.values()
    taken = {p.name for p in parameters
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return tuple(sorted((taken - _SET_HERE) | {"preset"}))


def build(name, model_name=None, num_classes=None, input_shape=None,
          preset=None, **kwargs):
    """The flat functional network of `"keras_hub.<ClassName>"` (see the
    module docstring), its output the logits."""
    cls, backbone_cls = classes(name)
    # Unset in a config that binds them for every network (None, and our
    # networks' `weight_decay` at 0), as for keras.applications.
    kwargs = {k: v for k, v in kwargs.items()
              if v is not None and not (k == "weight_decay" and not v)}
    shape = {} if input_shape is None else {"image_shape": tuple(input_shape)}
    if preset is not None:
        if kwargs:
            raise ValueError(
                f"A KerasHub preset ({preset!r}) sets its backbone's "
                f"arguments; pass none besides `preset`. Received: "
                f"{sorted(kwargs)}"
            )
        network = cls.from_preset(preset, **shape)
        if network is not getattr(network, "backbone", network):
            network = _logits_head(cls, network, num_classes)
    else:
        network = backbone_cls(**shape, **kwargs)
        if cls is not backbone_cls:
            network = cls(backbone=network, **_head(cls, num_classes))
    model = _flat(network, num_classes, backbone_cls)
    return keras.Model(model.inputs[0], model.outputs[0],
                       name=model_name or name[len(PREFIX):].lower())


def _head(cls, num_classes):
    """A classifier's head arguments: logits (no softmax), `num_classes`."""
    if not issubclass(cls, _keras_hub().models.ImageClassifier):
        return {}
    return {"num_classes": num_classes, "activation": None}


def _logits_head(cls, classifier, num_classes):
    """A preset's classifier with a logits head of `num_classes`: its own
    when it already is one; its head's weights on a head without softmax
    when it has `num_classes` classes (KerasHub makes a new head whenever
    `from_preset` is given head arguments); else a new head."""
    config = classifier.get_config()
    if config.get("num_classes") == num_classes and config.get("activation") in (
            None, "linear"):
        return classifier
    new = cls(backbone=classifier.backbone, **_head(cls, num_classes))
    if config.get("num_classes") == num_classes:
        old_head, new_head = (
            m.layers[m.layers.index(m.backbone) + 1:] for m in (classifier, new))
        for old, layer in zip(old_head, new_head):
            layer.set_weights(old.get_weights())
    return new


def _flat(network, num_classes, backbone_cls):
    """`network` (a classifier, or a backbone that gets a new head) as one
    functional model over the backbone's own layers."""
    backbone = network if isinstance(network, backbone_cls) else network.backbone
    x = backbone.output
    if network is backbone:
        pooling = {4: keras.layers.GlobalAveragePooling2D,
                   3: keras.layers.GlobalAveragePooling1D}.get(len(x.shape))
        if pooling is None:
            raise ValueError(
                f"The KerasHub backbone {type(backbone).__name__} outputs "
                f"shape {tuple(x.shape)}; a head goes on a (batch, height, "
                "width, channels) map or a (batch, tokens, channels) sequence."
            )
        x = keras.layers.Dense(num_classes, name="logits")(
            pooling(name="avg_pool")(x))
    else:
        head = network.layers[network.layers.index(backbone) + 1:]
        for layer in head:  # a classifier's head is a chain of layers
            x = layer(x)
    if tuple(x.shape) != (None, num_classes):
        raise ValueError(
            f"The KerasHub network {type(network).__name__} gives outputs of "
            f"shape {tuple(x.shape)} after its head; the dataset has "
            f"{num_classes} classes."
        )
    return keras.Model(backbone.input, x)
