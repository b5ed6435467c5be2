"""Each config that claims a reference is what that reference ran: the values
the gin files bind, read back through ft_keras.config (no training)."""

import glob
import os
import pathlib

import gin
import pytest

from ft_keras import cli
from ft_keras import config
from ft_keras import layers
from ft_keras import optim

REPO = pathlib.Path(__file__).resolve().parent.parent
SCOPES = ("teacher", "paraphraser", "student")
REPDISTILLER = sorted(glob.glob(str(REPO / "gin" / "paper" / "cifar100_*.gin")))
PAPER = [str(REPO / "gin" / "distill.gin"),
         str(REPO / "gin" / "paper" / "cifar10_resnet56_resnet20.gin")]
TORCHDISTILL = str(REPO / "gin" / "paper" / "imagenet_resnet34_resnet18.gin")
MMRAZOR = str(REPO / "gin" / "peers" / "mmrazor_resnet50_resnet18_cifar10.gin")
EXPERIMENTS = sorted(
    p for p in glob.glob(str(REPO / "gin" / "**" / "*.gin"), recursive=True)
    if pathlib.Path(p).parent.name not in ("data", "recipes", "methods"))
# What each reference's PyTorch SGD decays every trainable parameter by.
WEIGHT_DECAY = {**{p: 5e-4 for p in PAPER + REPDISTILLER},
                TORCHDISTILL: 1e-4, MMRAZOR: 1e-4}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


class Parsed:
    """The settings an `Experiment` would read from a gin file."""

    def __init__(self, path, bindings=()):
        gin.clear_config()
        cli.parse_config([path], list(bindings))
        self.settings = config.from_gin()
        self.ft = next((t for t in self.settings.distillation.terms
                        if isinstance(t, config.FactorTransferConfig)), None)
        self.training = self.settings.training
        self.network = self.settings.network

    def check_weight_decay(self):
        for scope in SCOPES:
            self.settings.check_weight_decay(scope)


def short(path):
    return os.path.relpath(path, REPO)


@pytest.mark.parametrize("path", REPDISTILLER, ids=short)
def test_repdistiller_bn_only_in_the_translator(path):
    # train_student.py: Paraphraser(t_shape) (use_bn=False by default),
    # Translator(s_shape, t_shape) (use_bn=True by default).
    ft = Parsed(path).ft
    assert (ft.paraphraser_bn, ft.translator_bn) == (False, True)


@pytest.mark.parametrize("path", REPDISTILLER, ids=short)
def test_repdistiller_paraphraser_pretrains_30_epochs_at_lr_0_01(path):
    # helper/pretrain.py: lr 0.01 for the resnet/wrn students, no schedule.
    parsed = Parsed(path)
    assert parsed.training["paraphraser"].epochs == 30
    assert parsed.training["paraphraser"].learning_rate == 0.01
    assert parsed.training["paraphraser"].schedule == "constant"


def test_torchdistill_paraphraser_pretrains_at_lr_0_01_with_decay():
    # ft-resnet18_from_resnet34.yaml, stage1: SGD lr 0.01, weight_decay 1e-4.
    parsed = Parsed(TORCHDISTILL)
    opt = parsed.training["paraphraser"]
    assert (parsed.training["paraphraser"].epochs, opt.learning_rate,
            opt.weight_decay, opt.weight_decay_mode) == (
        1, 0.01, 1e-4, "coupled")


def test_mmrazor_connectors_are_decayed_and_pre_training_builds():
    # cifar10_bs128.py: SGD weight_decay 1e-4 over every parameter, the
    # paraphraser (pre-training) and translator (distillation) included.
    parsed = Parsed(MMRAZOR)
    for scope in ("paraphraser", "student"):
        opt = parsed.training[scope]
        assert (opt.weight_decay, opt.weight_decay_mode) == (
            1e-4, "coupled")
        built = opt.build_optimizer(steps_per_epoch=391)
        assert isinstance(built, optim.TorchSGD)
        assert built.coupled_weight_decay == 1e-4
    assert parsed.training["paraphraser"].epochs == 20


@pytest.mark.parametrize("path", sorted(WEIGHT_DECAY), ids=short)
def test_reference_configs_decay_every_parameter_as_pytorch_sgd(path):
    parsed = Parsed(path)
    for scope in SCOPES:
        opt = parsed.training[scope]
        assert opt.weight_decay_mode == "coupled", scope
        assert opt.weight_decay == WEIGHT_DECAY[path], scope
        assert opt.optimizer == "sgd" and opt.momentum == 0.9
    # ... and nothing a second time through a kernel L2 penalty.
    assert parsed.ft.connector_weight_decay == 0.0
    for net in parsed.network.values():
        assert not net.kwargs.get("weight_decay")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=short)
def test_no_config_decays_a_kernel_twice(path):
    Parsed(path).check_weight_decay()


def test_double_decay_is_refused_with_the_bindings_to_change():
    parsed = Parsed(str(REPO / "gin" / "distill.gin"),
                    ["student/network.weight_decay = 5e-4"])
    with pytest.raises(ValueError, match=r"student/network.weight_decay = 0.0005"
                       r".*decay its kernels a second time"):
        parsed.check_weight_decay()


@pytest.mark.parametrize(
    "path, rounding",
    [(p, "half_even") for p in PAPER]  # int(round(64 * RATE))
    + [(p, "floor") for p in REPDISTILLER + [TORCHDISTILL]],  # int(C * k)
    ids=lambda v: short(v) if str(v).endswith(".gin") else v)
def test_channel_rounding_is_the_references(path, rounding):
    ft = Parsed(path).ft
    assert ft.rounding == rounding
    # Where the rules differ, the reference's count: 5 channels at 0.5.
    assert layers.factor_channels(5, ft.rate, ft.rounding) == (
        int(round(5 * 0.5)) if rounding == "half_even" else int(5 * 0.5))


@pytest.mark.parametrize(
    "path, p, p_form",
    [(p, 1, "norm") for p in PAPER + [TORCHDISTILL, MMRAZOR]]
    + [(p, 1, "mean") for p in REPDISTILLER],
    ids=lambda v: short(v) if str(v).endswith(".gin") else str(v))
def test_factor_transfer_loss_form_is_the_references(path, p, p_form):
    ft = Parsed(path).ft
    assert (ft.p, ft.p_form) == (p, p_form)


@pytest.mark.parametrize("binding, message", [
    ("training.weight_decay_mode = 'l2'", "Received: weight_decay_mode='l2'"),
    ("factor_transfer.rounding = 'up'", "Received: rounding='up'"),
    ("factor_transfer.p_form = 'sum'", "Received: p_form='sum'"),
    ("factor_transfer.p = 3", "Received: p=3"),
])
def test_bad_settings_fail_when_read(binding, message):
    with pytest.raises(ValueError, match=message):
        Parsed(str(REPO / "gin" / "quickstart.gin"), [binding])


def test_coupled_decay_needs_sgd():
    with pytest.raises(ValueError, match="student/training.*needs "
                       "`optimizer='sgd'`"):
        Parsed(str(REPO / "gin" / "distill.gin"),
               ["student/training.optimizer = 'adam'"])


def test_gin_readme_describes_every_runnable_config():
    readme = (REPO / "gin" / "README.md").read_text()
    runnable = [p for p in EXPERIMENTS
                if pathlib.Path(p).parent.name != "tests"]
    for path in runnable:
        assert f"`{short(path)}`" in readme, short(path)
