"""A method is its list of terms (`distillation.terms`, ft_keras.term_configs):
each gin method file gives its terms, a term of one's own joins the runner
through gin alone, and what the stages do is asked of the terms."""

import glob
import os

import gin
import keras
import numpy as np
import pytest

import ft_keras
from ft_keras import cli
from ft_keras import config
from ft_keras import distribute
from ft_keras import experiment as ft_experiment
from ft_keras import models
from ft_keras import stages
from ft_keras import term_configs
from ft_keras.stages import training as stage_training
from ft_keras.taps import features


pytestmark = pytest.mark.usefixtures("clean_gin")


def read(*gin_files, bindings=()):
    cli.parse_config(list(gin_files), list(bindings))
    return config.from_gin()


# method file -> (label, [(term class, weight, settings it must carry)],
# the student's cross-entropy weight).
METHODS = {
    "ft": ("FT", [("FactorTransfer", 500.0, {})], 1.0),
    "ft_kd": ("FT+KD", [("FactorTransfer", 500.0, {}),
                        ("KnowledgeDistillation", 1.0, {"temperature": 4.0})], 1.0),
    "kd": ("KD", [("KnowledgeDistillation", 0.9, {"temperature": 4.0})], 0.1),
    "at": ("AT", [("AttentionTransfer", 1000.0,
                   {"teacher_layers": ["stage3"], "student_layers": ["stage3"]})], 1.0),
    "dkd": ("DKD", [("DecoupledKD", 1.0, {"alpha": 1.0, "beta": 8.0,
                                          "warmup_epochs": 20})], 1.0),
    "fitnets": ("FitNets", [("FitNets", 100.0, {"teacher_layer": "stage2"})], 1.0),
    # The hint trains in the pre-training stage; the student stage has KD.
    "fitnets_hint": ("FitNets-hint+KD", [("KnowledgeDistillation", 0.9,
                                          {"temperature": 4.0})], 0.1),
    "dist": ("DIST", [("DIST", 2.0, {"temperature": 4.0})], 1.0),
    "review_kd": ("ReviewKD", [("ReviewKD", 5.0, {
        "teacher_layers": ["stage1", "stage2", "stage3", "avg_pool"],
        "warmup_epochs": 20})], 1.0),
    "crd": ("CRD", [("CRD", 0.8, {"teacher_layer": "avg_pool",
                                  "num_negatives": 16384})], 1.0),
}


