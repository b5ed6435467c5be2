"""PyTorch teachers: a `state_dict` saved by torch gives the same logits in
our network of its layout (`ft_keras.models.torch_import`), the runner takes
a `.pth` as `experiment.teacher_checkpoint`, and `python -m
ft_keras.import_torch` converts and checks one.

The PyTorch networks are tests/torch_reference's (torchvision's ResNet and
RepDistiller's CIFAR networks, module for module), with random weights and
random BatchNorm statistics, in eval mode; no download.
"""

import os
import pathlib
import re
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch import needs torch")

from torch_reference import repdistiller  # noqa: E402
from torch_reference import torchvision_resnet  # noqa: E402

from ft_keras import cli  # noqa: E402
from ft_keras import experiment as ft_experiment  # noqa: E402
from ft_keras import import_torch  # noqa: E402
from ft_keras import models  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
# float32: the same sums in another order differ by ~1e-6 of the largest
# |logit| (measured: at most 2e-6); a tensor read wrong moves them by ~1.
RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def clean():
    yield
    gin.clear_config()
    keras.backend.clear_session()


def randomize(net, seed=0):
    """Random weights, and BatchNorm statistics far from (0, 1) so that
    reading them wrong shows in the logits; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            shape = tensor.shape
            if name.endswith("num_batches_tracked"):
                tensor.fill_(1000)
            elif name.endswith("running_var") or (
                tensor.dim() == 1 and name.endswith("weight")
            ):
                tensor.copy_(torch.rand(shape, generator=generator) + 0.5)
            elif tensor.dim() == 1:  # biases, running means
                tensor.copy_(0.1 * torch.randn(shape, generator=generator))
            else:  # He-normal over fan-in
                scale = (2.0 / tensor[0].numel()) ** 0.5
                tensor.copy_(scale * torch.randn(shape, generator=generator))
    return net.eval()


def images(size, count=4):
    """NCHW float32 images, as PyTorch takes them."""
    return (
        np.random.default_rng(1).normal(size=(count, 3, size, size)).astype("float32")
    )


def torch_logits(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def our_logits(model, x):
    return np.asarray(model(x.transpose(0, 2, 3, 1), training=False))


def repdistiller_checkpoint(net, path):
    """Saved as RepDistiller's train_teacher.py saves its teachers: the
    state_dict under "model", beside the optimizer's state."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    torch.save(
        {
            "epoch": 240,
            "model": net.state_dict(),
            "best_acc": torch.tensor(75.6),
            "optimizer": optimizer.state_dict(),
        },
        path,
    )


# (our network, the PyTorch network, image size, how its project saves it)
LAYOUTS = {
    "torchvision_resnet18": (
        "imagenet_resnet18",
        lambda: torchvision_resnet.resnet18(5),
        64,
        "state_dict",
    ),
    "torchvision_resnet50": (
        "imagenet_resnet50",
        lambda: torchvision_resnet.resnet50(5),
        64,
        "state_dict",
    ),
    "repdistiller_resnet20": (
        "resnet20",
        lambda: repdistiller.resnet(20, num_classes=5),
        32,
        "repdistiller",
    ),
    "repdistiller_ResNet18": (
        "resnet18",
        lambda: repdistiller.resnet_v2(18, 5),
        32,
        "repdistiller",
    ),
    "repdistiller_ResNet50": (
        "resnet50",
        lambda: repdistiller.resnet_v2(50, 5),
        32,
        "repdistiller",
    ),
    "repdistiller_wrn_16_2": (
        "wrn16_2",
        lambda: repdistiller.wrn(16, 2, 5),
        32,
        "repdistiller",
    ),
    "repdistiller_mobile_half": (
        "mobilenetv2_half",
        lambda: repdistiller.mobile_half(5),
        32,
        "repdistiller",
    ),
}


def _check_args(checkpoint, tmp_path):
    """`python -m ft_keras.import_torch` arguments: a 5-class resnet20
    checked against `x.npy` / `y.npy` in `tmp_path`."""
    return [str(checkpoint), "--network", "resnet20", "--num_classes", "5",
            "--check_inputs", str(tmp_path / "x.npy"),
            "--check_logits", str(tmp_path / "y.npy")]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_imported_weights_give_the_pytorch_logits(layout, tmp_path):
    name, make, size, saved_as = LAYOUTS[layout]
    net = randomize(make())
    path = tmp_path / "teacher.pth"
    if saved_as == "repdistiller":
        repdistiller_checkpoint(net, path)
    else:
        torch.save(net.state_dict(), path)
    model = models.from_torch(
        name, str(path), num_classes=5, input_shape=(size, size, 3)
    )
    x = images(size)
    expected = torch_logits(net, x)
    difference = np.abs(our_logits(model, x) - expected).max()
    scale = np.abs(expected).max()
    print(f"{layout}: max |difference| {difference:.3g}, largest |logit| {scale:.3g}")
    assert np.ptp(expected, axis=0).min() > 0.01 * scale  # the images differ
    assert difference <= RELATIVE_TOLERANCE * scale, (difference, scale)


