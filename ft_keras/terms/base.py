"""`Term`: the base class of the distillation terms.

A term is a serialisable Keras layer that names the taps it needs, owns its
connectors and has a weight; `ft_keras.terms` says what each method's term
does, `ft_keras.Distiller` how they are summed.
"""

import keras

from ft_keras import _validation

_PACKAGE = "ft_keras"


def _layer_names(name, value):
    names = [value] if value is None or isinstance(value, str) else list(value)
    for layer_name in names:
        if layer_name is not None and not isinstance(layer_name, str):
            raise ValueError(
                f"`{name}` must list layer names (strings), or None for the "
                f"network's output. Received: {name}={value!r}"
            )
    return names


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Term(keras.layers.Layer):
    """Base class of the distillation terms of a `ft_keras.Distiller`.

    The `Distiller` runs each network once per step and hands every term
    the maps it tapped:

    - `call(teacher, student, training=None)` runs the term's connectors.
      `teacher` and `student` are lists of tensors in the order of
      `teacher_layers` and `student_layers` (the teacher's carry no
      gradient and come from the frozen teacher in inference mode). It
      returns `(teacher, student)`, the lists `compute_loss` receives.
      The default returns them unchanged.
    - `compute_loss(teacher, student)` returns the loss per example, shape
      `(batch,)`, as `keras.losses.Loss.call` does, from those lists cast
      to float32. A scalar is taken as the loss of the batch. The
      `Distiller` averages it over the global batch (under `tf.distribute`
      too), logs it as `loss_name` and adds `weight` times it to the loss.
    - `connect(teacher_shapes, student_shapes)` checks the taps' shapes and
      builds the connectors; the `Distiller` calls it once.

    A term that needs more than the maps says so, and `compute_loss` gets
    it as a keyword argument; the others are called as above, so a term
    written for `compute_loss(teacher, student)` keeps working:

    - `needs_labels = True`: `labels=`, the batch's labels as `fit` and
      `evaluate` got them (class indices, or one-hot or soft CutMix /
      MixUp labels of the logits' shape), cast to float32 as the maps are.
    - `needs_epoch = True`: `epoch=`, the number of the epoch in progress,
      counted from 1, a float32 scalar, the same for every step of an
      epoch (the `Distiller`'s `epoch` variable, which its `fit` sets at
      each epoch's start).

    A term that needs each example's index in the training set (a memory
    bank indexed by example, as `CRD`'s) sets `needs_indices = True`; its
    `call` then gets `indices=`: the batch's indices, an integer tensor of
    shape `(batch,)`, from the `"index"` entry of the `Distiller`'s inputs
    given as a dict, `{"images": images, "index": indices}` (see
    `ft_keras.Distiller`), or None where the inputs are plain images
    (`evaluate` or `predict` on a held-out set). `fit` without them raises
    a `ValueError` naming the term.

    Terms do not cast their inputs to a mixed precision policy's compute
    dtype (`autocast=False`): their connectors keep their own policy.

    Args:
        teacher_layers: Teacher layer names the term taps; `None` for the
            teacher's output (its logits).
        student_layers: Student layer names, likewise.
        weight: The term's weight in the student's loss (non-negative).
        **kwargs: `keras.layers.Layer` keyword arguments, such as `name`
            (which names the logged loss, `<name>_loss`).

    Example:

    ```python
    import keras
    import ft_keras

    class Hint(ft_keras.Term):
        \"\"\"FitNets' hint: a 1x1 regressor from the student's map to the
        teacher's, and their mean squared difference.\"\"\"

        def connect(self, teacher_shapes, student_shapes):
            self.regressor = keras.layers.Conv2D(teacher_shapes[0][-1], 1)
            self.regressor.build(student_shapes[0])
            self.built = True

        def call(self, teacher, student, training=None):
            return teacher, [self.regressor(student[0])]

        def compute_loss(self, teacher, student):
            return keras.ops.mean(keras.ops.square(teacher[0] - student[0]),
                                  axis=(1, 2, 3))

    hint = Hint(["stage2"], ["stage2"], weight=1.0, name="hint")
    ```
    """

    # What `compute_loss` receives besides the maps (see above).
    needs_labels = False
    needs_epoch = False
    # Whether `call` gets `indices=` (see above).
    needs_indices = False

    def __init__(self, teacher_layers=(), student_layers=(), weight=1.0, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.teacher_layers = _layer_names("teacher_layers", teacher_layers)
        self.student_layers = _layer_names("student_layers", student_layers)
        self.weight = _validation.non_negative("weight", weight, "1 to start")

    @property
    def loss_name(self):
        """The name `fit` logs this term's loss under: `<name>_loss`."""
        return f"{self.name}_loss"

    def connect(self, teacher_shapes, student_shapes):
        """Checks the tapped maps' shapes and builds the connectors.

        Args:
            teacher_shapes: Shapes of the teacher's taps, in the order of
                `teacher_layers`. The logits' (`None`) is `(None, None)`
                where the network's outputs are not known before it runs
                (a subclassed model, an unbuilt `keras.Sequential`).
            student_shapes: Shapes of the student's taps, likewise.

        Raises:
            ValueError: if the term cannot use these maps.
        """
        self.built = True

    def call(self, teacher, student, training=None):
        return teacher, student

    def compute_loss(self, teacher, student):
        raise NotImplementedError(
            f"{type(self).__name__} must implement `compute_loss(teacher, "
            "student)` (with `labels=` if it sets `needs_labels`, `epoch=` "
            "if it sets `needs_epoch`), returning the loss per example."
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher_layers": self.teacher_layers,
                "student_layers": self.student_layers,
                "weight": self.weight,
            }
        )
        return config

