"""ft_keras.config: each setting declared once, checked when read, read from
gin once (`from_gin`), and usable without gin (`Settings`, `to_gin`)."""

import dataclasses

import gin
import pytest

from ft_keras import cli
from ft_keras import config
from ft_keras import experiment as ft_experiment
from ft_keras import layers


pytestmark = pytest.mark.usefixtures("clean_gin")


def read(*bindings, gin_file="gin/quickstart.gin"):
    cli.parse_config([gin_file], list(bindings))
    return config.from_gin()


def test_an_unscoped_binding_holds_for_every_stage_a_scoped_one_overrides():
    settings = read("training.momentum = 0.5",
                    "paraphraser/training.momentum = 0.0")
    momenta = {s: t.momentum for s, t in settings.training.items()}
    assert momenta == {"teacher": 0.5, "paraphraser": 0.0, "student": 0.5}
    # gin/quickstart.gin binds `network.weight_decay` once, for both.
    assert {r: n.kwargs["weight_decay"] for r, n in settings.network.items()} \
        == {"teacher": 5e-4, "student": 5e-4}


@pytest.mark.parametrize("binding, message", [
    # The scope of a scoped setting is named ...
    ("paraphraser/training.schedule = 'step'\n"
     "paraphraser/training.boundaries = [3]",
     r"^`paraphraser/training`: Learning-rate boundaries \[3\] must lie "
     r"before the last of the 3 training epochs"),
    ("student/training.epochs = 0",
     r"^`student/training`: `epochs` must be a positive integer\. "
     r"Received: epochs=0"),
    # ... an unscoped one is named by its own message, once.
    ("dataset.batch_size = 0", r"^`dataset.batch_size` must be a positive"),
    ("distillation.method = 'fitnets'",
         r"^`distillation.method` is gone: a method is its list of terms, "
         r"`distillation.terms = \[@knowledge_distillation\(\)\]`.*gin/methods"),
    ("experiment.stages = ['student', 'teacher']",
     r"^`experiment.stages` must be in the order"),
    ("factor_transfer.connector_weight_decay = -1.0",
     r"^`factor_transfer.connector_weight_decay` must be a non-negative"),
])
def test_a_bad_value_fails_when_read_naming_the_binding(binding, message):
    with pytest.raises(ValueError, match=message):
        read(*binding.split("\n"))


def test_a_missing_required_value_is_named():
    cli.parse_config(["gin/data/digits.gin"], [])
    with pytest.raises(ValueError, match=r"^`factor_transfer`: a required "
                                         r"value is not bound: 'teacher_layer'"):
        config.from_gin()


def test_derived_defaults():
    assert config.DataConfig("digits", batch_size=32).eval_batch_size == 32


@pytest.mark.parametrize("gin_file", [
    "gin/quickstart.gin", "gin/distill.gin",
    "gin/paper/cifar100_wrn40_2_wrn16_2.gin",
    "gin/paper/imagenet_resnet34_resnet18.gin"])
def test_to_gin_reads_back_into_equal_settings(gin_file):
    settings = read(gin_file=gin_file)
    text = settings.to_gin()
    gin.clear_config()
    gin.parse_config(text)
    assert config.from_gin() == settings


def test_connectors_follow_the_settings():
    ft = config.FactorTransferConfig(
        "stage3", "stage3", rate=0.5, rounding="floor", translator_bn=True,
        connector_weight_decay=5e-4)
    paraphraser, translator = ft.connectors(teacher_channels=5)
    assert paraphraser.rate == 0.5 and paraphraser.rounding == "floor"
    assert not paraphraser.use_bn and translator.use_bn
    assert translator.out_channels == layers.factor_channels(5, 0.5, "floor")
    assert translator.out_channels == 2  # int(5 * 0.5), not round(2.5) = 2
    # An L2 penalty whose gradient is connector_weight_decay * kernel.
    assert translator.kernel_regularizer.l2 == pytest.approx(2.5e-4)


