"""The stages of an experiment: teacher -> paraphraser -> student -> evaluate -> export.

`Experiment` is what `python -m ft_keras.train` runs (through `ft_keras.cli`):

    python -m ft_keras.train --gin_file=gin/distill.gin --workdir=/tmp/ft

Every stage leaves its artifact in the workdir; rerunning the same command
skips finished stages and resumes an interrupted one from its last
checkpoint. Everything here is plain Keras: `Experiment` builds the networks,
datasets and training models and calls `fit`, as a user would by hand.

Workdir layout:

    config.gin            the parsed config (a rerun must match it)
    operative_config.gin  the values actually used
    teacher/model.keras   + log.csv, tensorboard/, stage.json, backup/ while running
    paraphraser/paraphraser.keras
    student/model.keras, student/translator.keras
    baseline/model.keras  (the student trained alone, if that stage runs)
    results.json          evaluation, wall time and images/second per stage
    export/               SavedModel, TFLite float and int8, student.keras

With several workers (`ft_keras.distribute`, launch/), every worker runs the
same command; only the chief writes the workdir, the others write to a
temporary directory of their own, removed at the end.
"""

import contextlib
import difflib
import os
import random
import re
import shutil
import sys
import time

import gin
import keras
import numpy as np

from ft_keras import _keras_resume
from ft_keras import callbacks as ft_callbacks
from ft_keras import checkpoint as ft_checkpoint
from ft_keras import config
from ft_keras import data
from ft_keras import distiller as ft_distiller
from ft_keras import distribute
from ft_keras import export as ft_export
from ft_keras import methods
from ft_keras import models
from ft_keras import precision
from ft_keras import stages as ft_stages
from ft_keras import preemption
from ft_keras import terms as ft_terms
from ft_keras import workdir as ft_workdir
from ft_keras.pretraining import ParaphraserTrainer


class ConfigurationError(ValueError):
    """The experiment cannot start: bad config, inputs or workdir."""


# Bindings that may change between runs of the same experiment: the stages
# (e.g. to export later) and where it runs (one process, a cluster).
_RUNTIME_BINDINGS = r"experiment\.stages|experiment\.strategy|cluster\.\w+"


def _comparable_config(config_str):
    """The config's bindings without `_RUNTIME_BINDINGS` and comments."""
    bindings = re.sub(
        rf"^(?:{_RUNTIME_BINDINGS}) = .*?(?=^\S|\Z)",
        "",
        config_str,
        flags=re.M | re.S,
    )
    return "\n".join(
        line
        for line in bindings.splitlines()
        if line.strip() and not line.startswith("#")
    )


def top_k_metrics(num_classes):
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="top1")]
    if num_classes > 5:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"))
    return metrics


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


def _skip_iterations(dataset, count):
    """Creates and drops `count` iterators of `dataset`. Each draws the
    next epoch's shuffle order and augmentation seeds (the seed generators
    of `shuffle(reshuffle_each_iteration=True)` and `Dataset.random`), and
    none reads an element, so this costs milliseconds per epoch skipped."""
    for _ in range(count):
        iter(dataset)