def test_the_layout_is_told_from_the_layers_under_any_model_name():
    expected = {
        "imagenet_resnet18": "torchvision_resnet",
        "resnet56": "repdistiller_resnet",
        "resnet34": "repdistiller_resnetv2",
        "wrn40_2": "repdistiller_wrn",
        "mobilenetv2_half": "repdistiller_mobilenetv2",
    }
    for name, layout in expected.items():
        assert models.torch_layout(models.get(name, model_name="teacher")) == layout


def test_the_data_parallel_module_prefix_is_dropped(tmp_path):
    net = randomize(repdistiller.resnet(20, num_classes=5))
    torch.save(torch.nn.DataParallel(net).state_dict(), tmp_path / "dp.pth")
    assert next(iter(torch.load(tmp_path / "dp.pth"))).startswith("module.")
    model = models.from_torch("resnet20", str(tmp_path / "dp.pth"), num_classes=5)
    x = images(32)
    np.testing.assert_allclose(
        our_logits(model, x), torch_logits(net, x), rtol=0, atol=1e-4
    )


def test_a_network_without_a_pytorch_layout_is_refused_in_one_line():
    net = randomize(repdistiller.resnet(20, num_classes=10)).state_dict()
    inputs = keras.Input((32, 32, 3))
    plain = keras.Model(
        inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)), name="mine"
    )
    with pytest.raises(
        ValueError,
        match=r"^No PyTorch layout for 'mine': PyTorch weights go into "
        r"imagenet_resnet18/34/50 \(torchvision's ResNet",
    ) as e:
        models.load_torch_weights(plain, net)
    assert "\n" not in str(e.value)
    zero_pad = models.get("resnet20", shortcut="zero_pad")
    with pytest.raises(
        ValueError,
        match=r"^No PyTorch layout for 'resnet20': its zero-padding "
        r"shortcuts .* shortcut=\"projection\"\.$",
    ):
        models.load_torch_weights(zero_pad, net)


def state_of(net):
    return {k: v.numpy() for k, v in net.state_dict().items()}


def test_a_missing_tensor_is_named_and_nothing_is_set():
    state = state_of(randomize(repdistiller.wrn(16, 2, 10)))
    del state["block2.layer.0.convShortcut.weight"]
    model = models.get("wrn16_2", num_classes=10)
    before = [w.numpy() for w in model.weights]
    with pytest.raises(
        ValueError,
        match=r"^The checkpoint has no 'block2.layer.0.convShortcut.weight' "
        r"for layer 'stage2_block1_shortcut_conv' of 'wrn16_2' "
        r"\(RepDistiller's WRN \(models/wrn.py\)\)\.$",
    ):
        models.load_torch_weights(model, state)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.weights))


def test_an_extra_tensor_is_named():
    state = state_of(randomize(repdistiller.resnet(20, num_classes=10)))
    state["fc2.weight"] = np.zeros((10, 64), "float32")
    with pytest.raises(
        ValueError,
        match=r"^The checkpoint's 'fc2.weight' \(10, 64\) has no weight in "
        r"'resnet20' \(RepDistiller's CIFAR ResNet \(models/resnet.py\)\)\.$",
    ):
        models.load_torch_weights(models.get("resnet20"), state)


def test_a_shape_that_differs_is_named_with_both_shapes():
    # RepDistiller's resnet8x4 (four times the channels) is no network of ours.
    state = state_of(
        randomize(repdistiller.resnet(8, (32, 64, 128, 256), num_classes=10))
    )
    with pytest.raises(
        ValueError,
        match=r"^The checkpoint's 'conv1.weight' is \(32, 3, 3, 3\); layer "
        r"'stem_conv' of 'resnet8' \(RepDistiller's CIFAR ResNet "
        r"\(models/resnet.py\)\) needs \(16, 3, 3, 3\) \(PyTorch's order\)\.$",
    ):
        models.load_torch_weights(models.cifar_resnet(8), state)


def test_a_checkpoint_of_another_layout_says_which_network_takes_it():
    state = state_of(randomize(torchvision_resnet.resnet18(10)))
    with pytest.raises(
        ValueError,
        match=r"^The checkpoint's 'conv1.weight' is \(64, 3, 7, 7\); .* "
        r"The checkpoint looks like torchvision's ResNet "
        r"\(torchvision/models/resnet.py\), whose weights go into "
        r"imagenet_resnet18/34/50\.$",
    ):
        models.load_torch_weights(models.get("resnet18"), state)


def test_a_pickled_model_object_is_refused(tmp_path):
    torch.save(repdistiller.resnet(20), tmp_path / "whole.pth")
    with pytest.raises(
        ValueError,
        match=r"whole.pth cannot be read as PyTorch weights "
        r"\(torch.load\(weights_only=True\)\): .* Save "
        r"`model.state_dict\(\)`, not the model object\.$",
    ):
        models.read_state_dict(str(tmp_path / "whole.pth"))


