"""The training stages: `teacher`, `paraphraser` (the terms' pre-training),
`student` (the terms of `distillation.terms`) and `baseline` (the
student alone). Each runs its training model's `fit` (`ft_keras.stages.fit`)
and saves its artifacts into the workdir; a finished stage is skipped.

Each function takes the running `ft_keras.experiment.Experiment`.
"""

import os

from ft_keras import config
from ft_keras import distiller as ft_distiller
from ft_keras import distribute
from ft_keras import losses as ft_losses
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
    """Pre-trains the connectors of the terms that pre-train
    (`TermConfig.pretrains`): Factor Transfer's paraphraser."""
    distillation = experiment.settings.distillation
    files = experiment.ARTIFACTS["paraphraser"]
    if files and experiment.workdir.done("paraphraser", files[-1]):
        return
    if not files:
        print(
            f"[ft_keras] stage paraphraser: skipped, the terms "
            f"({distillation.label}) pre-train nothing",
            flush=True,
        )
        return
    networks.trained_teacher(experiment)
    teacher = experiment.teacher
    # One term at most pre-trains (`DistillationConfig`).
    (config_,) = [t for t in distillation.terms if t.pretrains]
    with distribute.scope(experiment.strategy):
        term = config_.build(teacher, experiment.student)
        trainer = config_.pretrainer(term, teacher)
        trainer.compile(optimizer=fit.optimizer(experiment, "paraphraser"))
    fit.fit(experiment, "paraphraser", trainer,
            experiment.settings.training["paraphraser"].epochs)
    fit.save_stage(experiment, "paraphraser",
                   config_.pretrained_artifacts(term, teacher))


def student(experiment):
    if experiment.workdir.done("student", "model.keras"):
        experiment.student = experiment.load(experiment.workdir.path("student", "model.keras"))
        return
    networks.trained_teacher(experiment)
    with distribute.scope(experiment.strategy):
        distiller = student_distiller(experiment)
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
    for config_, term in zip(experiment.settings.distillation.terms, distiller.terms):
        artifacts.update(config_.trained_artifacts(term, experiment.student))
    # The student last: its model.keras marks the stage finished.
    artifacts["model.keras"] = experiment.student
    fit.save_stage(experiment, "student", artifacts)


def student_distiller(experiment):
    """The `Distiller` of `distillation.terms`, each term with what its
    pre-training left (`paraphraser/paraphraser.keras` for Factor
    Transfer). Call in the strategy's scope."""
    distillation = experiment.settings.distillation
    built = []
    for config_ in distillation.terms:
        pretrained = {
            name: experiment.load(experiment.workdir.require("paraphraser", name))
            for name in config_.pretrained_files
        }
        built.append(config_.build(experiment.teacher, experiment.student, pretrained))
    return ft_distiller.Distiller(
        experiment.teacher,
        experiment.student,
        built,
        student_loss_weight=distillation.student_loss_weight,
    )


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
