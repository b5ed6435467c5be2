"""CRD in the runner: the training pipeline yields each example's index,
the term gets the training split's size, classes and labels, the stages
that train other models get the images alone, and a student stage
preempted mid-epoch resumes to the uninterrupted run's weights and log."""

import os
import signal

import gin
import keras
import numpy as np
import pytest

from ft_keras import cli
from ft_keras import data
from ft_keras import experiment as ft_experiment
from ft_keras import preemption
from ft_keras.stages import fit as stage_fit
from ft_keras.stages import inputs as stage_inputs

from _interrupt import StopAt

# WRN-10-1 both, 5 steps an epoch of the digits' 1,437 training images.
BINDINGS = [
    "teacher/network.name = 'wrn10_1'",
    "training.epochs = 2",
    "teacher/training.epochs = 1",
    "dataset.batch_size = 256",
    "experiment.seed = 0",
    "crd.num_negatives = 256",
    "experiment.stages = ['teacher', 'student', 'evaluate']",
]


pytestmark = pytest.mark.usefixtures("clean_gin")


def experiment(workdir, *bindings):
    gin.clear_config()
    cli.parse_config(["gin/quickstart.gin", "gin/methods/crd.gin"],
                     BINDINGS + list(bindings))
    return ft_experiment.Experiment(workdir)


def check_the_split_and_the_indices(run):
    """The term got the training split's size, classes and labels; the
    training pipeline yields each example's index beside its image."""
    (crd,) = run.context.terms
    arguments = dict(crd.arguments)
    labels = data.split_labels("digits", "train")
    assert (arguments["num_examples"], arguments["num_classes"]) == (1437, 10)
    np.testing.assert_array_equal(crd.labels, labels)
    # A pipeline of its own: an iterator of the run's stream would move it.
    inputs, y = next(iter(stage_inputs.dataset(run.context, training=True)))
    assert sorted(inputs) == ["images", "index"]
    np.testing.assert_array_equal(labels[inputs["index"].numpy()], y.numpy())


def test_a_bound_size_that_is_not_the_splits_is_refused(tmp_path):
    with pytest.raises(ft_experiment.ConfigurationError,
                       match=r"`crd.num_examples = 50000`, but the training "
                             r"split has 1437"):
        experiment(tmp_path / "w", "crd.num_examples = 50000")


def test_every_stage_runs_and_a_preempted_student_stage_resumes_exactly(
        tmp_path, monkeypatch, capsys):
    straight = experiment(tmp_path / "straight")
    check_the_split_and_the_indices(straight)
    results = straight.run()
    assert set(results["evaluation"]) == {"teacher", "student"}
    # The term trained in every epoch (that it learns: test_crd.py).
    log = (tmp_path / "straight" / "student" / "log.csv").read_text().splitlines()
    column = log[0].split(",").index("crd_loss")
    values = [float(row.split(",")[column]) for row in log[1:]]
    assert len(values) == 2 and all(np.isfinite(values)) and min(values) > 0

    callbacks = stage_fit.stage_callbacks

    def preempted(stage, *args, **kwargs):
        # SIGUSR1 as epoch 2's third batch starts: the runner saves a
        # checkpoint after it and stops, as a scheduler's preemption does.
        extra = [StopAt(1, 2, lambda: os.kill(os.getpid(), signal.SIGUSR1))
                 ] if stage == "student" else []
        return extra + callbacks(stage, *args, **kwargs)

    monkeypatch.setattr(stage_fit, "stage_callbacks", preempted)
    with pytest.raises(preemption.Preempted):
        experiment(tmp_path / "resumed").run()
    monkeypatch.setattr(stage_fit, "stage_callbacks", callbacks)
    capsys.readouterr()
    experiment(tmp_path / "resumed").run()
    assert ("stage student: 2 epochs, resumed at epoch 2, step 3"
            in capsys.readouterr().out)

    straight, resumed = (
        keras.models.load_model(tmp_path / name / "student" / "model.keras")
        for name in ("straight", "resumed"))
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert ((tmp_path / "straight" / "student" / "log.csv").read_text()
            == (tmp_path / "resumed" / "student" / "log.csv").read_text())