class Experiment:
    """One Factor Transfer experiment in a workdir.

    Construction resolves the whole configuration, builds the networks and
    datasets and checks the taps, so that every configuration error is
    raised before any training. `run()` then runs the enabled stages.

    Args:
        workdir: Where the stages write (see the module docstring).
        overwrite: Delete the workdir first and start over.
        stages: Overrides `experiment.stages` (e.g. `["export"]`).
        strategy: Overrides the `tf.distribute` strategy that
            `experiment.strategy` and `cluster` select
            (`ft_keras.distribute.make_strategy`).
        dry_run: Two steps per stage on synthetic data (see `ft_keras.cli`).
        settings: A `ft_keras.config.Settings`; None reads them from gin's
            bindings (`ft_keras.config.from_gin`), the only place the
            experiment reads gin.

    Example:

    ```python
    import gin
    gin.parse_config_file("gin/quickstart.gin")
    results = Experiment("/tmp/quickstart").run()
    ```
    """

    def __init__(
        self,
        workdir,
        overwrite=False,
        stages=None,
        strategy=None,
        dry_run=False,
        settings=None,
    ):
        self.dry_run = dry_run
        # Read from gin once, here, unless given from Python.
        self._given_settings = settings is not None
        self.settings = settings or config.from_gin()
        self.stages = tuple(stages) if stages else self.settings.experiment.stages
        self.workdir = os.path.abspath(workdir)
        self.strategy = strategy or distribute.make_strategy(
            self.settings.experiment.strategy, self.settings.cluster
        )
        self.is_chief = distribute.is_chief(self.strategy)
        info = distribute.task_info(self.strategy)
        if info.num_workers > 1:
            spec = self.strategy.cluster_resolver.cluster_spec().as_dict()
            hosts = [a for job in ("chief", "worker") for a in spec.get(job, ())]
            print(
                f"[ft_keras] {info.task_type} {info.task_id} of a cluster of "
                f"{info.num_workers} workers ({', '.join(hosts)})"
                f"{', the chief' if info.is_chief else ''}",
                flush=True,
            )
        # Where this process writes: the workdir, or a worker's temp dir.
        self.output_dir = distribute.worker_dir(self.workdir, self.strategy)
        self._lock = ft_workdir.WorkdirLock(self.workdir)
        # A refused run leaves the workdir as it was: nothing is written or
        # deleted until the whole config is checked.
        self._created = not os.path.exists(self.workdir)
        self._fresh = overwrite  # its artifacts are to be deleted: none counts
        try:
            self._open_workdir(overwrite)
            with self._precision():
                self._build()
            self._commit_workdir(overwrite)
        except ft_workdir.WorkdirError as e:
            self._abandon()
            raise ConfigurationError(str(e)) from None
        except BaseException:
            self._abandon()
            raise

    @contextlib.contextmanager
    def _precision(self):
        """Keras's global dtype policy is `experiment.precision` inside, or
        float32 where `experiment.precision_check` falls back: measured once
        per run, never in a dry run (`ft_keras.precision.check`)."""
        if not hasattr(self, "_policy"):
            self._policy = precision.check(
                self.settings.experiment.precision,
                "off" if self.dry_run else self.settings.experiment.precision_check,
            )
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(self._policy)
        try:
            yield
        finally:
            keras.mixed_precision.set_global_policy(previous)

    def _build(self):
        """Everything after the workdir is ours: data, networks, checks."""
        distribute.barrier(self.strategy)

        if self.settings.experiment.seed is not None:
            # With the seeded, deterministic input pipeline this repeats a
            # run exactly on the CPU (tested). GPU kernels may still differ
            # run to run: call tf.config.experimental.enable_op_determinism()
            # for those, at some speed cost.
            keras.utils.set_random_seed(self.settings.experiment.seed)
        self.replicas = self.strategy.num_replicas_in_sync
        self.num_classes = data.num_classes(self.settings.dataset.name)
        self.input_shape = data.input_shape(
            self.settings.dataset.name,
            image_size=self.settings.dataset.options.get("image_size"),
        )
        self.global_batch = self.settings.dataset.batch_size * self.replicas
        self.train_ds = self._dataset(training=True)
        self.test_ds = self._dataset(training=False)
        if self.dry_run:
            self.steps_per_epoch = self._real_steps_per_epoch()
        else:
            self.steps_per_epoch = int(self.train_ds.cardinality())
        if self.steps_per_epoch < 1:
            raise ConfigurationError(
                f"The train split of {self.settings.dataset.name!r} gives no full "
                f"batch of {self.global_batch}: lower `dataset.batch_size`."
            )
        self._bn_noted = set()
        with distribute.scope(self.strategy):
            self.teacher = self._network("teacher")
            self.student = self._network("student")
        self._teacher_loaded = False
        self._whole = set()  # artifacts `_done` has checked whole
        self._check_taps()
        self._check_stage_plan()

    # What each training stage leaves in its directory of the workdir.
    ARTIFACTS = {s.name: s.writes for s in ft_stages.STAGES if s.trains}

    # ------------------------------------------------------------------
    # Set-up.

    def _requested_config(self):
        return self.settings.to_gin() if self._given_settings else gin.config_str()

    def _open_workdir(self, overwrite):
        """Locks the workdir and checks that it holds this config (unless
        `overwrite`); writes nothing else."""
        if not self.is_chief:
            distribute.remove_worker_dir(self.output_dir, self.workdir)
            os.makedirs(self.output_dir)
        else:
            # Before anything is read or deleted: a second run on a workdir
            # in use stops here, and --overwrite cannot delete a live run.
            self._lock.acquire()
        path = os.path.join(self.workdir, "config.gin")
        if overwrite or not os.path.exists(path):
            return
        with open(path) as f:
            saved = _comparable_config(f.read())
        requested = _comparable_config(self._requested_config())
        if saved == requested:
            return
        diff = [
            line
            for line in difflib.unified_diff(
                saved.splitlines(), requested.splitlines(), lineterm="", n=0
            )
            if line[:1] in "+-" and line[:3] not in ("+++", "---")
        ]
        if set(self.stages) <= {"evaluate", "export"}:
            fix = (
                "Give the config it was trained with, saved in the workdir: "
                f"--gin_file={path}"
            )
        else:
            fix = "Use another --workdir, or --overwrite to delete it and start over."
        raise ConfigurationError(
            f"The workdir {self.workdir} holds an experiment with a "
            f"different config, so it cannot be resumed. Differences "
            f"(- saved, + now): {'; '.join(diff[:6])}. {fix}"
        )

    def _commit_workdir(self, overwrite):
        """After every check passed: `--overwrite` deletes the old run, and
        the config files are written."""
        if overwrite and self.is_chief:
            for name in os.listdir(self.workdir):
                if name != ft_workdir.LOCK_FILE:
                    target = os.path.join(self.workdir, name)
                    if os.path.isdir(target) and not os.path.islink(target):
                        shutil.rmtree(target)
                    else:
                        os.remove(target)
        self._fresh = False
        self._whole.clear()
        if self.is_chief:
            path = os.path.join(self.workdir, "config.gin")
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.write(self._requested_config())
            os.replace(tmp, path)
        with open(self._out("operative_config.gin"), "w") as f:
            f.write(
                self.settings.to_gin()
                if self._given_settings
                else gin.operative_config_str()
            )
        # Other workers read the workdir after the chief has cleared it.
        distribute.barrier(self.strategy)

    def _abandon(self):
        """A refused start: releases the workdir, and removes it if this
        run created it (it holds only the lock file then)."""
        self.close()
        if self.is_chief and self._created and os.path.isdir(self.workdir):
            if set(os.listdir(self.workdir)) <= {ft_workdir.LOCK_FILE}:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _dataset(self, training, split=None, **overrides):
        cfg = self.settings.dataset
        if self.dry_run:
            return self._synthetic_dataset(training)
        if split is None:
            split = cfg.train_split if training else cfg.test_split
        options = dict(cfg.options if training else cfg.eval_options)
        options.update(overrides)
        options.setdefault("seed", self.settings.experiment.seed)
        if (
            self.settings.experiment.seed is not None
            or distribute.num_workers(self.strategy) > 1
        ):
            # Every worker must cut the same global batches from its copy.
            options.setdefault("deterministic", True)
        dataset = data.build_dataset(
            cfg.name,
            split,
            batch_size=(
                self.global_batch if training else cfg.eval_batch_size * self.replicas
            ),
            training=training,
            data_dir=cfg.data_dir,
            **options,
        )
        return dataset.with_options(
            distribute.shard_options(self.settings.cluster.auto_shard)
        )

    # Per replica; the dry run's steps are about wiring, not speed.
    DRY_RUN_BATCH = 4
    DRY_RUN_STEPS = 2

    def _synthetic_dataset(self, training):
        """`DRY_RUN_STEPS` batches shaped like the configured dataset's."""
        options = (
            self.settings.dataset.options
            if training
            else self.settings.dataset.eval_options
        )
        augment = options.get("augment") or ()
        augment = (augment,) if isinstance(augment, str) else augment
        mixing = any(str(a).lower().endswith(("cutmix", "mixup")) for a in augment)
        return data.synthetic_dataset(
            self.settings.dataset.name,
            batch_size=self.DRY_RUN_BATCH * self.replicas,
            steps=self.DRY_RUN_STEPS,
            image_size=options.get("image_size"),
            one_hot=mixing,
            seed=self.settings.experiment.seed or 0,
        )

    def _real_steps_per_epoch(self):
        """Steps per epoch of the real training split (1 if unknown)."""
        cfg = self.settings.dataset
        size = data.num_examples(cfg.name, cfg.train_split, cfg.data_dir)
        self._train_examples = size
        return max(1, size // self.global_batch) if size else 1

    def _network(self, role):
        net = self.settings.network[role]
        kwargs = dict(net.kwargs)
        momentum = kwargs.pop("bn_momentum", None)
        self._check_inherited_arguments(role)
        try:
            model = models.get(
                net.name,
                model_name=role,
                num_classes=self.num_classes,
                input_shape=self.input_shape,
                bn_momentum=momentum,
                **kwargs,
            )
        except ValueError as e:
            raise ConfigurationError(f"`{role}/network`: {e}") from None
        if momentum is None:
            self._suit_bn_momentum(role, model)
        return model

    def _check_inherited_arguments(self, role):
        """Refuses an argument bound for every network (`network.x`) that
        this role's network does not take, with the binding that clears it."""
        net = self.settings.network[role]
        set_kwargs = {k: v for k, v in net.kwargs.items() if k in net.inherited}
        for key in models.unsupported_arguments(net.name, set_kwargs):
            hint = (
                f", and decay it with `{role}/training.weight_decay`"
                if key == "weight_decay"
                else ""
            )
            raise ConfigurationError(
                f"`network.{key} = {net.kwargs[key]!r}` is bound for every "
                f"network, but the {role} {net.name!r} takes no `{key}`: "
                f"clear it for this network with `{role}/network.{key} = "
                f"None`{hint}."
            )

    def _suit_bn_momentum(self, role, model):
        """Caps the BatchNormalization momentum of a network this run trains
        so that its moving statistics follow the stage
        (`ft_keras.models.batch_norm`); says so once when it changes any."""
        steps = self.settings.training[role].epochs * self.steps_per_epoch
        cap = models.suited_bn_momentum(steps)
        changed = models.set_bn_momentum(model, cap, at_most=True)
        if changed and role not in self._bn_noted:
            self._bn_noted.add(role)
            was = ", ".join(
                f"{count} at {momentum:g}" for momentum, count in changed.items()
            )
            print(
                f"[ft_keras] {role}: BatchNormalization momentum {cap:.4g} "
                f"({was} before), so that its moving statistics follow a "
                f"{steps:,}-step stage; `{role}/network.bn_momentum` sets it.",
                flush=True,
            )

    def _tap_shape(self, model, role, layer):
        names = [l.name for l in model.layers]
        if layer not in names:
            raise ConfigurationError(
                f"`factor_transfer.{role}_layer`={layer!r} is not a layer of "
                f"the {role} {self.settings.network[role].name!r}. Its feature taps: "
                f"{models.feature_taps(model)}"
            )
        return tuple(model.get_layer(layer).output.shape)

    def _connectors(self):
        ft = self.settings.factor_transfer
        teacher_map = self._tap_shape(self.teacher, "teacher", ft.teacher_layer)
        return ft.connectors(teacher_map[-1])

    def _check_taps(self):
        ft = self.settings.factor_transfer
        paraphraser, translator = self._connectors()
        try:
            ft_terms.check_factor_shapes(
                ft.teacher_layer,
                self._tap_shape(self.teacher, "teacher", ft.teacher_layer),
                paraphraser,
                ft.student_layer,
                self._tap_shape(self.student, "student", ft.student_layer),
                translator,
                ft.factor,
            )
        except ValueError as e:
            raise ConfigurationError(str(e)) from None

    def _check_stage_plan(self):
        """Refuses, before any work, stages that cannot run: one that needs
        an artifact no enabled stage makes and the workdir does not hold,
        a stage whose optimizer cannot be built, and an artifact of a
        finished stage that is missing, truncated or changed."""
        for stage, names in self.ARTIFACTS.items():
            for name in names:
                self._done(stage, name)
        enabled = set(self.stages)
        method = self.settings.distillation.method
        checkpoint = self.settings.experiment.teacher_checkpoint
        plan = [ft_stages.get(name) for name in self.stages]
        plan = [stage for stage in plan if stage.applies_to(method)]
        for stage in plan:
            for need, artifact in stage.reads_for(method):
                if need in enabled or self._done(need, artifact):
                    continue
                if need == "teacher" and checkpoint:
                    continue
                hint = " or set `experiment.teacher_checkpoint`" if need == "teacher" else ""
                raise ConfigurationError(
                    f"Stage {stage.name!r} (distillation.method={method!r}) "
                    f"needs the {need} stage's {need}/{artifact}, which no "
                    f"enabled stage makes and {self.workdir} does not hold: "
                    f"add {need!r} to `experiment.stages`{hint}. "
                    f"Received: stages={list(self.stages)}"
                )
        for stage in plan:
            if not stage.trains or (stage.name == "teacher" and checkpoint):
                continue
            try:
                with distribute.scope(self.strategy):
                    self._optimizer(stage.scope)
            except ValueError as e:
                raise ConfigurationError(
                    f"Stage {stage.name!r} cannot train with "
                    f"`{stage.scope}/training`: {e}"
                ) from None

    # ------------------------------------------------------------------
    # Stage machinery.

    def _path(self, *parts):
        return os.path.join(self.workdir, *parts)

    def _out(self, *parts):
        """Where this process writes `parts` (see `output_dir`)."""
        return os.path.join(self.output_dir, *parts)

    def _optimizer(self, scope):
        try:
            self.settings.check_weight_decay(scope)
        except ValueError as e:
            raise ConfigurationError(str(e)) from None
        return self.settings.training[scope].build_optimizer(self.steps_per_epoch)

    def _fit(self, stage, model, epochs, validation_data=None):
        """Trains `model` for `epochs`, resuming exactly from the stage's
        checkpoint if it has one (`_resume_fit`), and writes its stage.json."""
        stage_dir = self._out(stage)
        os.makedirs(stage_dir, exist_ok=True)
        if not self.is_chief and os.path.isdir(self._path(stage, "backup")):
            # Resume from the chief's checkpoint, like every worker; its
            # log.csv too, which decides which checkpoint is complete.
            shutil.copytree(
                self._path(stage, "backup"),
                os.path.join(stage_dir, "backup"),
                dirs_exist_ok=True,
            )
            if os.path.exists(self._path(stage, "log.csv")):
                shutil.copyfile(
                    self._path(stage, "log.csv"), os.path.join(stage_dir, "log.csv")
                )
        start = self._data_start(stage)
        throughput = ft_callbacks.Throughput(self.global_batch, self.steps_per_epoch)
        callbacks = stage_callbacks(
            stage,
            stage_dir,
            self.settings.experiment.checkpoint_every,
            metadata={"data_start": start},
            delete_on_end=False,
        ) + [throughput]
        if validation_data is not None and not self.dry_run:
            callbacks.append(
                ft_callbacks.ChanceAccuracyWarning(
                    self.num_classes, metric="top1", name=f"{stage} stage's network"
                )
            )
        if self.dry_run:
            # Random images and a two-step teacher (its BatchNorm statistics
            # barely moved) can overflow: the dry run checks the wiring, not
            # the numbers. Two steps run faster eagerly than traced.
            callbacks = [
                c
                for c in callbacks
                if not isinstance(c, ft_callbacks.StopOnNonFiniteLoss)
            ]
            model.run_eagerly = True
            history = model.fit(
                self.train_ds,
                epochs=1,
                steps_per_epoch=self.DRY_RUN_STEPS,
                validation_data=validation_data,
                callbacks=callbacks,
                shuffle=False,  # the pipeline shuffles
                verbose=0,
            )
            print(self._dry_run_line(stage, epochs, history), flush=True)
            wall, end = throughput.wall_time, None
        else:
            wall, end = self._resume_fit(
                stage, model, epochs, validation_data, callbacks, start
            )
        info = distribute.task_info(self.strategy)
        if info.num_workers > 1:
            print(
                f"[ft_keras] {info.task_type} {info.task_id}: stage {stage} "
                f"weights {distribute.weights_fingerprint(model)}",
                flush=True,
            )
        ft_workdir.write_json(
            os.path.join(stage_dir, ft_workdir.STAGE_FILE),
            {
                "wall_time_s": wall,
                "images_per_second": throughput.images_per_second,
                "epochs_run": len(throughput.epoch_seconds),
                "epochs": epochs,
                "replicas": self.replicas,
                "global_batch_size": self.global_batch,
                # Where the training data stream stood after this stage, in
                # the run of these stages (`_data_start`).
                "data_iterations": end,
                "data_stages": list(self.stages),
            },
        )

    def _resume_fit(self, stage, model, epochs, validation_data, callbacks, start):
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
            partial = self._dataset(training=True)
            _skip_iterations(partial, start + per_epoch * epoch)
            segments.append((partial.skip(position.step), epoch, epoch + 1))
            epoch += 1
        if epoch < epochs or not segments:
            data = self._train_data_at(start + per_epoch * epoch)
            segments.append((data, epoch, epochs))
            self._data_used += peeks + per_epoch * (epochs - epoch)
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

    def _data_start(self, stage):
        """The number of training-data iterators created before `stage` in
        an uninterrupted run of these stages: where the last earlier stage
        of this stage list left the stream (its stage.json), else 0."""
        start = 0
        order = list(self.stages)
        for earlier in order[: order.index(stage)] if stage in order else ():
            for path in (self._out(earlier, ft_workdir.STAGE_FILE),
                         self._path(earlier, ft_workdir.STAGE_FILE)):
                if os.path.exists(path):
                    record = ft_workdir.read_json(path)
                    if record.get("data_stages") == list(self.stages):
                        start = max(start, record.get("data_iterations") or 0)
                    break
        return start

    def _train_data_at(self, index):
        """`train_ds` with `index` iterators created on it (it is built
        again if more were)."""
        used = getattr(self, "_data_used", 0)
        if used > index:
            self.train_ds, used = self._dataset(training=True), 0
        _skip_iterations(self.train_ds, index - used)
        self._data_used = index
        return self.train_ds

    def _dry_run_line(self, stage, epochs, history):
        """What the real run of `stage` would do, and how the dry run went."""
        opt = self.settings.training[config.STAGE_SCOPES[stage]]
        steps = self.steps_per_epoch
        known = getattr(self, "_train_examples", None) is not None
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
        shape = "x".join(str(d) for d in self.input_shape)
        return (
            f"[ft_keras] dry run: stage {stage}: {epochs} epochs x "
            f"{per_epoch} at global batch {self.global_batch}"
            f"{f' = {epochs * steps:,} steps' if known else ''}; {schedule}. "
            f"Ran {self.DRY_RUN_STEPS} steps at batch "
            f"{self.DRY_RUN_BATCH * self.replicas} on synthetic {shape} data: "
            f"{ran or 'ok'}"
        )

    def _validation(self):
        return self.test_ds if self.settings.experiment.validate else None

    def _load(self, path, compile=True):
        """Loads a `.keras` file; one that cannot be read (truncated or
        corrupt, in a workdir written before fingerprints) is named."""
        try:
            with distribute.scope(self.strategy):
                return keras.models.load_model(path, compile=compile)
        except Exception as e:  # Keras raises several types on bad files.
            raise ConfigurationError(str(ft_workdir.unreadable(path, e))) from None

    def _done(self, stage, artifact):
        """Whether `stage` left `artifact`, checked against its recorded
        size and SHA-256 (a `ConfigurationError` naming it if it differs).
        An artifact found whole is hashed once per experiment (the plan
        check at start and each stage that uses it ask again); one not
        there yet is looked for again, since a stage may write it."""
        path = self._path(stage, artifact)
        if self._fresh:  # --overwrite: the workdir's artifacts do not count
            return False
        if path in self._whole:
            return True
        try:
            done = ft_workdir.check_artifact(path)
        except ft_workdir.WorkdirError as e:
            raise ConfigurationError(str(e)) from None
        if done:
            self._whole.add(path)
        return done

    def _save(self, stage, artifacts):
        """Saves `{file name: model}` into `stage`'s directory, each whole
        or not at all, and records their fingerprints in its stage.json:
        the stage is finished."""
        stage_dir = self._out(stage)
        os.makedirs(stage_dir, exist_ok=True)
        with preemption.deferred():  # a signal waits for the stage's record
            for name, model in artifacts.items():
                ft_workdir.save_model(model, os.path.join(stage_dir, name))
            # Python's random state after the stage (`_align_python_random`).
            state = random.getstate()
            ft_workdir.record_artifacts(
                stage_dir,
                list(artifacts),
                extra={
                    "python_random": {
                        "stages": list(self.stages),
                        "state": [state[0], list(state[1]), state[2]],
                    }
                },
            )
            ft_checkpoint.delete(os.path.join(stage_dir, "backup"))

    def _train_classifier(self, stage, model):
        scope = config.STAGE_SCOPES[stage]
        with distribute.scope(self.strategy):
            model.compile(
                optimizer=self._optimizer(scope),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=top_k_metrics(self.num_classes),
            )
        self._fit(
            stage, model, self.settings.training[scope].epochs, self._validation()
        )

    # ------------------------------------------------------------------
    # Stages.

    def run_teacher(self):
        if self._done("teacher", "model.keras"):
            self._trained_teacher()
            return
        os.makedirs(self._out("teacher"), exist_ok=True)
        if self.settings.experiment.teacher_checkpoint:
            self.teacher = self._load_teacher_checkpoint(
                self.settings.experiment.teacher_checkpoint
            )
        else:
            self._train_classifier("teacher", self.teacher)
            if self.dry_run:
                self._calibrate_batchnorm(self.teacher)
        self._save("teacher", {"model.keras": self.teacher})
        self._teacher_loaded = True

    def _calibrate_batchnorm(self, model):
        """Dry run only: after two steps a network's BatchNorm moving
        statistics are still about (0, 1), so in inference mode a deep
        teacher's activations grow layer after layer and overflow the
        stages that use it. Setting them to one synthetic batch's statistics
        keeps the dry run's numbers finite; the real run never does this."""
        norms = models.batch_norm.batch_norm_layers(model)
        momenta = [layer.momentum for layer in norms]
        for layer in norms:
            layer.momentum = 0.0
        images, _ = next(iter(self.train_ds))
        model(images, training=True)
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum

    def _load_teacher_checkpoint(self, checkpoint):
        if not os.path.exists(checkpoint):
            raise ConfigurationError(
                f"Teacher checkpoint not found: {checkpoint} (set "
                "`experiment.teacher_checkpoint` to a .keras model, the "
                ".weights.h5 weights of `teacher/network` or a PyTorch "
                "state_dict (.pth, .pt) of its layout, or to None to train "
                "the teacher)."
            )
        try:
            if checkpoint.endswith(".keras"):
                # A teacher saved under another precision computes in this
                # run's (`experiment.precision`, or float32 on a fallback).
                teacher = self._load(checkpoint)
                with distribute.scope(self.strategy):
                    teacher = models.with_dtype_policy(teacher, self._policy)
            elif checkpoint.endswith(models.torch_import.SUFFIXES):
                # Trained in PyTorch: `teacher/network` built here, its
                # weights read from the state_dict (ft_keras.models.torch_import).
                with distribute.scope(self.strategy):
                    layout = models.load_torch_weights(self.teacher, checkpoint)
                print(
                    f"[ft_keras] teacher: {layout} weights from {checkpoint}",
                    flush=True,
                )
                teacher = self.teacher
            else:
                with distribute.scope(self.strategy):
                    self.teacher.load_weights(checkpoint)
                teacher = self.teacher
        except ImportError as e:  # torch, for a PyTorch checkpoint
            raise ConfigurationError(f"Teacher checkpoint {checkpoint}: {e}") from None
        except Exception as e:  # Keras raises several types on mismatch.
            raise ConfigurationError(
                f"Teacher checkpoint {checkpoint} does not match the teacher "
                f"network {self.settings.network['teacher'].name!r}: "
                f"{str(e).splitlines()[0]}"
            ) from None
        expected = (None,) + tuple(self.input_shape)
        if (
            tuple(teacher.input_shape) != expected
            or teacher.output_shape[-1] != self.num_classes
        ):
            raise ConfigurationError(
                f"Teacher checkpoint {checkpoint} does not match the data: "
                f"it takes {tuple(teacher.input_shape)} and gives "
                f"{teacher.output_shape[-1]} classes; the dataset "
                f"{self.settings.dataset.name!r} needs {expected} and "
                f"{self.num_classes} classes."
            )
        self._tap_shape(teacher, "teacher", self.settings.factor_transfer.teacher_layer)
        return teacher

    def _require(self, stage, artifact):
        path = self._path(stage, artifact)
        if not self._done(stage, artifact):
            raise ConfigurationError(
                f"The {stage} stage has not finished in {self.workdir} (no "
                f"{path}): enable it in `experiment.stages`."
            )
        return path

    def _trained_teacher(self):
        if not self._teacher_loaded:
            self.teacher = self._load(self._require("teacher", "model.keras"))
            self._teacher_loaded = True
        return self.teacher

    def run_paraphraser(self):
        if self._done("paraphraser", "paraphraser.keras"):
            return
        if not self.settings.distillation.factor_transfer:
            print(
                f"[ft_keras] stage paraphraser: skipped, "
                f"distillation.method={self.settings.distillation.method!r} has none",
                flush=True,
            )
            return
        ft = self.settings.factor_transfer
        self._trained_teacher()
        with distribute.scope(self.strategy):
            paraphraser, _ = self._connectors()
            trainer = ParaphraserTrainer(
                self.teacher,
                paraphraser,
                ft.teacher_layer,
                reconstruction=ft.reconstruction,
            )
            trainer.compile(optimizer=self._optimizer("paraphraser"))
        self._fit("paraphraser", trainer, self.settings.training["paraphraser"].epochs)
        tap = self._tap_shape(self.teacher, "teacher", ft.teacher_layer)
        self._save(
            "paraphraser",
            {
                "paraphraser.keras": keras.Sequential(
                    [keras.Input(tap[1:]), paraphraser]
                )
            },
        )

    def run_student(self):
        if self._done("student", "model.keras"):
            self.student = self._load(self._path("student", "model.keras"))
            return
        self._trained_teacher()
        with distribute.scope(self.strategy):
            distiller, translator = self._student_distiller()
            distiller.compile(
                optimizer=self._optimizer("student"),
                metrics=top_k_metrics(self.num_classes),
            )
        self._fit(
            "student",
            distiller,
            self.settings.training["student"].epochs,
            self._validation(),
        )
        artifacts = {}
        if translator is not None:
            tap = self._tap_shape(
                self.student, "student", self.settings.factor_transfer.student_layer
            )
            artifacts["translator.keras"] = keras.Sequential(
                [keras.Input(tap[1:]), translator]
            )
        # The student last: its model.keras marks the stage finished.
        artifacts["model.keras"] = self.student
        self._save("student", artifacts)

    def _student_distiller(self):
        """The training model of `distillation.method` (`ft_keras.methods`),
        and its translator (None without Factor Transfer). Call in the
        strategy's scope."""
        ft, method = self.settings.factor_transfer, self.settings.distillation
        paraphraser = translator = None
        if method.factor_transfer:
            paraphraser = self._load(
                self._require("paraphraser", "paraphraser.keras")
            ).layers[-1]
            _, translator = self._connectors()
        distiller = ft_distiller.Distiller(
            self.teacher,
            self.student,
            methods.terms(method, ft, paraphraser, translator),
            student_loss_weight=method.ce_weight,
        )
        return distiller, translator

    def run_baseline(self):
        if self._done("baseline", "model.keras"):
            return
        with distribute.scope(self.strategy):
            baseline = self._network("student")
        self._train_classifier("baseline", baseline)
        self._save("baseline", {"model.keras": baseline})

    def evaluate(self):
        """Top-1/top-5 of every trained network on the test split."""
        results = {}
        for role in ("teacher", "baseline", "student"):
            path = self._path(role, "model.keras")
            if not self._done(role, "model.keras"):
                continue
            model = self._load(path, compile=False)
            with distribute.scope(self.strategy):
                model.compile(
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=top_k_metrics(self.num_classes),
                )
            model.run_eagerly = self.dry_run
            scores = model.evaluate(self.test_ds, verbose=0, return_dict=True)
            results[role] = {k: float(v) for k, v in scores.items() if k != "loss"}
        if not results:
            raise ConfigurationError(
                f"Nothing to evaluate in {self.workdir}: run the training "
                "stages first (python -m ft_keras.train with the same config)."
            )
        return results

    def run_evaluate(self):
        results = self.evaluate()
        method = methods.label(self.settings.distillation.method)
        names = {
            "teacher": "teacher",
            "baseline": "student alone",
            "student": f"{method} student",
        }
        warnings = {} if self.dry_run else self._chance_warnings(results, names)
        self._update_results(evaluation=results, warnings=warnings)
        prefix = (
            "[ft_keras] dry run (synthetic data):" if self.dry_run else "[ft_keras]"
        )
        for role, scores in results.items():
            line = ", ".join(f"{k} {100 * v:.2f}%" for k, v in scores.items())
            flag = "   <- at chance: see the warning" if role in warnings else ""
            print(f"{prefix} {names[role]:>13}: {line}{flag}", flush=True)
        for line in warnings.values():
            print(line, flush=True)

    def _chance_warnings(self, results, names):
        """`{role: line}` for each network that tests at chance while its
        stage's last training epoch scored high (`chance_warning`)."""
        warnings = {}
        for role, scores in results.items():
            line = ft_callbacks.chance_warning(
                names[role],
                scores["top1"],
                ft_workdir.last_logged(self._path(role, "log.csv"), "top1"),
                self.num_classes,
            )
            if line:
                warnings[role] = line
        return warnings

    def representative_images(self):
        """Raw training images (uint8 at the dataset's pixel scale) for int8
        calibration: the test-time pipeline's output, un-normalised."""
        cfg = self.settings.dataset
        batches = self.settings.experiment.representative_batches
        # Not cached: a cache read in part warns and is thrown away.
        pipeline = self._dataset(training=False, split=cfg.train_split, cache=False)
        return ft_export.raw_images(
            pipeline.take(batches),
            *ft_export.normalization(cfg.name, cfg.eval_options),
            count=batches * cfg.eval_batch_size,
        )

    def run_export(self):
        if not self.is_chief:
            return
        student = self._load(self._require("student", "model.keras"), compile=False)
        paths = ft_export.export_for_dataset(
            student,
            self.settings.dataset.name,
            self._path("export"),
            representative=self.representative_images(),
            eval_options=self.settings.dataset.eval_options,
        )
        self._update_results(export=paths)
        if self.dry_run:
            names = ", ".join(sorted(os.path.basename(p) for p in paths.values()))
            print(
                f"[ft_keras] dry run: stage export: wrote {names} (in the "
                "temporary workdir, removed at the end)",
                flush=True,
            )
            return
        results = ft_workdir.read_json(self._out("results.json"))
        suspect = (
            " (the student tests at chance: see the warning of the evaluate stage)"
            if "student" in results.get("warnings", {})
            else ""
        )
        print(f"[ft_keras] exported to {self._path('export')}{suspect}", flush=True)

    # ------------------------------------------------------------------

    def _update_results(self, **entries):
        path = self._out("results.json")
        results = ft_workdir.read_json(path) if os.path.exists(path) else {}
        results.update(entries)
        stages = {}
        for stage in ("teacher", "paraphraser", "student", "baseline"):
            stage_json = self._out(stage, ft_workdir.STAGE_FILE)
            if os.path.exists(stage_json):
                record = ft_workdir.read_json(stage_json)
                # Resumption state, not a result (`_align_python_random`).
                record.pop("python_random", None)
                stages[stage] = record
        results["stages"] = stages
        results["workdir"] = self.workdir
        ft_workdir.write_json(path, results)
        return results

    def run(self):
        """Runs the enabled stages in order; returns `results.json`'s dict.
        The workdir stays locked while it runs (`ft_keras.workdir`)."""
        start = time.perf_counter()
        if self.is_chief and not self._lock.held:  # run() again, after close()
            try:
                self._lock.acquire()
            except ft_workdir.WorkdirError as e:
                raise ConfigurationError(str(e)) from None
        stage = "start"
        try:
            with self._preemption_signals():
                for i, stage in enumerate(self.stages):
                    with self._precision():
                        self._align_python_random(stage)
                        getattr(self, f"run_{stage}")()
                    if i + 1 < len(self.stages):
                        # The chief's artifacts are complete before others read.
                        distribute.barrier(self.strategy)
                return self._update_results(
                    last_run_wall_time_s=time.perf_counter() - start
                )
        except preemption.Preempted as e:
            print(e.line(stage), flush=True)
            raise
        finally:
            distribute.remove_worker_dir(self.output_dir, self.workdir)
            self.close()

    def _align_python_random(self, stage):
        """Sets Python's `random` state, from which Keras draws the seed of
        every new layer's initializer, to the uninterrupted run's at the
        start of `stage`: what the nearest earlier training stage of these
        stages recorded when it finished (`_save`). A rerun that skipped it
        as done, or loaded a network the uninterrupted run had in memory,
        would otherwise initialise every later network differently. In an
        uninterrupted run the state is already that one."""
        order = list(self.stages)
        record = None
        for earlier in reversed(order[: order.index(stage)]):
            if earlier not in self.ARTIFACTS:
                return  # evaluate or export in between: nothing recorded
            path = self._path(earlier, ft_workdir.STAGE_FILE)
            if os.path.exists(path):
                # Ran (or runs) but recorded nothing: do not guess further.
                record = ft_workdir.read_json(path).get("python_random")
                break
        if record is None or record["stages"] != order:
            return
        if (
            stage in ("paraphraser", "student")
            and not self._teacher_loaded
            and not self._done(stage, self.ARTIFACTS[stage][-1])
            and self._done("teacher", "model.keras")
        ):
            # Loading draws seeds too: load now, as the uninterrupted run
            # held the teacher in memory.
            self._trained_teacher()
        version, internal, gauss = record["state"]
        random.setstate((version, tuple(internal), gauss))

    def _preemption_signals(self):
        """SIGTERM and SIGUSR1 stop the run at the next safe point
        (`ft_keras.preemption`), with one process. Several workers would
        each stop at their own step and wait for the others forever: there
        the signal ends the process as before, and the rerun resumes from
        the last checkpoint."""
        if distribute.num_workers(self.strategy) > 1:
            return contextlib.nullcontext()
        return preemption.handle_signals()

    def close(self):
        """Releases the workdir (`run` does this when it ends); the lock
        also ends with the process, however it ends."""
        self._lock.release()
