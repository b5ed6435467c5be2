"""One stage's `fit`, resumable exactly: the callbacks every stage gets,
the optimizer of its gin scope, and the resume from the stage's checkpoint
on the same data the uninterrupted run saw there (`ft_keras.checkpoint`).

Each function but `stage_callbacks` takes the run's
`ft_keras.stages.context.RunContext`; those that train take its
`TrainStream` too.
"""

import os
import random
import shutil
import sys

import keras

from ft_keras import _keras_resume
from ft_keras import callbacks as ft_callbacks
from ft_keras import checkpoint as ft_checkpoint
from ft_keras import config
from ft_keras import distribute
from ft_keras import preemption
from ft_keras import stages as ft_stages
from ft_keras import workdir as ft_workdir
from ft_keras._validation import ConfigurationError
from ft_keras.stages import context as ft_context
from ft_keras.stages import inputs


def save_stage(context, stage, artifacts):
    """Saves a finished stage's `{file name: model}` into the workdir
    (`RunWorkdir.save`), with Python's random state after the stage in its
    stage.json (`align_python_random`)."""

    def python_random():
        state = random.getstate()
        return {
            "python_random": {
                "stages": list(context.stages),
                "state": [state[0], list(state[1]), state[2]],
            }
        }

    context.workdir.save(stage, artifacts, extra=python_random)


def stage_callbacks(stage, stage_dir, checkpoint_every="epoch", metadata=None,
                    delete_on_end=True):
    """The callbacks of every stage: a stop on NaN/inf losses that keeps the
    last good checkpoint, exact, crash-safe checkpoints in
    `stage_dir/backup` (`ft_keras.checkpoint.ResumableCheckpoint`), a CSV of
    per-epoch metrics that continues on resume (after the checkpoint, which
    records each epoch's row once it is written) and TensorBoard logs.

    Args:
        stage: The stage's name, for messages.
        stage_dir: Its directory.
        checkpoint_every: `"epoch"`, or a number of steps between
            checkpoints (`experiment.checkpoint_every`).
        metadata: A dict saved with each checkpoint (the runner's position
            in the training data).
        delete_on_end: Delete the checkpoints when `fit` ends; the runner
            deletes them once the stage's artifacts are saved instead.
    """
    log = os.path.join(stage_dir, "log.csv")
    return [
        ft_callbacks.StopOnNonFiniteLoss(stage),
        ft_checkpoint.ResumableCheckpoint(
            os.path.join(stage_dir, "backup"),
            save_freq=checkpoint_every,
            name=f"stage {stage}",
            csv_log=log,
            metadata=metadata,
            delete_on_end=delete_on_end,
        ),
        keras.callbacks.CSVLogger(log, append=True),
        keras.callbacks.TensorBoard(os.path.join(stage_dir, "tensorboard")),
    ]


def optimizer(context, scope):
    """The optimizer of `<scope>/training`, its schedule in steps."""
    try:
        context.settings.check_weight_decay(scope)
    except ValueError as e:
        raise ConfigurationError(str(e)) from None
    return context.settings.training[scope].build_optimizer(context.steps_per_epoch)


def fit(context, stream, stage, model, epochs, validation_data=None):
    """Trains `model` for `epochs` on `stream`, resuming exactly from the
    stage's checkpoint if it has one (`resume_fit`), and writes its
    stage.json."""
    stage_dir = _stage_dir(context, stage)
    start = data_start(context, stage)
    throughput = ft_callbacks.Throughput(context.global_batch, context.steps_per_epoch)
    callbacks = stage_callbacks(
        stage,
        stage_dir,
        context.settings.experiment.checkpoint_every,
        metadata={"data_start": start},
        delete_on_end=False,
    ) + [throughput]
    if validation_data is not None and not context.dry_run:
        callbacks.append(
            ft_callbacks.ChanceAccuracyWarning(
                context.num_classes, metric="top1", name=f"{stage} stage's network"
            )
        )
    if context.dry_run:
        _dry_run_fit(context, stream, stage, model, epochs, validation_data,
                     callbacks)
        wall, end = throughput.wall_time, None
    else:
        wall, end = resume_fit(
            context, stream, stage, model, epochs, validation_data, callbacks, start
        )
    _print_fingerprint(context, stage, model)
    _write_stage_record(context, stage_dir, epochs, throughput, wall, end)


