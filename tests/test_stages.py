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
    from ft_keras.stages import workdir

    trained = "dataset.name = 'digits'\n"
    measured = trained + "deployment.latency_runs = 5\ndeployment.full_integer = True\n"
    assert workdir.comparable_config(measured) == workdir.comparable_config(trained)
    assert workdir.comparable_config(trained + "training.epochs = 2\n") \
        != workdir.comparable_config(trained)
    with pytest.raises(ValueError, match=r"`deployment.threads` must be a "
                       r"positive integer. Received: threads=0"):
        config.DeploymentConfig(threads=0)
    with pytest.raises(ValueError, match=r"full_integer='yes'"):
        config.DeploymentConfig(full_integer="yes")