def test_without_torch_a_file_asks_for_the_extra(tmp_path, monkeypatch):
    torch.save({"fc.bias": torch.zeros(3)}, tmp_path / "t.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
    with pytest.raises(ImportError, match=r'pip install "ft_keras\[torch\]"'):
        models.read_state_dict(str(tmp_path / "t.pth"))
    # A state_dict in memory needs no torch.
    assert models.read_state_dict({"fc.bias": np.zeros(3)})["fc.bias"].shape == (3,)


def test_the_runner_takes_a_pth_teacher_without_training(tmp_path, monkeypatch, capsys):
    # gin/quickstart.gin: a WRN-16-2 teacher on 8x8 grey digits, as
    # RepDistiller's wrn_16_2 would be with one input channel.
    monkeypatch.chdir(REPO)
    net = randomize(repdistiller.wrn(16, 2, 10))
    state = net.state_dict()
    state["conv1.weight"] = state["conv1.weight"][:, :1].clone()
    path = tmp_path / "wrn_16_2_best.pth"
    torch.save({"epoch": 240, "model": state}, path)
    cli.parse_config(
        ["gin/quickstart.gin"], [f"experiment.teacher_checkpoint = '{path}'"]
    )
    experiment = ft_experiment.Experiment(tmp_path / "w")
    try:
        experiment.run_stage("teacher")
    finally:
        experiment.close()
    assert (
        "teacher: RepDistiller's WRN (models/wrn.py) weights from"
        in capsys.readouterr().out
    )
    assert not (tmp_path / "w" / "teacher" / "log.csv").exists()  # not trained
    saved = keras.models.load_model(
        tmp_path / "w" / "teacher" / "model.keras", compile=False
    )
    expected = state["block3.layer.1.conv2.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(
        saved.get_layer("stage3_block2_conv2").kernel.numpy(), expected
    )
    np.testing.assert_array_equal(
        saved.get_layer("final_bn").moving_variance.numpy(),
        state["bn1.running_var"].numpy(),
    )


def test_the_runner_names_a_pth_of_another_network(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = tmp_path / "resnet20.pth"
    torch.save(randomize(repdistiller.resnet(20)).state_dict(), path)
    cli.parse_config(
        ["gin/quickstart.gin"], [f"experiment.teacher_checkpoint = '{path}'"]
    )
    experiment = ft_experiment.Experiment(tmp_path / "w")
    try:
        with pytest.raises(
            ft_experiment.ConfigurationError,
            match=r"resnet20.pth does not match the teacher network 'wrn16_2': "
            r"The checkpoint's 'conv1.weight' is \(16, 3, 3, 3\); layer "
            r"'stem_conv' of 'teacher' \(RepDistiller's WRN \(models/wrn.py\)\) "
            r"needs \(16, 1, 3, 3\).*looks like RepDistiller's CIFAR ResNet",
        ):
            experiment.run_stage("teacher")
    finally:
        experiment.close()


def test_the_cli_converts_checks_and_saves(tmp_path):
    net = randomize(repdistiller.resnet(20, num_classes=5))
    repdistiller_checkpoint(net, tmp_path / "resnet20_best.pth")
    x = images(32, count=8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", torch_logits(net, x))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the tool quiets TensorFlow itself
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ft_keras.import_torch",
            *_check_args(tmp_path / "resnet20_best.pth", tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert re.fullmatch(
        r"check: max \|logit difference\| \S+ on 8 images \(largest \|logit\| "
        r"\S+\): the same logits",
        lines[0],
    ), lines
    tensors = [
        t for k, t in net.state_dict().items() if not k.endswith("num_batches_tracked")
    ]
    assert lines[1] == (
        f"{tmp_path / 'resnet20_best.pth'}: RepDistiller's CIFAR ResNet (models/resnet.py) -> "
        f"resnet20 (input 32x32x3, 5 classes): {len(tensors)} tensors, "
        f"{sum(t.numel() for t in tensors):,} values, saved to {tmp_path / 'resnet20_best.keras'}"
    )
    saved = keras.models.load_model(tmp_path / "resnet20_best.keras", compile=False)
    np.testing.assert_allclose(
        our_logits(saved, x), torch_logits(net, x), rtol=0, atol=1e-4
    )


def test_the_cli_refuses_logits_that_differ_and_saves_nothing(tmp_path, capsys):
    net = randomize(repdistiller.resnet(20, num_classes=5))
    torch.save(net.state_dict(), tmp_path / "r.pth")
    x = images(32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", torch_logits(net, x) + 1.0)
    args = _check_args(tmp_path / "r.pth", tmp_path)
    assert import_torch.main(args) == 1
    assert "DIFFERENT logits" in capsys.readouterr().out
    assert not (tmp_path / "r.keras").exists()
    assert import_torch.main([str(tmp_path / "r.pth"), "--network", "wrn16_2"]) == 2
    assert capsys.readouterr().err.startswith(
        "ft_keras: error: The checkpoint has no 'block1.layer.0.bn1.weight' for layer 'stage1_block1_bn1'"
    )
