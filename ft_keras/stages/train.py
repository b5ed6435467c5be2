"""The training stages: `teacher`, `paraphraser`, `student` (the
distillation method's terms, `ft_keras.methods`) and `baseline` (the
student alone). Each runs its training model's `fit` (`ft_keras.stages.fit`)
and saves its artifacts into the workdir; a finished stage is skipped.

Each function takes the running `ft_keras.experiment.Experiment`.
"""

import os

import keras

from ft_keras import config
from ft_keras import distiller as ft_distiller
from ft_keras import distribute
from ft_keras import losses as ft_losses
from ft_keras import methods
from ft_keras.pretraining import ParaphraserTrainer
from ft_keras.stages import fit
from ft_keras.stages import inputs
from ft_keras.stages import networks
from ft_keras.stages.evaluate import top_k_metrics


def teacher(experiment):
    if experiment.workdir.done("teacher", "model.keras"):
        networks.trained_teacher(experiment)
        return
    os.makedirs(experiment.workdir.output("teacher"), exist_ok=True)
    if experiment.settings.experiment.teacher_checkpoint:
        experiment.teacher = networks.load_teacher_checkpoint(experiment,
            experiment.settings.experiment.teacher_checkpoint
        )
    else:
        train_classifier(experiment, "teacher", experiment.teacher)
        if experiment.dry_run:
            networks.calibrate_batchnorm(experiment, experiment.teacher)
    fit.save_stage(experiment, "teacher", {"model.keras": experiment.teacher})
    experiment.teacher_loaded = True


def paraphraser(experiment):
    if experiment.workdir.done("paraphraser", "paraphraser.keras"):
        return
    if not experiment.settings.distillation.factor_transfer:
        print(
            f"[ft_keras] stage paraphraser: skipped, "
            f"distillation.method={experiment.settings.distillation.method!r} has none",
            flush=True,
        )
        return
    ft = experiment.settings.factor_transfer
    networks.trained_teacher(experiment)
    with distribute.scope(experiment.strategy):
        paraphraser, _ = networks.connectors(experiment)
        trainer = ParaphraserTrainer(
            experiment.teacher,
            paraphraser,
            ft.teacher_layer,
            reconstruction=ft.reconstruction,
        )
        trainer.compile(optimizer=fit.optimizer(experiment, "paraphraser"))
    fit.fit(experiment, "paraphraser", trainer, experiment.settings.training["paraphraser"].epochs)
    tap = networks.tap_shape(experiment, experiment.teacher, "teacher", ft.teacher_layer)
    fit.save_stage(experiment,
        "paraphraser",
        {
            "paraphraser.keras": keras.Sequential(
                [keras.Input(tap[1:]), paraphraser]
            )
        },
    )


def student(experiment):
    if experiment.workdir.done("student", "model.keras"):
        experiment.student = experiment.load(experiment.workdir.path("student", "model.keras"))
        return
    networks.trained_teacher(experiment)
    with distribute.scope(experiment.strategy):
        distiller, translator = student_distiller(experiment)
        distiller.compile(
            optimizer=fit.optimizer(experiment, "student"),
            metrics=top_k_metrics(experiment.num_classes),
        )
    fit.fit(experiment,
        "student",
        distiller,
        experiment.settings.training["student"].epochs,
        inputs.validation(experiment),
    )
    artifacts = {}
    if translator is not None:
        tap = networks.tap_shape(experiment,
            experiment.student, "student", experiment.settings.factor_transfer.student_layer
        )
        artifacts["translator.keras"] = keras.Sequential(
            [keras.Input(tap[1:]), translator]
        )
    # The student last: its model.keras marks the stage finished.
    artifacts["model.keras"] = experiment.student
    fit.save_stage(experiment, "student", artifacts)


def student_distiller(experiment):
    """The training model of `distillation.method` (`ft_keras.methods`),
    and its translator (None without Factor Transfer). Call in the
    strategy's scope."""
    ft, method = experiment.settings.factor_transfer, experiment.settings.distillation
    paraphraser = translator = None
    if method.factor_transfer:
        paraphraser = experiment.load(
            experiment.workdir.require("paraphraser", "paraphraser.keras")
        ).layers[-1]
        _, translator = networks.connectors(experiment)
    distiller = ft_distiller.Distiller(
        experiment.teacher,
        experiment.student,
        methods.terms(method, ft, paraphraser, translator),
        student_loss_weight=method.ce_weight,
    )
    return distiller, translator


def baseline(experiment):
    if experiment.workdir.done("baseline", "model.keras"):
        return
    with distribute.scope(experiment.strategy):
        baseline = networks.build(experiment, "student")
    train_classifier(experiment, "baseline", baseline)
    fit.save_stage(experiment, "baseline", {"model.keras": baseline})


def train_classifier(experiment, stage, model):
    scope = config.STAGE_SCOPES[stage]
    with distribute.scope(experiment.strategy):
        model.compile(
            optimizer=fit.optimizer(experiment, scope),
            # Class indices, or one-hot labels where `augment` mixes.
            loss=ft_losses.ClassificationCrossentropy(from_logits=True),
            metrics=top_k_metrics(experiment.num_classes),
        )
    fit.fit(experiment,
        stage, model, experiment.settings.training[scope].epochs, inputs.validation(experiment)
    )