def test_an_experiment_runs_from_python_settings_without_gin(tmp_path):
    settings = config.Settings(
        experiment=config.ExperimentConfig(
            stages=("teacher", "paraphraser", "student", "evaluate"), seed=0),
        cluster=config.ClusterConfig(),
        dataset=config.DataConfig("digits", batch_size=32),
        distillation=config.DistillationConfig(
            terms=[config.FactorTransferConfig("stage3", "stage3")]),
        training={s: config.TrainingConfig(epochs=2, schedule="cosine")
                  for s in ("teacher", "paraphraser", "student")},
        network={"teacher": config.NetworkConfig("wrn10_2", {}),
                 "student": config.NetworkConfig("wrn10_1", {})},
    )
    assert gin.config_str() == ""  # nothing bound: gin is never read
    experiment = ft_experiment.Experiment(
        tmp_path / "w", settings=settings, dry_run=True)
    results = experiment.run()
    assert set(results["evaluation"]) == {"teacher", "student"}
    # The workdir records the settings as a gin file that reads back.
    saved = (tmp_path / "w" / "config.gin").read_text()
    assert saved == settings.to_gin()
    gin.parse_config(saved)
    assert config.from_gin() == settings
    # A rerun with other settings is refused, naming the difference.
    other = dataclasses.replace(
        settings, distillation=config.DistillationConfig(
            terms=[config.FactorTransferConfig("stage3", "stage3", beta=100.0)]))
    with pytest.raises(ft_experiment.ConfigurationError,
                       match=r"factor_transfer.beta = 500.0.*"
                             r"factor_transfer.beta = 100.0"):
        ft_experiment.Experiment(tmp_path / "w", settings=other, dry_run=True)


def test_training_image_size_is_the_test_splits_unless_given():
    """The runner builds one network for `options['image_size']`, so the
    test split is read at that size too, for every dataset that resizes."""
    for name in ("imagenet2012", "mnist"):
        cfg = config.DataConfig(name=name, options={"image_size": 160})
        assert cfg.eval_options == {"image_size": 160}
    own = config.DataConfig(name="imagenet2012", options={"image_size": 160},
                            eval_options={"image_size": 192})
    assert own.eval_options == {"image_size": 192}
    assert config.DataConfig(name="cifar10").eval_options == {}


APPLICATION_STUDENT = (
    "student/network.name = 'keras.applications.MobileNetV2'",
    "student/network.alpha = 0.35",
    "dataset.options = {'image_size': 32}",
    "factor_transfer.student_layer = 'out_relu'",
)


def test_an_inherited_argument_a_network_does_not_take_names_the_fix(tmp_path):
    # gin/quickstart.gin binds `network.weight_decay` for every network.
    read(*APPLICATION_STUDENT)
    with pytest.raises(
            ft_experiment.ConfigurationError,
            match=r"^`network.weight_decay = 0.0005` is bound for every "
                  r"network, but the student 'keras.applications.MobileNetV2' "
                  r"takes no `weight_decay`: clear it for this network with "
                  r"`student/network.weight_decay = None`, and decay it with "
                  r"`student/training.weight_decay`\.$"):
        ft_experiment.Experiment(tmp_path / "w", dry_run=True)


def test_the_binding_the_error_names_clears_it(tmp_path):
    read(*APPLICATION_STUDENT, "student/network.weight_decay = None")
    experiment = ft_experiment.Experiment(tmp_path / "w", dry_run=True)
    assert experiment.student.count_params() < 700_000
    # The teacher keeps the inherited value.
    assert experiment.settings.network["teacher"].kwargs["weight_decay"] == 5e-4
    experiment.close()


def test_an_argument_bound_for_one_network_it_does_not_take_is_refused(tmp_path):
    read(*APPLICATION_STUDENT, "student/network.weight_decay = None",
         "student/network.dropout = 0.2")
    with pytest.raises(
            ft_experiment.ConfigurationError,
            match=r"^`student/network`: The network "
                  r"'keras.applications.MobileNetV2' takes no 'dropout'; it "
                  r"takes 'alpha', 'weights' \(and `bn_momentum`\)\. "
                  r"Received: dropout=0.2$"):
        ft_experiment.Experiment(tmp_path / "w", dry_run=True)


def test_a_bad_bn_momentum_is_refused_when_read():
    with pytest.raises(ValueError, match=r"`network.bn_momentum` must be a "
                                         r"number in \[0, 1\).*0.9.*"
                                         r"Received: network.bn_momentum=1"):
        read("student/network.bn_momentum = 1")
