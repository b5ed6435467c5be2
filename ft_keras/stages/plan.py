"""The stage plan, checked before any work: what each enabled stage
reads (the stage table, `ft_keras.stages`) is made by an enabled stage,
held by the workdir or given (`experiment.teacher_checkpoint`), and each
training stage's optimizer can be built.
"""

from ft_keras import distribute
from ft_keras import stages as ft_stages
from ft_keras._validation import ConfigurationError
from ft_keras.stages import fit
from ft_keras.stages import networks


def check(context):
    """Refuses, before any work, stages that cannot run: one that needs
    an artifact no enabled stage makes and the workdir does not hold,
    a teacher checkpoint that is not there, a stage whose optimizer cannot
    be built, and an artifact of a finished stage that is missing,
    truncated or changed."""
    for stage, names in context.artifacts.items():
        for name in names:
            context.workdir.done(stage, name)
    enabled = set(context.stages)
    terms = context.settings.distillation.terms
    label = context.settings.distillation.label
    checkpoint = context.settings.experiment.teacher_checkpoint
    if (checkpoint and "teacher" in enabled
            and not context.workdir.done("teacher", "model.keras")):
        networks.check_teacher_checkpoint(checkpoint)
    plan = [ft_stages.get(name) for name in context.stages]
    plan = [stage for stage in plan if stage.applies_to(terms)]
    for stage in plan:
        for need, artifact in stage.reads_for(terms):
            if need in enabled or context.workdir.done(need, artifact):
                continue
            if need == "teacher" and checkpoint:
                networks.check_teacher_checkpoint(checkpoint)
                continue
            hint = " or set `experiment.teacher_checkpoint`" if need == "teacher" else ""
            raise ConfigurationError(
                f"Stage {stage.name!r} (terms {label}) "
                f"needs the {need} stage's {need}/{artifact}, which no "
                f"enabled stage makes and {context.workdir} does not hold: "
                f"add {need!r} to `experiment.stages`{hint}. "
                f"Received: stages={list(context.stages)}"
            )
    for stage in plan:
        if not stage.trains or (stage.name == "teacher" and checkpoint):
            continue
        try:
            with distribute.scope(context.strategy):
                fit.optimizer(context, stage.scope)
        except ValueError as e:
            raise ConfigurationError(
                f"Stage {stage.name!r} cannot train with "
                f"`{stage.scope}/training`: {e}"
            ) from None
