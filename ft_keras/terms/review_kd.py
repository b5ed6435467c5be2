"""ReviewKD (Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge
Review") as a term: its attention-based fusion connector, the hierarchical
context loss and the resampling rules of PyTorch they rest on.

Every choice follows megvii-research/mdistiller (commit a08d46f), cited as
`ReviewKD.py:LINE` for `mdistiller/distillers/ReviewKD.py` and `cfg.py:LINE`
for `mdistiller/engine/cfg.py`.
"""

import keras
import numpy as np
from keras import ops

from ft_keras import _validation
from ft_keras import layers as ft_layers
from ft_keras.terms.base import Term

_PACKAGE = "ft_keras"
# hcl_loss's pyramid (ReviewKD.py:18): adaptive average pools to these sizes.
HCL_LEVELS = (4, 2, 1)


def nearest_indices(in_size, out_size):
    """The source index of each of `out_size` outputs of PyTorch's
    `F.interpolate(..., mode="nearest")` along an axis of `in_size`:
    `min(floor(i * scale), in_size - 1)` with `scale = in_size / out_size`
    in float32, as PyTorch's `nearest_idx` computes it (the identity for
    equal sizes, `i // 2` for twice the size). Any sizes, integer ratio or
    not.

    >>> nearest_indices(4, 8).tolist(), nearest_indices(3, 7).tolist()
    ([0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 0, 1, 1, 2, 2])
    >>> nearest_indices(7, 3).tolist()
    [0, 2, 4]
    """
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) // 2
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size).astype(np.float32) * scale)
    return np.minimum(index.astype(np.int64), in_size - 1)


def resize_nearest(x, size):
    """`x` `(batch, height, width, channels)` resized to `size` `(height,
    width)` as PyTorch's `F.interpolate(x, size, mode="nearest")` does
    (`nearest_indices` per axis); its gradient sums over the copies, as
    PyTorch's does. `x` unchanged where it has that size."""
    for axis, out_size in zip((1, 2), size):
        in_size = x.shape[axis]
        if in_size != out_size:
            x = ops.take(x, nearest_indices(in_size, out_size), axis=axis)
    return x


def adaptive_pool_matrix(in_size, out_size):
    """`(out_size, in_size)` 0/1 matrix of PyTorch's adaptive pooling
    windows along an axis: output `i` covers `[floor(i * in / out),
    ceil((i + 1) * in / out))`.

    >>> adaptive_pool_matrix(5, 2).tolist()
    [[1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0, 1.0]]
    """
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0
    return matrix


def adaptive_avg_pool(x, size):
    """PyTorch's `F.adaptive_avg_pool2d(x, (size, size))` of a channels-last
    map: each window's sum divided by its number of elements."""
    rows = adaptive_pool_matrix(x.shape[1], size)
    cols = adaptive_pool_matrix(x.shape[2], size)
    sums = ops.einsum("ih,nhwc,jw->nijc", rows, x, cols)
    counts = np.outer(rows.sum(1), cols.sum(1))[None, :, :, None]
    return ops.divide(sums, ops.convert_to_tensor(counts, sums.dtype))


def _mse(teacher_map, student_map):
    return ops.mean(ops.square(student_map - teacher_map), axis=(1, 2, 3))


def hcl_loss(teacher, student):
    """The hierarchical context loss of mdistiller's `hcl_loss`
    (ReviewKD.py:11-28) per example, `(batch,)`, summed over the map pairs.

    For each pair of `(batch, height, width, channels)` maps: the mean
    squared difference, plus that of their adaptive average pools to 4x4,
    2x2 and 1x1 (`HCL_LEVELS`, only the levels below the student map's
    height) at weights 1/2, 1/4, 1/8 in the order of the levels used,
    divided by the sum of the weights used (1 for the map itself). Its
    batch mean is mdistiller's value (`F.mse_loss(reduction="mean")` of
    maps of one size per example).
    """
    total = 0.0
    for t, s in zip(teacher, student):
        loss, weight, weights = _mse(t, s), 1.0, 1.0
        for level in HCL_LEVELS:
            if level >= s.shape[1]:  # `if l >= h: continue`
                continue
            weight /= 2.0
            pooled = _mse(adaptive_avg_pool(t, level),
                          adaptive_avg_pool(s, level))
            loss = loss + weight * pooled
            weights += weight
        total = total + loss / weights
    return total