def test_every_method_file_is_listed():
    files = {os.path.basename(p)[:-4] for p in glob.glob("gin/methods/*.gin")}
    assert files == set(METHODS) | {"alone"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_file_is_its_list_of_terms(method):
    label, expected, ce_weight = METHODS[method]
    settings = read("gin/quickstart.gin", f"gin/methods/{method}.gin")
    distillation = settings.distillation
    assert distillation.label == label
    assert distillation.student_loss_weight == ce_weight
    kwargs = dict(num_classes=10, input_shape=(8, 8, 1))
    teacher = models.get("wrn16_2", **kwargs)
    student = models.get("wrn10_1", **kwargs)
    # The student stage's terms.
    # The training split of 64 examples, for the terms that keep state per
    # example (CRD).
    split = term_configs.TrainingSet(64, 10, np.arange(64) % 10)
    built = [t.for_data(split).build(teacher, student)
             for t in distillation.terms if t.student_term]
    assert [(type(t).__name__, t.weight) for t in built] == [
        (name, weight) for name, weight, _ in expected]
    for term, (_, _, settings_) in zip(built, expected):
        for name, value in settings_.items():
            assert getattr(term, name) == value, name
    # Its Distiller logs one loss per term and sums them with their weights.
    distiller = ft_keras.Distiller(teacher, student, built,
                                   student_loss_weight=ce_weight)
    distiller.compile(keras.optimizers.SGD(0.0))
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    result = distiller.evaluate(x, np.arange(4), verbose=0, return_dict=True)
    assert set(result) == {"loss", "ce_loss"} | {t.loss_name for t in built}
    total = ce_weight * result["ce_loss"] + sum(
        t.weight * result[t.loss_name] for t in built)
    np.testing.assert_allclose(result["loss"], total, rtol=1e-5)


def test_factor_transfer_alone_is_the_default_and_the_only_pretraining():
    settings = read("gin/quickstart.gin")
    (ft,) = settings.distillation.terms
    assert isinstance(ft, config.FactorTransferConfig) and ft.beta == 500.0
    assert settings.distillation.pretrains
    assert stages.artifacts(settings.distillation.terms)["student"] == (
        "translator.keras", "model.keras")
    kd = read("gin/quickstart.gin", "gin/methods/kd.gin").distillation
    assert not kd.pretrains
    assert not stages.get("paraphraser").applies_to(kd.terms)
    assert stages.artifacts(kd.terms) == {
        "teacher": ("model.keras",), "paraphraser": (),
        "student": ("model.keras",), "baseline": ("model.keras",)}


def test_a_kd_only_config_without_factor_transfer_runs_every_stage(tmp_path):
    cli.parse_config(["gin/data/digits.gin"], [
        "teacher/network.name = 'wrn10_2'", "student/network.name = 'wrn10_1'",
        "training.epochs = 1", "dataset.batch_size = 64", "experiment.seed = 0",
        "distillation.terms = [@knowledge_distillation()]",
        "experiment.stages = ['teacher', 'paraphraser', 'student', 'baseline', "
        "'evaluate']"])
    assert "factor_transfer" not in gin.config_str()
    results = ft_experiment.Experiment(tmp_path / "w").run()
    assert set(results["evaluation"]) == {"teacher", "student", "baseline"}
    assert sorted(results["stages"]) == ["baseline", "student", "teacher"]
    assert not (tmp_path / "w" / "paraphraser").exists()
    student = tmp_path / "w" / "student"
    assert (student / "model.keras").exists()
    assert not (student / "translator.keras").exists()  # FT's, not KD's


def test_two_terms_of_one_class_differ_by_scope_and_read_back():
    settings = read("gin/quickstart.gin", bindings=[
        "distillation.terms = [@t2/attention_transfer(), @t3/attention_transfer()]",
        "attention_transfer.weight = 10.0",
        "t2/attention_transfer.teacher_layers = ['stage2']",
        "t2/attention_transfer.student_layers = ['stage2']",
        "t2/attention_transfer.name = 'at2'",
        "t3/attention_transfer.teacher_layers = ['stage3']",
        "t3/attention_transfer.student_layers = ['stage3']",
        "t3/attention_transfer.weight = 50.0",
    ])
    t2, t3 = settings.distillation.terms
    assert (t2.reference, t3.reference) == ("@t2/attention_transfer()",
                                             "@t3/attention_transfer()")
    assert dict(t2.arguments)["weight"] == 10.0 and dict(t3.arguments)["weight"] == 50.0
    assert settings.distillation.label == "AT+AT"
    text = settings.to_gin()
    gin.clear_config()
    gin.parse_config(text)
    assert config.from_gin() == settings


@pytest.mark.parametrize("binding, message", [
    ("distillation.terms = [@knowledge_distillation]",
     r"lists terms' configurables, called.*\(add \(\)\)"),
    ("distillation.terms = [@knowledge_distillation(), @knowledge_distillation()]",
     r"call a term twice under two scopes"),
    # Two scopes, one name: the Distiller would refuse it after the teacher.
    ("distillation.terms = [@a/attention_transfer(), @b/attention_transfer()]\n"
     "attention_transfer.teacher_layers = ['stage3']\n"
     "attention_transfer.student_layers = ['stage3']",
     r"named \['at', 'at'\]; each needs its own name"),
    ("distillation.terms = []", r"is empty.*gin/methods/alone.gin"),
    ("distillation.terms = [@fitnets()]",
     r"`fitnets.teacher_layer` is required"),
    ("distillation.student_loss_weight = -1.0", r"non-negative"),
    ("distillation.terms = [@fitnets_hint()]\n"
     "fitnets_hint.teacher_layer = 'stage2'\n"
     "fitnets_hint.student_layer = 'stage2'",
     r"which only pre-train: add the terms the student stage trains with"),
    ("distillation.terms = [@factor_transfer(), @fitnets_hint()]\n"
     "fitnets_hint.teacher_layer = 'stage2'\n"
     "fitnets_hint.student_layer = 'stage2'",
     r"each pre-train .* keep one"),
])
def test_a_bad_term_list_is_refused_in_one_line(binding, message):
    with pytest.raises(ValueError, match=message):
        read("gin/quickstart.gin", bindings=[binding])


def test_an_unknown_argument_is_refused_when_parsed():
    with pytest.raises(ValueError, match="doesn't have a parameter named 'alpha'"):
        read("gin/quickstart.gin", bindings=["knowledge_distillation.alpha = 1.0"])


def test_report_labels_come_from_the_terms_binding():
    assert term_configs.label(None) == "FT"
    assert term_configs.label(
        "[@factor_transfer(), @x/knowledge_distillation()]") == "FT+KD"
    assert term_configs.label("[@decoupled_kd()]") == "DKD"
    assert term_configs.label("[@somebody_elses()]") == "somebody_elses"


class LogitL2(ft_keras.Term):
    """A term of the test's own: the mean squared difference of the
    logits; nothing in ft_keras/ knows it."""

    def __init__(self, weight=1.0, name="logit_l2", **kwargs):
        super().__init__([None], [None], weight=weight, name=name, **kwargs)

    def compute_loss(self, teacher, student):
        return keras.ops.mean(keras.ops.square(teacher[0] - student[0]), axis=-1)


def test_a_term_of_ones_own_runs_every_stage_from_gin_alone(tmp_path):
    term_configs.register(LogitL2, "logit_l2", label="L2")
    cli.parse_config(["gin/quickstart.gin"], [
        "distillation.terms = [@logit_l2()]",
        "logit_l2.weight = 0.5",
        "experiment.stages = ['teacher', 'paraphraser', 'student', 'evaluate']",
        "training.epochs = 1", "paraphraser/training.epochs = 1",
    ])
    results = ft_experiment.Experiment(tmp_path / "w").run()
    assert set(results["evaluation"]) == {"teacher", "student"}
    assert "paraphraser" not in results["stages"]  # it pre-trains nothing
    assert (tmp_path / "w" / "config.gin").read_text().count("@logit_l2()") == 1


def test_a_workdir_of_named_methods_is_refused_in_one_line(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "config.gin").write_text("distillation.method = 'kd'\n")
    cli.parse_config(["gin/quickstart.gin", "gin/methods/kd.gin"], [])
    with pytest.raises(ft_experiment.ConfigurationError,
                       match=r"earlier ft_keras.*`distillation.method`.*"
                             r"--overwrite to start over") as error:
        ft_experiment.Experiment(workdir, dry_run=True)
    assert "\n" not in str(error.value)
    # Nothing written but the lock (as for every refused run).
    assert sorted(os.listdir(workdir)) == [".lock", "config.gin"]
    assert (workdir / "config.gin").read_text() == "distillation.method = 'kd'\n"


def test_fitnets_two_stages_hint_first_then_kd_from_the_hinted_student(
        tmp_path, capsys):
    """The paper's FitNets in the runner: the pre-training stage trains the
    student's layers up to the hint and the regressor, nothing above; the
    student stage starts from that student and trains it with KD alone."""
    bindings = ["training.epochs = 1", "paraphraser/training.epochs = 1",
                "experiment.seed = 0"]
    cli.parse_config(["gin/quickstart.gin", "gin/methods/fitnets_hint.gin"],
                     bindings + ["experiment.stages = ['teacher', 'paraphraser']"])
    experiment = ft_experiment.Experiment(tmp_path / "w")
    initial = {layer.name: [np.array(w) for w in layer.get_weights()]
               for layer in experiment.student.layers}
    experiment.run()
    hinted = keras.models.load_model(
        tmp_path / "w" / "paraphraser" / "hint_student.keras", compile=False)
    below = features.feature_extractor(hinted, ["stage2"], "student")
    lower = {layer.name for layer in below.layers if layer.get_weights()}
    assert "stem_conv" in lower
    for layer in hinted.layers:
        if not layer.get_weights():
            continue
        same = all(np.array_equal(a, b)
                   for a, b in zip(initial[layer.name], layer.get_weights()))
        assert same == (layer.name not in lower), layer.name

    gin.clear_config()
    cli.parse_config(["gin/quickstart.gin", "gin/methods/fitnets_hint.gin"],
                     bindings + ["experiment.stages = ['student', 'evaluate']"])
    experiment = ft_experiment.Experiment(tmp_path / "w")
    with distribute.scope(experiment.strategy):
        experiment.nets.trained_teacher(experiment.context)
        distiller, built = stage_training.student_distiller(
            experiment.context, experiment.nets)
    assert [type(term).__name__ for term in distiller.terms] == [
        "KnowledgeDistillation"]
    for a, b in zip(experiment.student.get_weights(), hinted.get_weights()):
        np.testing.assert_array_equal(a, b)
    results = experiment.run()
    assert "FitNets-hint+KD student: top1" in capsys.readouterr().out
    assert set(results["evaluation"]) == {"teacher", "student"}
    header = (tmp_path / "w" / "student" / "log.csv").read_text().splitlines()[0]
    assert "kd_loss" in header and "fitnets" not in header
