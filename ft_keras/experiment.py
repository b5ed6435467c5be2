"""The stages of an experiment: teacher -> paraphraser -> student -> evaluate -> export.

`Experiment` is what `python -m ft_keras.train` runs (through `ft_keras.cli`):

    python -m ft_keras.train --gin_file=gin/distill.gin --workdir=/tmp/ft

It is a thin orchestrator over the stage table (`ft_keras.stages`): it reads
the settings, opens the workdir (`ft_keras.stages.run_record.RunWorkdir`),
builds the data and networks, checks the whole plan before any work, and
runs each enabled stage's function (`ft_keras.stages.training`,
`.evaluation`, `.export`). Every stage leaves its artifacts in the workdir; rerunning the
same command skips finished stages and resumes an interrupted one from its
last checkpoint. Everything here is plain Keras: the stages build the
training models and call `fit`, as a user would by hand.

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
import dataclasses
import inspect
import time

import gin
import keras

from ft_keras import config
from ft_keras import data
from ft_keras import distribute
from ft_keras import precision
from ft_keras import preemption
from ft_keras import stages as ft_stages
from ft_keras._validation import ConfigurationError
from ft_keras.stages import fit
from ft_keras.stages import inputs
from ft_keras.stages import networks
from ft_keras.stages import plan
from ft_keras.stages.fit import stage_callbacks  # noqa: F401  (public name)
from ft_keras.stages.context import Networks
from ft_keras.stages.context import RunContext
from ft_keras.stages.context import TrainStream
from ft_keras.stages.run_record import RunWorkdir

__all__ = ["ConfigurationError", "Experiment", "stage_callbacks"]


class Experiment:
    """One Factor Transfer experiment in a workdir.

    Construction resolves the whole configuration, opens the workdir,
    builds the networks and datasets and checks the taps and the stage
    plan, so that every configuration error is raised before any training
    and a refused run leaves the workdir as it was. `run()` then runs the
    enabled stages (`run_stage`), each a function of what it names: the
    frozen `context`, the `nets` and the training `stream`
    (`ft_keras.stages.context`).

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
        self.policy = None  # measured once, by `precision()`
        # Read from gin once, here, unless given from Python.
        self._given_settings = settings is not None
        self.settings = settings or config.from_gin()
        self.stages = tuple(stages) if stages else self.settings.experiment.stages
        self.strategy = strategy or distribute.make_strategy(
            self.settings.experiment.strategy, self.settings.cluster
        )
        _announce_cluster(self.strategy)
        self.workdir = RunWorkdir(workdir, self.strategy)
        requested = self._requested_config()
        try:
            self.workdir.open(
                requested,
                overwrite,
                read_only=not any(ft_stages.get(s).trains for s in self.stages),
            )
            with self.precision():
                self._build()
            self.workdir.commit(requested, self._operative_config(), overwrite)
        except BaseException:
            self.workdir.abandon()
            raise

    def _requested_config(self):
        return self.settings.to_gin() if self._given_settings else gin.config_str()

    def _operative_config(self):
        if self._given_settings:
            return self.settings.to_gin()
        return gin.operative_config_str()

    @contextlib.contextmanager
    def precision(self):
        """Keras's global dtype policy is `experiment.precision` inside, or
        float32 where `experiment.precision_check` falls back: measured once
        per run, never in a dry run (`ft_keras.precision.check`)."""
        if self.policy is None:
            self.policy = precision.check(
                self.settings.experiment.precision,
                "off" if self.dry_run else self.settings.experiment.precision_check,
            )
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(self.policy)
        try:
            yield
        finally:
            keras.mixed_precision.set_global_policy(previous)

    def _build(self):
        """Everything after the workdir is ours: data, networks, checks."""
        distribute.barrier(self.strategy)
        cfg = self.settings.dataset
        if self.settings.experiment.seed is not None:
            # With the seeded, deterministic input pipeline this repeats a
            # run exactly on the CPU (tested). GPU kernels may still differ
            # run to run: call tf.config.experimental.enable_op_determinism()
            # for those, at some speed cost.
            keras.utils.set_random_seed(self.settings.experiment.seed)
        replicas = self.strategy.num_replicas_in_sync
        context = RunContext(
            settings=self.settings,
            strategy=self.strategy,
            workdir=self.workdir,
            stages=self.stages,
            artifacts=ft_stages.artifacts(self.settings.distillation.terms),
            terms=self.settings.distillation.terms,
            policy=self.policy,
            dry_run=self.dry_run,
            is_chief=distribute.is_chief(self.strategy),
            num_classes=data.num_classes(cfg.name),
            input_shape=data.input_shape(
                cfg.name, image_size=cfg.options.get("image_size")),
            replicas=replicas,
            global_batch=cfg.batch_size * replicas,
        )
        train_ds = inputs.dataset(context, training=True)
        test_ds = inputs.dataset(context, training=False)
        if self.dry_run:
            steps, examples = inputs.real_steps_per_epoch(context)
        else:
            steps, examples = int(train_ds.cardinality()), None
        if steps < 1:
            raise ConfigurationError(
                f"The train split of {cfg.name!r} gives no full batch of "
                f"{context.global_batch}: lower `dataset.batch_size`."
            )
        context = dataclasses.replace(
            context, steps_per_epoch=steps, train_examples=examples, test_ds=test_ds)
        if inputs.needs_indices(context):
            # The terms that keep state per training example, for its split.
            split = inputs.training_set(context)
            try:
                terms = tuple(t.for_data(split) for t in context.terms)
            except ValueError as e:
                raise ConfigurationError(str(e)) from None
            context = dataclasses.replace(context, terms=terms)
        self.context = context
        self.stream = TrainStream(train_ds)
        with distribute.scope(self.strategy):
            self.nets = Networks(networks.build(self.context, "teacher"),
                                 networks.build(self.context, "student"))
        networks.check_taps(self.context, self.nets.teacher, self.nets.student)
        plan.check(self.context)

    # What callers read of a built run.
    steps_per_epoch = property(lambda self: self.context.steps_per_epoch)
    replicas = property(lambda self: self.context.replicas)
    ARTIFACTS = property(lambda self: self.context.artifacts)
    teacher = property(lambda self: self.nets.teacher)
    student = property(lambda self: self.nets.student)

    def run_stage(self, name):
        """Runs stage `name`'s function (`ft_keras.stages.function`) with
        what it names of the run: `context`, `nets`, `stream`
        (`ft_keras.stages.context`). `run()` calls this for each stage."""
        function = ft_stages.function(name)
        given = {"context": self.context, "nets": self.nets, "stream": self.stream}
        return function(**{
            parameter: given[parameter]
            for parameter in inspect.signature(function).parameters
        })

    def run(self):
        """Runs the enabled stages in order; returns `results.json`'s dict.
        The workdir stays locked while it runs (`ft_keras.workdir`)."""
        start = time.perf_counter()
        self.workdir.acquire()  # run() again, after close()
        stage = "start"
        try:
            with self._preemption_signals():
                for i, stage in enumerate(self.stages):
                    with self.precision():
                        fit.align_python_random(self.context, self.nets, stage)
                        self.run_stage(stage)
                    if i + 1 < len(self.stages):
                        # The chief's artifacts are complete before others read.
                        distribute.barrier(self.strategy)
                return self.workdir.update_results(
                    last_run_wall_time_s=time.perf_counter() - start
                )
        except preemption.Preempted as e:
            print(e.line(stage), flush=True)
            raise
        finally:
            distribute.remove_worker_dir(self.workdir.output_dir, self.workdir.root)
            self.close()

    def _preemption_signals(self):
        """SIGTERM and SIGUSR1 stop the run at the next safe point
        (`ft_keras.preemption`). With several workers, a signal to any of
        them stops all at the same training step (the checkpoint asks every
        worker after each step, `ft_keras.checkpoint`); outside training it
        stops the worker that received it at once, and the others fail
        within seconds, as after a kill."""
        return preemption.handle_signals()

    def close(self):
        """Releases the workdir (`run` does this when it ends); the lock
        also ends with the process, however it ends."""
        self.workdir.release()


def _announce_cluster(strategy):
    """One line naming this process's place in a cluster of workers."""
    info = distribute.task_info(strategy)
    if info.num_workers > 1:
        spec = strategy.cluster_resolver.cluster_spec().as_dict()
        hosts = [a for job in ("chief", "worker") for a in spec.get(job, ())]
        print(
            f"[ft_keras] {info.task_type} {info.task_id} of a cluster of "
            f"{info.num_workers} workers ({', '.join(hosts)})"
            f"{', the chief' if info.is_chief else ''}",
            flush=True,
        )