def _stage_dir(context, stage):
    """The stage's output directory, made; a worker other than the chief
    copies the chief's checkpoints and log there."""
    stage_dir = context.workdir.output(stage)
    os.makedirs(stage_dir, exist_ok=True)
    if not context.is_chief and os.path.isdir(context.workdir.path(stage, "backup")):
        # Resume from the chief's checkpoint, like every worker; its
        # log.csv too, which decides which checkpoint is complete.
        shutil.copytree(
            context.workdir.path(stage, "backup"),
            os.path.join(stage_dir, "backup"),
            dirs_exist_ok=True,
        )
        if os.path.exists(context.workdir.path(stage, "log.csv")):
            shutil.copyfile(
                context.workdir.path(stage, "log.csv"), os.path.join(stage_dir, "log.csv")
            )
    return stage_dir


def _dry_run_fit(context, stream, stage, model, epochs, validation_data,
                 callbacks):
    """A few eager steps on the dry run's data, then `dry_run_line`."""
    # Random images and a two-step teacher (its BatchNorm statistics
    # barely moved) can overflow: the dry run checks the wiring, not
    # the numbers. Two steps run faster eagerly than traced, and
    # without checkpoints (a ResNet-50's costs seconds to write; the
    # temporary workdir is removed anyway).
    skipped = (ft_callbacks.StopOnNonFiniteLoss, ft_checkpoint.ResumableCheckpoint)
    callbacks = [c for c in callbacks if not isinstance(c, skipped)]
    model.run_eagerly = True
    history = model.fit(
        _inputs_for(model, stream.dataset),
        epochs=1,
        steps_per_epoch=inputs.DRY_RUN_STEPS,
        validation_data=validation_data,
        callbacks=callbacks,
        shuffle=False,  # the pipeline shuffles
        verbose=0,
    )
    print(dry_run_line(context, stage, epochs, history), flush=True)


def _print_fingerprint(context, stage, model):
    """With several workers, prints this worker's weights' fingerprint:
    equal on every worker when they are in sync."""
    info = distribute.task_info(context.strategy)
    if info.num_workers > 1:
        print(
            f"[ft_keras] {info.task_type} {info.task_id}: stage {stage} "
            f"weights {distribute.weights_fingerprint(model)}",
            flush=True,
        )


def _write_stage_record(context, stage_dir, epochs, throughput, wall, end):
    """Writes the stage's stage.json: its time, speed and epochs, and where
    the training data stream stood after it (`end`)."""
    ft_workdir.write_json(
        os.path.join(stage_dir, ft_workdir.STAGE_FILE),
        {
            "wall_time_s": wall,
            "images_per_second": throughput.images_per_second,
            "epochs_run": len(throughput.epoch_seconds),
            "epochs": epochs,
            "replicas": context.replicas,
            "global_batch_size": context.global_batch,
            # Where the training data stream stood after this stage, in
            # the run of these stages (`_data_start`).
            "data_iterations": end,
            "data_stages": list(context.stages),
        },
    )


def resume_fit(context, stream, stage, model, epochs, validation_data, callbacks,
               start):
    """Fits from the stage's checkpoint position on the same data the
    uninterrupted run saw there; returns `(wall time, data iterations
    after the stage)`.

    The training data are a pure function of the seed and the number of
    iterators created on the dataset before (each draws the next shuffle
    order and augmentation seeds): the stage started at iterator `start`
    and `fit` creates `_keras_resume.fit_peeks(model)`, then
    `ITERATORS_PER_EPOCH` per epoch, the first of them the epoch's.
    A mid-epoch checkpoint after `step` batches of `epoch` fits
    that epoch first on a fresh copy of the pipeline, brought to the
    same iterator, without those batches.
    """
    checkpoint = next(
        c for c in callbacks if isinstance(c, ft_checkpoint.ResumableCheckpoint)
    )
    restored = checkpoint.restored_metadata
    if restored and "data_start" in restored:
        start = restored["data_start"]
        checkpoint.metadata["data_start"] = start
    position = checkpoint.position
    resumed = (
        f", resumed at epoch {position.epoch + 1}, step {position.step}"
        if position != (0, 0)
        else ""
    )
    print(f"[ft_keras] stage {stage}: {epochs} epochs{resumed}", flush=True)
    peeks = _keras_resume.fit_peeks(model)
    per_epoch = _keras_resume.ITERATORS_PER_EPOCH
    epoch, segments = position.epoch, []
    if position.step:
        partial = inputs.dataset(context, training=True)
        ft_context.skip_iterations(partial, start + per_epoch * epoch)
        segments.append((_inputs_for(model, partial.skip(position.step)),
                         epoch, epoch + 1))
        epoch += 1
    if epoch < epochs or not segments:
        data = _inputs_for(model, stream.at(context, start + per_epoch * epoch))
        segments.append((data, epoch, epochs))
        stream.used += peeks + per_epoch * (epochs - epoch)
    throughput = next(
        c for c in callbacks if isinstance(c, ft_callbacks.Throughput)
    )
    wall = 0.0
    for dataset, first, last in segments:
        with preemption.deferred():
            model.fit(
                dataset,
                initial_epoch=first,
                epochs=last,
                validation_data=validation_data,
                callbacks=callbacks,
                shuffle=False,  # the pipeline shuffles
                verbose=1 if sys.stdout.isatty() else 2,
            )
        wall += throughput.wall_time
    return wall, start + peeks + per_epoch * epochs


