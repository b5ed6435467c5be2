"""FitNets (Romero et al., ICLR 2015) as a term, and its regressor."""

import keras

from ft_keras import layers as ft_layers
from ft_keras import losses as ft_losses
from ft_keras.pretraining import HintTrainer
from ft_keras.taps import features
from ft_keras.terms.base import Term

_PACKAGE = "ft_keras"

# ConvReg's cases, by the heights of the student's map and the teacher's.
CASES = ("stride2", "transpose", "valid")


def regressor_case(student_size, teacher_size):
    """Which of ConvReg's convolutions maps a student map of
    `(height, width)` `student_size` to a teacher map of `teacher_size`, in
    its order: `"stride2"` if the student's height is twice the teacher's,
    `"transpose"` if it is half, `"valid"` if it is at least the teacher's
    (and so is its width). Raises a `ValueError` naming both otherwise.

    Example:

    >>> regressor_case((16, 16), (8, 8)), regressor_case((8, 8), (8, 8))
    ('stride2', 'valid')
    >>> regressor_case((4, 4), (8, 8)), regressor_case((10, 10), (8, 8))
    ('transpose', 'valid')
    """
    (s_h, s_w), (t_h, t_w) = student_size, teacher_size
    if s_h == 2 * t_h:
        return "stride2"
    if 2 * s_h == t_h:
        return "transpose"
    if s_h >= t_h and s_w >= t_w:
        return "valid"
    raise ValueError(
        "FitNets' regressor (RepDistiller's ConvReg) maps a student map "
        "whose height is twice the teacher map's, half of it, or at least "
        "it (and whose width is at least the teacher map's). Received: "
        f"student map {tuple(student_size)}, teacher map {tuple(teacher_size)} "
        "(height, width). Tap a student layer of such a size."
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HintRegressor(keras.layers.Layer):
    """FitNets' regressor: a student feature map to the teacher map's shape.

    RepDistiller's `ConvReg` (`models/util.py`; mdistiller's
    `mdistiller/distillers/_common.py` is the same), built on a student
    map `(N, s_H, s_W, s_C)` for a teacher map `(t_H, t_W, t_C)`: one
    convolution with bias to `t_C` channels, chosen by `regressor_case`,

    - `s_H == 2 t_H`: 3x3, stride 2, padding 1 (`nn.Conv2d(s_C, t_C, 3, 2,
      1)`);
    - `2 s_H == t_H`: 4x4 transposed, stride 2, padding 1
      (`nn.ConvTranspose2d(s_C, t_C, 4, 2, 1)`);
    - `s_H >= t_H`: `(1 + s_H - t_H) x (1 + s_W - t_W)`, no padding (1x1
      for maps of the same size);

    then `BatchNormalization` (PyTorch's `BatchNorm2d`: epsilon 1e-5,
    momentum 0.1, i.e. Keras' 0.9; Keras updates the moving variance with
    the biased batch variance) and, with `use_relu`, a ReLU. The padding is
    PyTorch's: one row and column of zeros on every side before the
    stride-2 convolution (Keras' `"same"` would pad an even map at the
    bottom and right only), and the transposed convolution's output
    cropped by one on every side.

    Like the Factor Transfer connectors it computes in float32 unless a
    `dtype` is given, also under a mixed precision policy.

    Args:
        target_shape: The teacher map's `(height, width, channels)`.
        use_relu: Whether a ReLU ends the regressor (ConvReg's default,
            which RepDistiller and mdistiller use).
        kernel_regularizer: Optional regularizer of the convolution kernel.
        **kwargs: Base layer keyword arguments, such as `name`.

    Example:

    ```python
    import numpy as np
    regressor = ft_keras.HintRegressor((8, 8, 64))
    student_map = np.random.rand(2, 16, 16, 32).astype("float32")
    regressor(student_map).shape  # (2, 8, 8, 64): the stride-2 case
    ```
    """

    def __init__(self, target_shape, use_relu=True, kernel_regularizer=None,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        target_shape = tuple(target_shape)
        if len(target_shape) != 3 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0
            for d in target_shape
        ):
            raise ValueError(
                "`target_shape` must be the teacher map's (height, width, "
                "channels), three positive integers. Received: "
                f"target_shape={target_shape!r}"
            )
        self.target_shape = target_shape
        self.use_relu = bool(use_relu)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.case = None

    def _conv(self, cls, kernel_size, strides):
        return cls(
            self.target_shape[-1], kernel_size, strides=strides,
            padding="valid", use_bias=True,
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy, name="conv",
        )

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "`HintRegressor` expects a feature map of shape (batch, "
                "height, width, channels) with known channels. Received: "
                f"input_shape={tuple(input_shape)}"
            )
        (s_h, s_w), (t_h, t_w) = input_shape[1:3], self.target_shape[:2]
        self.case = regressor_case((s_h, s_w), (t_h, t_w))
        if self.case == "stride2":
            self.stack = [keras.layers.ZeroPadding2D(1, dtype=self.dtype_policy),
                           self._conv(keras.layers.Conv2D, 3, 2)]
        elif self.case == "transpose":
            self.stack = [self._conv(keras.layers.Conv2DTranspose, 4, 2),
                           keras.layers.Cropping2D(1, dtype=self.dtype_policy)]
        else:
            kernel = (1 + s_h - t_h, 1 + s_w - t_w)
            self.stack = [self._conv(keras.layers.Conv2D, kernel, 1)]
        self.stack.append(ft_layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, dtype=self.dtype_policy, name="bn"))
        shape = tuple(input_shape)
        for layer in self.stack:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, inputs, training=None):
        x = inputs
        for layer in self.stack[:-1]:
            x = layer(x)
        x = self.stack[-1](x, training=training)
        return keras.ops.relu(x) if self.use_relu else x

    def compute_output_shape(self, input_shape):
        height, width = input_shape[1:3]
        case = regressor_case((height, width), self.target_shape[:2])
        if case == "stride2":
            height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
        elif case == "transpose":
            height, width = 2 * height, 2 * width
        else:
            height, width = self.target_shape[:2]
        return (input_shape[0], height, width, self.target_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "target_shape": self.target_shape,
                "use_relu": self.use_relu,
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FitNets(Term):
    """FitNets' hint (Romero, Ballas, Kahou, Chassang, Gatta & Bengio, ICLR
    2015) as a term, trained jointly with the student as RepDistiller
    trains it.

    A trained `HintRegressor` maps the student's map at `student_layer` to
    the shape of the teacher's map at `teacher_layer`; the term is the mean
    squared difference of the two over all elements
    (`ft_keras.losses.hint_loss`), logged as `fitnets_loss` (before
    `weight`). It follows HobbitLong/RepDistiller:

    - the loss is `HintLoss` of `distiller_zoo/FitNet.py`, `nn.MSELoss()`;
    - the regressor is `ConvReg` of `models/util.py` (see
      `HintRegressor`), made by `connect` from the taps' shapes;
    - `train_student.py --distill hint` trains student and regressor
      together from the first epoch on `1 * CE + 100 * hint` (`-r 1 -a 0 -b
      100` in `scripts/run_cifar_distill.sh`; mdistiller's
      `CFG.FITNET.LOSS.FEAT_WEIGHT` is 100 too), without the paper's
      separate hint pre-training stage, which `hint_trainer(teacher,
      student)` offers;
    - its tap is `--hint_layer 2`, the output of the network's second
      stage (`layer2` of its CIFAR ResNets): `"stage2"` in
      `ft_keras.models`.

    Args:
        teacher_layer: Teacher layer name of the hint (`"stage2"` for
            RepDistiller's `--hint_layer 2`).
        student_layer: Student layer name of the guided map, likewise.
        weight: The term's weight (100 in RepDistiller and mdistiller).
        use_relu: Whether the regressor ends with a ReLU (ConvReg's
            default, which RepDistiller and mdistiller use).
        kernel_regularizer: Optional regularizer of the regressor's kernel.
        name: The term's name; its loss is logged as `<name>_loss`.
        **kwargs: `keras.layers.Layer` keyword arguments.

    Example:

    ```python
    fitnets = ft_keras.FitNets("stage2", "stage2", weight=100.0)
    distiller = ft_keras.Distiller(teacher, student, terms=[fitnets])
    fitnets.regressor  # the HintRegressor, trained with the student
    ```
    """

    def __init__(self, teacher_layer, student_layer, weight=100.0,
                 use_relu=True, kernel_regularizer=None, name="fitnets",
                 **kwargs):
        for arg, value in (("teacher_layer", teacher_layer),
                           ("student_layer", student_layer)):
            if not isinstance(value, str):
                raise ValueError(
                    f"`{arg}` must be a layer name whose output is a feature "
                    "map, e.g. 'stage2' (RepDistiller's `--hint_layer 2`). "
                    f"Received: {arg}={value!r}"
                )
        super().__init__([teacher_layer], [student_layer], weight=weight,
                         name=name, **kwargs)
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self.use_relu = bool(use_relu)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.regressor = None

    def connect(self, teacher_shapes, student_shapes):
        teacher_map, student_map = tuple(teacher_shapes[0]), tuple(student_shapes[0])
        for layer, shape in ((self.teacher_layer, teacher_map),
                             (self.student_layer, student_map)):
            if len(shape) != 4 or None in shape[1:]:
                raise ValueError(
                    f"Layer {layer!r} gives a tensor of shape {shape}; a "
                    "FitNets tap must be a (batch, height, width, channels) "
                    "feature map of known size, such as a stage output."
                )
        if self.regressor is None:  # else `hint_trainer` made it
            self.regressor = HintRegressor(
                teacher_map[1:], use_relu=self.use_relu,
                kernel_regularizer=self.kernel_regularizer, name="regressor")
        regressed = self.regressor.compute_output_shape(student_map)
        if tuple(regressed[1:]) != teacher_map[1:]:
            raise ValueError(
                f"FitNets' regressor maps student layer {self.student_layer!r} "
                f"{student_map} to {tuple(regressed)}, not to the shape of "
                f"teacher layer {self.teacher_layer!r} {teacher_map}: ConvReg "
                "chooses its convolution by the heights alone, so the widths "
                "must scale as the heights do. Tap layers whose maps do."
            )
        if not self.regressor.built:
            self.regressor.build(student_map)
        self.built = True

    def hint_trainer(self, teacher, student, **kwargs):
        """The paper's first stage for this term's taps: a
        `ft_keras.pretraining.HintTrainer` of `student`'s layers up to
        `student_layer` and of this term's regressor (made here if the term
        has none yet). A `Distiller` made with this term afterwards keeps
        the pre-trained regressor."""
        if self.regressor is None:
            self.connect(
                [features.feature_extractor(
                    teacher, [self.teacher_layer], "teacher").output.shape],
                [features.feature_extractor(
                    student, [self.student_layer], "student").output.shape])
        return HintTrainer(teacher, student, self.regressor,
                           self.teacher_layer, self.student_layer, **kwargs)

    def call(self, teacher, student, training=None):
        """`(teacher, [regressor(student map)])`."""
        return teacher, [self.regressor(student[0], training=training)]

    def compute_loss(self, teacher, student):
        return ft_losses.hint_loss(teacher[0], student[0])

    def get_config(self):
        config = super().get_config()
        for key in ("teacher_layers", "student_layers"):
            config.pop(key)
        config.update(
            {
                "teacher_layer": self.teacher_layer,
                "student_layer": self.student_layer,
                "use_relu": self.use_relu,
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer),
            }
        )
        return config
