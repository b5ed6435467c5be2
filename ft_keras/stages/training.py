"""The training stages: `teacher`, `paraphraser` (the terms' pre-training),
`student` (the terms of `distillation.terms`) and `baseline` (the
student alone). Each runs its training model's `fit` (`ft_keras.stages.fit`)
and saves its artifacts into the workdir; a finished stage is skipped.

Each takes the run's `RunContext` and what it trains on: the `TrainStream`,
and the `Networks` it trains or uses (`ft_keras.stages.context`).
"""

import os

from ft_keras import config
from ft_keras import distiller as ft_distiller
from ft_keras import distribute
from ft_keras import losses as ft_losses
from ft_keras import metrics as ft_metrics
from ft_keras import stages as ft_stages
from ft_keras.stages import fit
from ft_keras.stages import inputs
from ft_keras.stages import networks


def teacher(context, nets, stream):
    """Trains `nets.teacher` (or loads `experiment.teacher_checkpoint`
    into it) and saves `teacher/model.keras`; a finished stage loads it."""
    if context.workdir.done("teacher", "model.keras"):
        nets.trained_teacher(context)
        return
    os.makedirs(context.workdir.output("teacher"), exist_ok=True)
    checkpoint = context.settings.experiment.teacher_checkpoint
    if checkpoint:
        nets.teacher = networks.load_teacher_checkpoint(context, nets, checkpoint)
    else:
        train_classifier(context, stream, "teacher", nets.teacher)
        if context.dry_run:
            networks.calibrate_batchnorm(
                nets.teacher, inputs.images_only(stream.dataset))
    fit.save_stage(context, "teacher", {"model.keras": nets.teacher})
    nets.teacher_loaded = True


def paraphraser(context, nets, stream):
    """Runs the pre-training of the term that has one
    (`TermConfig.pretrains`): Factor Transfer's paraphraser, or FitNets'
    hint stage of the paper (the student's lower part)."""
    distillation = context.settings.distillation
    files = context.artifacts[ft_stages.PRETRAINING]
    if files and context.workdir.done(ft_stages.PRETRAINING, files[-1]):
        return
    if not files:
        print(
            f"[ft_keras] stage {ft_stages.PRETRAINING}: skipped, the terms "
            f"({distillation.label}) pre-train nothing",
            flush=True,
        )
        return
    teacher = nets.trained_teacher(context)
    # One term at most pre-trains (`DistillationConfig`).
    (config_,) = [t for t in context.terms if t.pretrains]
    with distribute.scope(context.strategy):
        term = config_.build(teacher, nets.student)
        trainer = config_.pretrainer(term, teacher, nets.student)
        trainer.compile(optimizer=fit.optimizer(context, ft_stages.PRETRAINING))
    fit.fit(context, stream, ft_stages.PRETRAINING, trainer,
            context.settings.training[ft_stages.PRETRAINING].epochs)
    fit.save_stage(context, ft_stages.PRETRAINING,
                   config_.pretrained_artifacts(term, teacher, nets.student))


def student(context, nets, stream):
    """Trains `nets.student` with the terms and saves it with the terms'
    trained files; a finished stage loads `student/model.keras` into
    `nets.student`."""
    if context.workdir.done("student", "model.keras"):
        nets.student = context.load(context.workdir.path("student", "model.keras"))
        return
    nets.trained_teacher(context)
    with distribute.scope(context.strategy):
        distiller, built = student_distiller(context, nets)
        distiller.compile(
            optimizer=fit.optimizer(context, "student"),
            metrics=ft_metrics.top_k_metrics(context.num_classes),
        )
    fit.fit(context, stream, "student", distiller,
            context.settings.training["student"].epochs, context.validation())
    artifacts = {}
    for config_, term in built:
        artifacts.update(config_.trained_artifacts(term, nets.student))
    # The student last: its model.keras marks the stage finished.
    artifacts["model.keras"] = nets.student
    fit.save_stage(context, "student", artifacts)


def student_distiller(context, nets):
    """The `Distiller` of `distillation.terms` for the trained teacher and
    `nets.student`, each term with what its pre-training left
    (`paraphraser/paraphraser.keras` for Factor Transfer), and the
    `(config, term)` pairs of its terms. A config whose pre-training set
    the student up and that adds no term returns None from `build`. Call
    in the strategy's scope."""
    distillation = context.settings.distillation
    built = []
    for config_ in context.terms:
        pretrained = {
            name: context.load(context.workdir.require(ft_stages.PRETRAINING, name))
            for name in config_.pretrained_files
        }
        term = config_.build(nets.teacher, nets.student, pretrained)
        if term is not None:
            built.append((config_, term))
    distiller = ft_distiller.Distiller(
        nets.teacher,
        nets.student,
        [term for _, term in built],
        student_loss_weight=distillation.student_loss_weight,
    )
    return distiller, built


def baseline(context, stream):
    """Trains a new student network alone (cross-entropy only) and saves
    `baseline/model.keras`."""
    if context.workdir.done("baseline", "model.keras"):
        return
    with distribute.scope(context.strategy):
        # Its BatchNorm momentum was said when the run built the student.
        model = networks.build(context, "student", announce=False)
    train_classifier(context, stream, "baseline", model)
    fit.save_stage(context, "baseline", {"model.keras": model})


def train_classifier(context, stream, stage, model):
    """Compiles `model` with the cross-entropy and the stage's optimizer
    and fits it."""
    scope = config.STAGE_SCOPES[stage]
    with distribute.scope(context.strategy):
        model.compile(
            optimizer=fit.optimizer(context, scope),
            # Class indices, or one-hot labels where `augment` mixes.
            loss=ft_losses.ClassificationCrossentropy(from_logits=True),
            metrics=ft_metrics.top_k_metrics(context.num_classes),
        )
    fit.fit(context, stream, stage, model, context.settings.training[scope].epochs,
            context.validation())