def _kaiming_uniform_a1():
    """`nn.init.kaiming_uniform_(w, a=1)` (ReviewKD.py:126-127): bound
    `sqrt(3 / fan_in)`."""
    return keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionBasedFusion(keras.layers.Layer):
    """ReviewKD's attention-based fusion (mdistiller's `ABF`,
    ReviewKD.py:106-144), channels-last.

    `call(x, residual=None)` returns `(output, residual')`:

    - `x = BN(conv1x1(x))` to `mid_channels` (no bias);
    - with `fuse`, the deeper level's `residual` is resized to `x`'s size
      (nearest, `resize_nearest`), `z = sigmoid(conv1x1([x, residual]))`
      (2 channels, with bias) and `x = x * z[0] + residual * z[1]`;
    - `x` is resized to `output_size` (nearest) if it differs: that is
      `residual'`;
    - `output = BN(conv3x3(x))` to `out_channels` (padding 1, no bias).

    The 1x1 and 3x3 kernels start as `kaiming_uniform_(a=1)`, the
    attention convolution as PyTorch's `Conv2d` default; BatchNormalization
    is PyTorch's `BatchNorm2d` (epsilon 1e-5, momentum 0.1, i.e. Keras'
    0.9; Keras updates the moving variance with the biased batch variance,
    PyTorch with the unbiased one). mdistiller's square `shape` and `out_shape` are `x`'s own size
    and `output_size` here. It computes in float32 unless a `dtype` is
    given.

    Args:
        mid_channels: Channels of the fused map (mdistiller's
            `mid_channel`).
        out_channels: Channels of the output: the teacher map's.
        output_size: `(height, width)` of the output: the teacher map's.
        fuse: Whether a deeper level's residual is fused in (all but the
            deepest level).
        **kwargs: Base layer keyword arguments, such as `name`.
    """

    def __init__(self, mid_channels, out_channels, output_size, fuse,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        output_size = tuple(output_size)
        sizes = (mid_channels, out_channels) + output_size
        if len(output_size) != 2 or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0
                for d in sizes):
            raise ValueError(
                "`mid_channels` and `out_channels` must be positive integers "
                "and `output_size` a (height, width) of positive integers. "
                f"Received: mid_channels={mid_channels!r}, out_channels="
                f"{out_channels!r}, output_size={output_size!r}")
        self.mid_channels = mid_channels
        self.out_channels = out_channels
        self.output_size = output_size
        self.fuse = bool(fuse)

    def _bn(self, name):
        return ft_layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, dtype=self.dtype_policy, name=name)

    def build(self, input_shape):
        mid, policy = self.mid_channels, self.dtype_policy
        self.conv1 = keras.layers.Conv2D(
            mid, 1, use_bias=False, kernel_initializer=_kaiming_uniform_a1(),
            dtype=policy, name="conv1")
        self.bn1 = self._bn("bn1")
        self.conv2 = keras.layers.Conv2D(
            self.out_channels, 3, padding="same", use_bias=False,
            kernel_initializer=_kaiming_uniform_a1(), dtype=policy,
            name="conv2")
        self.bn2 = self._bn("bn2")
        batch, height, width = tuple(input_shape)[:3]
        self.conv1.build(input_shape)
        self.bn1.build((batch, height, width, mid))
        self.att_conv = None
        if self.fuse:
            bound = 1.0 / np.sqrt(2 * mid)  # nn.Conv2d's default init
            self.att_conv = keras.layers.Conv2D(
                2, 1, activation="sigmoid", dtype=policy, name="att_conv",
                kernel_initializer=keras.initializers.VarianceScaling(
                    1.0 / 3.0, "fan_in", "uniform"),
                bias_initializer=keras.initializers.RandomUniform(-bound, bound))
            self.att_conv.build((batch, height, width, 2 * mid))
        out_shape = (batch,) + self.output_size
        self.conv2.build(out_shape + (mid,))
        self.bn2.build(out_shape + (self.out_channels,))

    def call(self, inputs, residual=None, training=None):
        x = self.bn1(self.conv1(ops.cast(inputs, self.compute_dtype)),
                     training=training)
        if self.fuse:
            if residual is None:
                raise ValueError(
                    f"{self.name} fuses a deeper level's residual: call it "
                    "as `fusion(x, residual)`.")
            y = resize_nearest(ops.cast(residual, self.compute_dtype),
                               x.shape[1:3])
            z = self.att_conv(ops.concatenate([x, y], axis=-1))
            x = x * z[..., 0:1] + y * z[..., 1:2]
        x = resize_nearest(x, self.output_size)
        return self.bn2(self.conv2(x), training=training), x

    def compute_output_shape(self, input_shape, residual_shape=None):
        out_shape = (input_shape[0],) + self.output_size
        return out_shape + (self.out_channels,), out_shape + (self.mid_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mid_channels": self.mid_channels,
                "out_channels": self.out_channels,
                "output_size": self.output_size,
                "fuse": self.fuse,
            }
        )
        return config


