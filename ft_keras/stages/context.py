"""What the stages share: the frozen run context every stage reads, and
the two small holders one stage hands the next (the networks, the
training data stream).

A stage function names what it takes: `context` (a `RunContext`), `nets`
(the `Networks`) and `stream` (the `TrainStream`), and
`ft_keras.experiment.Experiment.run_stage` passes those. Nothing else is
shared between stages: the workdir's files carry the rest.

Example:

```python
import gin
from ft_keras.experiment import Experiment

gin.parse_config_file("gin/quickstart.gin")
experiment = Experiment("/tmp/quickstart")
experiment.context.global_batch  # the batch of all replicas
experiment.run_stage("teacher")  # ft_keras.stages.training.teacher(context, nets, stream)
experiment.nets.teacher  # the trained teacher, which later stages use
experiment.close()
```
"""

import dataclasses

import keras

from ft_keras import distribute
from ft_keras import workdir as ft_workdir
from ft_keras._validation import ConfigurationError
from ft_keras.stages import inputs


@dataclasses.dataclass(frozen=True)
class RunContext:
    """The run's settings and everything derived from them before any
    stage runs; no stage changes it.

    Attributes:
        settings: The `ft_keras.config.Settings`.
        strategy: The `tf.distribute` strategy.
        workdir: The `ft_keras.stages.run_record.RunWorkdir`.
        stages: The names of the stages this run runs, in order.
        artifacts: `{training stage: the artifacts it writes}` for the
            run's terms (`ft_keras.stages.artifacts`).
        terms: The term configs of `distillation.terms`, each for the
            training split (`TermConfig.for_data`).
        policy: Keras' dtype policy of the run (`experiment.precision`,
            or float32 where the precision check fell back).
        dry_run: Two steps per stage on synthetic data.
        is_chief: Whether this worker writes the workdir.
        num_classes: The dataset's number of classes.
        input_shape: One image's shape.
        replicas: `strategy.num_replicas_in_sync`.
        global_batch: The training batch of all replicas together.
        steps_per_epoch: Training steps per epoch.
        train_examples: The train split's size where a dry run read it
            (None otherwise).
        test_ds: The test split's pipeline.
    """

    settings: object
    strategy: object
    workdir: object
    stages: tuple
    artifacts: dict
    terms: tuple
    policy: object
    dry_run: bool
    is_chief: bool
    num_classes: int
    input_shape: tuple
    replicas: int
    global_batch: int
    steps_per_epoch: int = None
    train_examples: int = None
    test_ds: object = None

    def validation(self):
        """The test pipeline where `experiment.validate` asks `fit` to
        validate each epoch, else None."""
        return self.test_ds if self.settings.experiment.validate else None

    def load(self, path, compile=True):
        """Loads a `.keras` file in the run's strategy scope; one that
        cannot be read (truncated or corrupt, in a workdir written before
        fingerprints) is named."""
        try:
            with distribute.scope(self.strategy):
                return keras.models.load_model(path, compile=compile)
        except Exception as e:  # Keras raises several types on bad files.
            raise ConfigurationError(str(ft_workdir.unreadable(path, e))) from None


class Networks:
    """The teacher and the student the training stages hand on.

    `student` is the network the `student` stage trains (and, once that
    stage is done, the trained one); `teacher` is the teacher network,
    trained once `teacher_loaded` (the teacher stage trained or loaded it,
    or `trained_teacher` read it from the workdir).
    """

    def __init__(self, teacher, student):
        self.teacher = teacher
        self.student = student
        self.teacher_loaded = False

    def trained_teacher(self, context):
        """The trained teacher, read from `teacher/model.keras` the first
        time a stage asks for it in this run."""
        if not self.teacher_loaded:
            self.teacher = context.load(context.workdir.require("teacher", "model.keras"))
            self.teacher_loaded = True
        return self.teacher


class TrainStream:
    """The training pipeline and its position: how many iterators have
    been created on it. Each iterator draws the next epoch's shuffle order
    and augmentation seeds, so the position is where the training data
    stream stands (`ft_keras.stages.fit`)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.used = 0

    def at(self, context, index):
        """The pipeline with `index` iterators created on it (built again
        if more were)."""
        if self.used > index:
            self.dataset, self.used = inputs.dataset(context, training=True), 0
        skip_iterations(self.dataset, index - self.used)
        self.used = index
        return self.dataset


def skip_iterations(dataset, count):
    """Creates and drops `count` iterators of `dataset`. Each draws the
    next epoch's shuffle order and augmentation seeds (the seed generators
    of `shuffle(reshuffle_each_iteration=True)` and `Dataset.random`), and
    none reads an element, so this costs milliseconds per epoch skipped."""
    for _ in range(count):
        iter(dataset)
