"""Which layers of a network to tap: its feature taps and feature maps,
and the teacher-student pairs whose maps fit.

Our networks (`ft_keras.models`) name their taps: identity layers
`stage1` ... `stageN` (each stage's output) and `last_conv`; any other
functional network's taps are found by walking its graph
(`feature_taps`). `python -m ft_keras.taps` prints them.

Example:

```python
from ft_keras import models, taps
teacher = models.get("resnet56", input_shape=(32, 32, 3))
student = models.get("resnet20", input_shape=(32, 32, 3))
taps.feature_taps(teacher)  # ["stage1", "stage2", "stage3", "last_conv"]
taps.paper_pair(teacher, student)  # ("stage3", "stage3")
```
"""

import re

import keras

_STAGE_PATTERN = re.compile(r"stage(\d+)")
LAST_CONV = "last_conv"


def feature_taps(model):
    """Returns the names of the feature taps in `model`, in network order.

    For the networks of `ft_keras.models`: the layers named `stage1` ...
    `stageN` (each stage's output), then `last_conv` (the pre-BN output of
    the last conv of the last block). For any other model (a
    `keras.applications` network, your own): the last layer of each
    resolution, i.e. each stage's output, among the layers whose output is
    a feature map `(batch, height, width, channels)`.
    `model.get_layer(tap).output` is the tapped tensor.

    Arguments:
        model: A `keras.Model`.

    Returns:
        A list of layer names.

    Example:

    ```python
    from ft_keras.models import resnet20
    assert feature_taps(resnet20()) == [
        "stage1", "stage2", "stage3", "last_conv"]
    ```
    """
    names = [layer.name for layer in model.layers]
    stages = sorted(
        (n for n in names if _STAGE_PATTERN.fullmatch(n)),
        key=lambda n: int(_STAGE_PATTERN.fullmatch(n).group(1)),
    )
    if stages:
        return stages + ([LAST_CONV] if LAST_CONV in names else [])
    return _stage_outputs(model)


def _consumers(layer):
    return [node.operation for node in getattr(layer, "_outbound_nodes", [])]


def _stage_outputs(model):
    """Each resolution's stage output, for networks without named taps: the
    last residual merge (`Add`, or `Concatenate` for dense blocks) at that
    resolution, taken after its activation when one follows, or the last
    feature map of a resolution without merges; and last, the last
    feature map before pooling (the last stage's output: the paper's
    tap)."""
    skipped = (
        keras.layers.ZeroPadding2D,
        keras.layers.Rescaling,
        keras.layers.Normalization,
    )
    maps = [
        (name, shape)
        for name, shape in feature_maps(model)
        if not isinstance(model.get_layer(name), skipped)
    ]
    if not maps:
        return []
    # The last feature map before pooling is the last stage's output. From
    # the largest resolution down to its (squeeze-and-excitation blocks'
    # 1x1 maps are no stage).
    last_name, last_shape = maps[-1]

    def area(hw):
        return (hw[0] or 0) * (hw[1] or 0)

    resolutions = sorted(
        {s[1:3] for _, s in maps if area(s[1:3]) > area(last_shape[1:3])},
        key=lambda hw: -area(hw),
    )
    taps = []
    for resolution in resolutions:
        here = [name for name, shape in maps if shape[1:3] == resolution]
        merges = [
            n
            for n in here
            if isinstance(
                model.get_layer(n), (keras.layers.Add, keras.layers.Concatenate)
            )
        ]
        if not merges:
            taps.append(here[-1])
            continue
        tap = merges[-1]
        after = _consumers(model.get_layer(tap))
        if (
            len(after) == 1
            and isinstance(after[0], (keras.layers.Activation, keras.layers.ReLU))
            and after[0].name in here
        ):
            tap = after[0].name
        taps.append(tap)
    return taps + [last_name]


def feature_maps(model):
    """`[(layer name, output shape)]` of every layer of `model` whose output
    is a feature map `(batch, height, width, channels)`, in network order.

    Example:

    ```python
    from ft_keras.models import resnet20
    maps = dict(feature_maps(resnet20()))
    assert maps["stage3"] == (None, 8, 8, 64)
    ```
    """
    maps = []
    for layer in model.layers:
        try:
            shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):  # several outputs, or none
            continue
        if len(shape) == 4 and not isinstance(layer, keras.layers.InputLayer):
            maps.append((layer.name, shape))
    return maps



def taps_with_shapes(model, all_layers=False):
    """`[(layer name, output shape without the batch)]` of `model`'s feature
    taps, or of every feature map with `all_layers`."""
    maps = dict(feature_maps(model))
    names = list(maps) if all_layers else feature_taps(model)
    return [(name, tuple(maps[name][1:])) for name in names if name in maps]


def last_stage(model):
    """The tap the paper uses: the last stage's output (`stageN` of our
    networks, not `last_conv`; the last feature map of any other)."""
    names = feature_taps(model)
    stages = [n for n in names if _STAGE_PATTERN.fullmatch(n)]
    return (stages or names)[-1] if names else None


def fitting_pairs(teacher, student, all_layers=False):
    """`[(teacher tap, student tap)]` whose maps have the same height and
    width, in network order."""
    teacher_taps = taps_with_shapes(teacher, all_layers)
    student_taps = taps_with_shapes(student, all_layers)
    return [
        (t, s)
        for t, t_shape in teacher_taps
        for s, s_shape in student_taps
        if t_shape[:2] == s_shape[:2]
    ]


def paper_pair(teacher, student):
    """The paper's pair, the last stage's output of each network, if their
    maps fit (same height and width); else None."""
    pair = (last_stage(teacher), last_stage(student))
    return pair if pair in fitting_pairs(teacher, student, all_layers=True) else None