def _map_shape(role, layer, shape):
    """A tap's shape as a map `(batch, height, width, channels)`: a rank-2
    tap (the pooled feature) as 1x1, as mdistiller's
    `pooled_feat.unsqueeze(-1).unsqueeze(-1)` (ReviewKD.py:73-78, 89-91)."""
    shape = tuple(shape)
    if len(shape) == 2 and shape[1] is not None:
        return (shape[0], 1, 1, shape[1])
    if len(shape) == 4 and None not in shape[1:]:
        return shape
    raise ValueError(
        f"{role} layer {layer!r} gives a tensor of shape {shape}; a ReviewKD "
        "tap must be a (batch, height, width, channels) feature map of known "
        "size, such as a stage output, or a (batch, channels) pooled "
        "feature.")


def _as_map(x):
    return ops.expand_dims(ops.expand_dims(x, 1), 1) if len(x.shape) == 2 else x


def _checked_taps(teacher_layers, student_layers):
    for name, value in (("teacher_layers", teacher_layers),
                        ("student_layers", student_layers)):
        if (isinstance(value, str) or not isinstance(value, (list, tuple))
                or not value or not all(isinstance(n, str) for n in value)):
            raise ValueError(
                f"`{name}` must be a non-empty list of layer names, from the "
                "shallowest tap to the deepest, e.g. ['stage1', 'stage2', "
                f"'stage3', 'avg_pool']. Received: {name}={value!r}")
    if len(teacher_layers) != len(student_layers):
        raise ValueError(
            "ReviewKD pairs the taps in order: `teacher_layers` and "
            "`student_layers` must have the same length. Received: "
            f"teacher_layers={list(teacher_layers)!r}, "
            f"student_layers={list(student_layers)!r}")
    return list(teacher_layers), list(student_layers)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ReviewKD(Term):
    """ReviewKD (Chen, Liu, Zhao & Jia, CVPR 2021, "Distilling Knowledge via
    Knowledge Review") as a term, trained with the student.

    The term pairs the taps in order, from the shallowest to the deepest
    (mdistiller's `IN_CHANNELS` order). From the deepest pair up, an
    `AttentionBasedFusion` (`fusions[i]` for pair `i`) maps the student's
    map, fused with the deeper level's residual, to the teacher map's
    channels and size; the term is `hcl_loss` of the teacher's maps and the
    fused ones, times `min(epoch / warmup_epochs, 1)`, logged as
    `reviewkd_loss` (before `weight`). Each choice follows mdistiller:

    - the chain (ReviewKD.py:80-88): the student's maps reversed
      (`x[::-1]`), the deepest through its fusion alone, each shallower one
      fused with the residual of the one below (`abf(features,
      res_features, shape, out_shape)`), outputs back in tap order;
    - the fusions (ReviewKD.py:44-55): `ABF(in_channel, mid_channel,
      out_channels[idx], idx < len(in_channels) - 1)`, with `out_channels`
      the teacher taps' channels and `mid_channel = min(512,
      in_channels[-1])`, the deepest student tap's channels capped at
      `max_mid_channels` (mdistiller reads `MAX_MID_CHANNEL`,
      ReviewKD.py:42, but uses the literal 512);
    - the loss is `hcl_loss` (ReviewKD.py:11-28, see `hcl_loss`), the
      factor `min(kwargs["epoch"] / self.warmup_epochs, 1.0)`
      (ReviewKD.py:94-98), with epochs counted from 1
      (`mdistiller/engine/trainer.py:78-87`), read from the `Distiller`'s
      `epoch` (`needs_epoch`), constant within an epoch;
    - the taps: mdistiller's student gives its stage outputs (pre-ReLU
      with `STU_PREACT`, False for CIFAR, cfg.py:159) and its pooled
      feature as 1x1 (ReviewKD.py:72-79), the teacher its pre-ReLU stage
      outputs but the stem's (`preact_feats[1:]`) and its pooled feature
      (ReviewKD.py:89-91). Here each is a named layer; a `(batch,
      channels)` tap is taken as a 1x1 map. In `ft_keras.models`' ResNets
      `stage{i}` is a stage's post-ReLU output, `stage{i}_block{last}_add`
      its pre-ReLU sum and `avg_pool` the pooled feature;
    - the defaults are mdistiller's CIFAR-100 run
      (`configs/cifar100/reviewkd.yaml`, resnet32x4 -> resnet8x4):
      `REVIEWKD_WEIGHT` 5.0 and, from cfg.py:150-159, `WARMUP_EPOCHS` 20
      and CE weight 1.0 (the `Distiller`'s `student_loss_weight`); 240
      epochs, batch 64, SGD 0.05, momentum 0.9, weight decay 5e-4. Its
      ImageNet configs use weight 1.0 (ResNet34 -> ResNet18) or 8.0
      (ResNet50 -> MobileNetV1) with a 1-epoch warm-up.

    Args:
        teacher_layers: Teacher layer names, shallowest first.
        student_layers: Student layer names, as many, paired in order.
        weight: The term's weight (`REVIEWKD_WEIGHT`, 5.0 for CIFAR-100).
        warmup_epochs: Epochs over which the factor rises linearly to 1 (20
            in mdistiller); 0 for none.
        max_mid_channels: Cap of the fusions' channels (512 in mdistiller).
        name: The term's name; its loss is logged as `<name>_loss`.
        **kwargs: `keras.layers.Layer` keyword arguments.

    Example:

    >>> import numpy as np
    >>> term = ReviewKD(["t1", "t2", "t_pool"], ["s1", "s2", "s_pool"])
    >>> term.connect([(None, 8, 8, 16), (None, 4, 4, 32), (None, 32)],
    ...              [(None, 8, 8, 8), (None, 4, 4, 16), (None, 16)])
    >>> [(f.mid_channels, f.out_channels, f.output_size, f.fuse)
    ...  for f in term.fusions]  # doctest: +NORMALIZE_WHITESPACE
    [(16, 16, (8, 8), True), (16, 32, (4, 4), True),
     (16, 32, (1, 1), False)]
    >>> rng = np.random.default_rng(0)
    >>> maps = lambda *shapes: [rng.normal(size=s).astype("float32")
    ...                         for s in shapes]
    >>> teacher, student = term(maps((2, 8, 8, 16), (2, 4, 4, 32), (2, 32)),
    ...                         maps((2, 8, 8, 8), (2, 4, 4, 16), (2, 16)))
    >>> [tuple(m.shape) for m in student]
    [(2, 8, 8, 16), (2, 4, 4, 32), (2, 1, 1, 32)]
    >>> tuple(term.compute_loss(teacher, student, epoch=np.float32(1)).shape)
    (2,)

    In a `Distiller` (mdistiller's CIFAR-100 taps on `ft_keras.models`'
    ResNets; 4 stages of 3, so the pre-ReLU teacher taps would be
    `stage{i}_block{n}_add`):

    ```python
    taps = ["stage1", "stage2", "stage3", "avg_pool"]
    reviewkd = ft_keras.ReviewKD(taps, taps, weight=5.0, warmup_epochs=20)
    distiller = ft_keras.Distiller(teacher, student, terms=[reviewkd])
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    distiller.fit(train_ds, epochs=240)
    ```
    """

    needs_epoch = True

    def __init__(self, teacher_layers, student_layers, weight=5.0,
                 warmup_epochs=20, max_mid_channels=512, name="reviewkd",
                 **kwargs):
        teacher_layers, student_layers = _checked_taps(teacher_layers,
                                                       student_layers)
        super().__init__(teacher_layers, student_layers, weight=weight,
                         name=name, **kwargs)
        self.warmup_epochs = _validation.non_negative(
            "warmup_epochs", warmup_epochs, "20 in mdistiller, 0 for none")
        if (isinstance(max_mid_channels, bool)
                or not isinstance(max_mid_channels, int)
                or max_mid_channels <= 0):
            raise ValueError(
                "`max_mid_channels` must be a positive integer (512 in "
                f"mdistiller). Received: max_mid_channels={max_mid_channels!r}")
        self.max_mid_channels = max_mid_channels
        self.fusions = None
        self._shapes = None

    def connect(self, teacher_shapes, student_shapes):
        """Builds one `AttentionBasedFusion` per tap pair, from the
        student's map to the teacher's channels and size."""
        teacher = [_map_shape("Teacher", n, s)
                   for n, s in zip(self.teacher_layers, teacher_shapes)]
        student = [_map_shape("Student", n, s)
                   for n, s in zip(self.student_layers, student_shapes)]
        shapes = ([s[1:] for s in teacher], [s[1:] for s in student])
        if self.fusions is not None:
            if shapes != self._shapes:
                raise ValueError(
                    f"ReviewKD {self.name!r} was connected to maps of shapes "
                    f"{self._shapes} (teacher, student), not {shapes}: make "
                    "a new term for other networks.")
            return
        mid = min(self.max_mid_channels, student[-1][-1])
        last = len(student) - 1
        self.fusions = [
            AttentionBasedFusion(mid, t[-1], t[1:3], fuse=i < last,
                                 name=f"abf{i + 1}")
            for i, t in enumerate(teacher)]
        for fusion, s in zip(self.fusions, student):
            fusion.build(s)
        self._shapes = shapes
        self.built = True

    def call(self, teacher, student, training=None):
        """`(teacher maps, fused student maps)`, both in tap order, rank-2
        taps as 1x1 maps."""
        x = [_as_map(s) for s in student]
        out, residual = self.fusions[-1](x[-1], training=training)
        results = [out]
        for i in range(len(x) - 2, -1, -1):
            out, residual = self.fusions[i](x[i], residual, training=training)
            results.insert(0, out)
        return [_as_map(t) for t in teacher], results

    def warmup(self, epoch):
        """The factor in epoch `epoch` (counted from 1): `min(epoch /
        warmup_epochs, 1)`, or 1 without warm-up."""
        if not self.warmup_epochs:
            return ops.ones_like(epoch)
        return ops.minimum(epoch / self.warmup_epochs, 1.0)

    def compute_loss(self, teacher, student, epoch):
        return self.warmup(epoch) * hcl_loss(teacher, student)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "warmup_epochs": self.warmup_epochs,
                "max_mid_channels": self.max_mid_channels,
            }
        )
        return config