def _inputs_for(model, dataset):
    """`dataset` as `model` takes it: with each example's index only for a
    `Distiller` whose terms need it (`inputs.images_only`)."""
    if getattr(model, "needs_indices", False):
        return dataset
    return inputs.images_only(dataset)


def data_start(context, stage):
    """The number of training-data iterators created before `stage` in
    an uninterrupted run of these stages: where the last earlier stage
    of this stage list left the stream (its stage.json), else 0."""
    start = 0
    order = list(context.stages)
    for earlier in order[: order.index(stage)] if stage in order else ():
        for path in (context.workdir.output(earlier, ft_workdir.STAGE_FILE),
                     context.workdir.path(earlier, ft_workdir.STAGE_FILE)):
            if os.path.exists(path):
                record = ft_workdir.read_json(path)
                if record.get("data_stages") == list(context.stages):
                    start = max(start, record.get("data_iterations") or 0)
                break
    return start


def dry_run_line(context, stage, epochs, history):
    """What the real run of `stage` would do, and how the dry run went."""
    opt = context.settings.training[config.STAGE_SCOPES[stage]]
    steps = context.steps_per_epoch
    known = context.train_examples is not None
    per_epoch = (
        f"{steps:,} steps"
        if known
        else "? steps (split size unknown " "until the dataset is prepared)"
    )
    schedule = f"{opt.optimizer} lr {opt.learning_rate:g} {opt.schedule}"
    if opt.schedule == "step" and opt.boundaries:
        at = [b * steps for b in opt.boundaries]
        schedule += f", x{opt.decay:g} at steps {at}"
    if opt.warmup_epochs:
        schedule += f", warm-up {int(opt.warmup_epochs * steps)} steps"
    if opt.weight_decay:
        schedule += (
            f", weight decay {opt.weight_decay:g} " f"{opt.weight_decay_mode}"
        )
    logs = {k: v[-1] for k, v in history.history.items()}
    ran = ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if k.endswith("loss"))
    shape = "x".join(str(d) for d in context.input_shape)
    return (
        f"[ft_keras] dry run: stage {stage}: {epochs} epochs x "
        f"{per_epoch} at global batch {context.global_batch}"
        f"{f' = {epochs * steps:,} steps' if known else ''}; {schedule}. "
        f"Ran {inputs.DRY_RUN_STEPS} steps at batch "
        f"{inputs.DRY_RUN_BATCH * context.replicas} on synthetic {shape} data: "
        f"{ran or 'ok'}"
    )


def align_python_random(context, nets, stage):
    """Sets Python's `random` state, from which Keras draws the seed of
    every new layer's initializer, to the uninterrupted run's at the
    start of `stage`: what the nearest earlier training stage of these
    stages recorded when it finished (`save_stage`). A rerun that skipped it
    as done, or loaded a network the uninterrupted run had in memory,
    would otherwise initialise every later network differently. In an
    uninterrupted run the state is already that one."""
    order = list(context.stages)
    record = None
    for earlier in reversed(order[: order.index(stage)]):
        if earlier not in context.artifacts:
            return  # evaluate or export in between: nothing recorded
        path = context.workdir.path(earlier, ft_workdir.STAGE_FILE)
        if os.path.exists(path):
            # Ran (or runs) but recorded nothing: do not guess further.
            record = ft_workdir.read_json(path).get("python_random")
            break
    if record is None or record["stages"] != order:
        return
    files = context.artifacts.get(stage, ())
    if (
        ("teacher", "model.keras") in ft_stages.get(stage).reads
        and not nets.teacher_loaded
        and files  # a stage with no artifacts here is skipped
        and not context.workdir.done(stage, files[-1])
        and context.workdir.done("teacher", "model.keras")
    ):
        # Loading draws seeds too: load now, as the uninterrupted run
        # held the teacher in memory.
        nets.trained_teacher(context)
    version, internal, gauss = record["state"]
    random.setstate((version, tuple(internal), gauss))
