"""The stage table (ft_keras.stages): one description of each stage that
config validation, the runner, the report and the benchmarks read."""

import pytest

from ft_keras import config
from ft_keras import report
from ft_keras import stages
from ft_keras import term_configs


def test_the_table_is_the_order_and_scopes_config_validates():
    assert config.STAGES == stages.NAMES == (
        "teacher", "paraphraser", "student", "baseline", "evaluate", "export",
        "deployment")
    assert config.STAGE_SCOPES == {"teacher": "teacher", "paraphraser":
                                   "paraphraser", "student": "student",
                                   "baseline": "student"}
    assert report.STAGES == ("teacher", "paraphraser", "student", "baseline")
    with pytest.raises(ValueError, match=r"must be in the order \('teacher'"):
        config.ExperimentConfig(stages=("student", "teacher"))


FT = config.FactorTransferConfig("stage3", "stage3")
KD = term_configs.knowledge_distillation()
AT = term_configs.attention_transfer(teacher_layers=["stage3"],
                                     student_layers=["stage3"])


@pytest.mark.parametrize("terms, paraphraser, student_reads, student_writes", [
    ([FT], True, [("teacher", "model.keras"), ("paraphraser", "paraphraser.keras")],
     ("translator.keras", "model.keras")),
    ([FT, KD], True, [("teacher", "model.keras"),
                      ("paraphraser", "paraphraser.keras")],
     ("translator.keras", "model.keras")),
    ([KD], False, [("teacher", "model.keras")], ("model.keras",)),
    ([AT], False, [("teacher", "model.keras")], ("model.keras",)),
], ids=["ft", "ft+kd", "kd", "at"])
def test_what_a_stage_reads_and_writes_follows_the_terms(
        terms, paraphraser, student_reads, student_writes):
    assert stages.get("paraphraser").applies_to(terms) == paraphraser
    student = stages.get("student")
    assert list(student.reads_for(terms)) == student_reads
    assert student.writes_for(terms) == student_writes
    # The last artifact marks the stage finished: the student's model.keras.
    assert student.writes_for(terms)[-1] == "model.keras"
    assert all(stages.get(n).applies_to(terms)
               for n in ("teacher", "student", "baseline", "evaluate", "export",
                         "deployment"))


def test_the_runner_checks_the_artifacts_the_table_names():
    assert stages.artifacts([FT]) == {
        "teacher": ("model.keras",), "paraphraser": ("paraphraser.keras",),
        "student": ("translator.keras", "model.keras"),
        "baseline": ("model.keras",)}
    assert stages.TRAINING == ("teacher", "paraphraser", "student", "baseline")


def test_an_unknown_stage_lists_the_stages():
    with pytest.raises(ValueError, match=r"No stage 'distil'.*'teacher'"):
        stages.get("distil")


def test_deployment_options_are_runtime_bindings_and_checked():
    from ft_keras.stages import run_record

    trained = "dataset.name = 'digits'\n"
    measured = trained + "deployment.latency_runs = 5\ndeployment.full_integer = True\n"
    comparable = run_record.comparable_config
    assert comparable(measured) == comparable(trained)
    assert comparable(trained + "training.epochs = 2\n") != comparable(trained)
    with pytest.raises(ValueError, match=r"`deployment.threads` must be a "
                       r"positive integer. Received: threads=0"):
        config.DeploymentConfig(threads=0)
    with pytest.raises(ValueError, match=r"full_integer='yes'"):
        config.DeploymentConfig(full_integer="yes")


# What a stage function may take (`Experiment.run_stage`): the frozen run
# context, the networks holder and the training stream, nothing else.
STAGE_ARGUMENTS = {
    "teacher": ("context", "nets", "stream"),
    "paraphraser": ("context", "nets", "stream"),
    "student": ("context", "nets", "stream"),
    "baseline": ("context", "stream"),
    "evaluate": ("context",),
    "export": ("context",),
    "deployment": ("context",),
}


def test_each_stage_function_names_what_it_takes():
    import inspect

    assert set(STAGE_ARGUMENTS) == set(stages.NAMES)
    for name, expected in STAGE_ARGUMENTS.items():
        parameters = tuple(inspect.signature(stages.function(name)).parameters)
        assert parameters == expected, name


def test_the_run_context_is_frozen_and_the_stream_skips_to_its_position():
    import dataclasses

    import tensorflow as tf

    from ft_keras.stages import context as ft_context

    fields = {f.name for f in dataclasses.fields(ft_context.RunContext)}
    assert {"settings", "strategy", "workdir", "global_batch",
            "steps_per_epoch"} <= fields
    run = ft_context.RunContext(**{f: None for f in fields})
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.global_batch = 2
    # The stream's position: iterators drawn, each the next shuffle order.
    data = tf.data.Dataset.range(6).shuffle(6, seed=1, reshuffle_each_iteration=True)
    orders = [list(data.as_numpy_iterator()) for _ in range(3)]
    fresh = tf.data.Dataset.range(6).shuffle(6, seed=1, reshuffle_each_iteration=True)
    stream = ft_context.TrainStream(fresh)
    assert list(stream.at(run, 2).as_numpy_iterator()) == orders[2]
    assert stream.used == 2
    assert orders[0] != orders[2]  # so that the skip is seen
