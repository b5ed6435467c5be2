"""What a `Distiller` checks before it is built: its terms, its two models,
and the layers its terms tap.

Each check raises a `ValueError` naming what is wrong and how to mend it,
before any work, as `keras.distillation.Distiller` does; `check_terms`
runs them all without building a `Distiller` (the runner's `check`).
"""

import keras

from ft_keras.taps import features
from ft_keras import terms as ft_terms


def checked_terms(terms):
    """`terms` as a list of `ft_keras.Term`s with distinct names."""
    terms = list(terms) if isinstance(terms, (list, tuple)) else [terms]
    for term in terms:
        if not isinstance(term, ft_terms.Term):
            raise ValueError(
                "Each of `terms` must be an `ft_keras.Term` (`FactorTransfer`, "
                "`KnowledgeDistillation`, `AttentionTransfer`, `DecoupledKD`, "
                "`FitNets` or a subclass). "
                f"Received: {term!r}"
            )
    if not terms:
        raise ValueError(
            "A Distiller needs at least one term, e.g. "
            "`terms=[ft_keras.KnowledgeDistillation()]`; train the student "
            "alone with a plain `student.fit`. Received: terms=[]"
        )
    names = [term.name for term in terms]
    if len(set(names)) != len(names):
        raise ValueError(
            f"Each term needs its own name (its loss is logged as "
            f"`<name>_loss`). Received the names {names}: pass `name=` to "
            "tell them apart."
        )
    return terms


def tap_shape(model, name):
    """A tap's shape; `(None, None)` for the logits of a model whose
    outputs are not known before it runs (subclassed, unbuilt
    Sequential)."""
    if name is None and not features.has_taps(model):
        return (None, None)
    return tuple((model.outputs[0] if name is None else model.get_layer(name).output).shape)


def _checked_model(role, model):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{role}` must be a `keras.Model` (functional, Sequential or "
            f"subclassed) that maps a batch of images to logits. "
            f"Received: {role}={model!r}"
        )
    return model


def _check_taps(terms, teacher, student):
    """Refuses a term that taps layers of a model that cannot be tapped."""
    for term in terms:
        for role, model, taps in (("teacher", teacher, term.teacher_layers),
                                  ("student", student, term.student_layers)):
            layers = [name for name in taps if name is not None]
            if layers and not features.has_taps(model):
                raise ValueError(
                    f"The term {term.name!r} ({type(term).__name__}) taps the "
                    f"{role}'s layers {layers}, but the {role} {model.name!r} "
                    f"cannot be tapped: {features.why_not_tappable(model)}. "
                    "Terms that read only the logits (`KnowledgeDistillation`, "
                    "`DecoupledKD`, `DIST`) take any model. "
                    f"Received: {role}={model!r}"
                )


def _logits_shape(role, model):
    """The shape of `model`'s logits, `(batch, classes)`, or None where it
    is not known before the model runs."""
    if not features.has_taps(model):
        return None
    shapes = [tuple(output.shape) for output in model.outputs]
    if len(shapes) != 1 or len(shapes[0]) != 2:
        raise ValueError(
            f"The {role} must return its logits: one output of shape "
            f"(batch, classes). Received: {role}={model!r} with outputs of "
            f"shapes {shapes}. Give it one output, `keras.Model(inputs, "
            "logits)`, and tap other maps by layer name in a term."
        )
    return shapes[0]


def _input_shape(model):
    if features.has_taps(model) and len(model.inputs) == 1:
        return tuple(model.inputs[0].shape)
    return None


def _differ(a, b):
    """Whether two shapes differ where both are known (batch aside)."""
    return len(a) != len(b) or any(
        x is not None and y is not None and x != y for x, y in zip(a[1:], b[1:]))


def check_models(teacher, student, terms):
    """Validates `teacher` and `student` for `terms`, where their shapes are
    known, before any work: as `keras.distillation.Distiller` does."""
    _checked_model("teacher", teacher)
    _checked_model("student", student)
    _check_taps(terms, teacher, student)
    student_logits = _logits_shape("student", student)
    if any(None in term.teacher_layers for term in terms):
        teacher_logits = _logits_shape("teacher", teacher)
        if teacher_logits and student_logits and _differ(
                teacher_logits, student_logits):
            raise ValueError(
                "`teacher` and `student` must have the same number of classes "
                "for a term that compares their logits. Received: teacher "
                f"logits of shape {teacher_logits}, student logits of shape "
                f"{student_logits}. Give the student the teacher's classes."
            )
    shapes = _input_shape(teacher), _input_shape(student)
    if None not in shapes and _differ(*shapes):
        raise ValueError(
            "`teacher` and `student` get the same batches, so their input "
            f"shapes must agree. Received: teacher input shape {shapes[0]}, "
            f"student input shape {shapes[1]}. Build both for the images "
            "the data gives."
        )


def check_terms(teacher, student, terms):
    """Everything a `Distiller` of `terms` checks before it is built,
    without building it or freezing the teacher: the models, each tap's
    layer, and each term's `connect` on the taps' shapes.

    Raises:
        ValueError: naming what the terms cannot use.
    """
    terms = checked_terms(terms)
    check_models(teacher, student, terms)
    for term in terms:
        shapes = {}
        for role, model, taps in (("teacher", teacher, term.teacher_layers),
                                  ("student", student, term.student_layers)):
            names = [layer.name for layer in model.layers] if features.has_taps(model) else []
            for name in taps:
                if name is not None and name not in names:
                    raise ValueError(
                        f"The term {term.name!r} ({type(term).__name__}) taps "
                        f"the {role}'s layer {name!r}, which the {role} "
                        f"{model.name!r} does not have. Its feature taps: "
                        f"{feature_taps(model)}"
                    )
            shapes[role] = [tap_shape(model, name) for name in taps]
        term.connect(shapes["teacher"], shapes["student"])


def feature_taps(model):
    """The names of `model`'s feature taps, to name them in a message
    (`ft_keras.taps.feature_taps`)."""
    from ft_keras import taps  # its discovery reads the model registry

    return taps.feature_taps(model)
