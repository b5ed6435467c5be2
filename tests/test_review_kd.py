"""ReviewKD: its fusion chain, loss and gradients against mdistiller's code
in PyTorch, PyTorch's resampling rules, the warm-up, the `.keras` round
trip, argument checks, and the term inside a Distiller on real data."""

import numpy as np
import pytest
import tensorflow as tf

import keras

import ft_keras
from ft_keras.terms import review_kd

from _digits import digits
from _digits import digits_net
from _digits import snapshot
from _digits import trained_teacher


# mdistiller's `hcl_loss`, `ABF` and `ReviewKD`'s use of them
# (`mdistiller/distillers/ReviewKD.py` at commit a08d46f), NCHW.


def mdistiller_hcl_loss(fstudent, fteacher):
    """`hcl_loss` (ReviewKD.py:11-28), as written there."""
    F = pytest.importorskip("torch").nn.functional
    loss_all = 0.0
    for fs, ft in zip(fstudent, fteacher):
        n, c, h, w = fs.shape
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt = 1.0
        tot = 1.0
        for l in [4, 2, 1]:
            if l >= h:
                continue
            tmpfs = F.adaptive_avg_pool2d(fs, (l, l))
            tmpft = F.adaptive_avg_pool2d(ft, (l, l))
            cnt /= 2.0
            loss += F.mse_loss(tmpfs, tmpft, reduction="mean") * cnt
            tot += cnt
        loss = loss / tot
        loss_all = loss_all + loss
    return loss_all


def mdistiller_abf():
    """The `ABF` class (ReviewKD.py:106-144), as written there."""
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class ABF(nn.Module):
        def __init__(self, in_channel, mid_channel, out_channel, fuse):
            super(ABF, self).__init__()
            self.conv1 = nn.Sequential(
                nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
                nn.BatchNorm2d(mid_channel),
            )
            self.conv2 = nn.Sequential(
                nn.Conv2d(
                    mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False
                ),
                nn.BatchNorm2d(out_channel),
            )
            if fuse:
                self.att_conv = nn.Sequential(
                    nn.Conv2d(mid_channel * 2, 2, kernel_size=1),
                    nn.Sigmoid(),
                )
            else:
                self.att_conv = None
            nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)  # pyre-ignore
            nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)  # pyre-ignore

        def forward(self, x, y=None, shape=None, out_shape=None):
            n, _, h, w = x.shape
            # transform student features
            x = self.conv1(x)
            if self.att_conv is not None:
                # upsample residual features
                y = F.interpolate(y, (shape, shape), mode="nearest")
                # fusion
                z = torch.cat([x, y], dim=1)
                z = self.att_conv(z)
                x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
            # output
            if x.shape[-1] != out_shape:
                x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
            y = self.conv2(x)
            return y, x

    return ABF


def mdistiller_abfs(in_channels, out_channels):
    """`ReviewKD.__init__`'s fusions (ReviewKD.py:44-54), in `in_channels`
    order (before its `abfs[::-1]`)."""
    ABF, nn = mdistiller_abf(), pytest.importorskip("torch").nn
    abfs = nn.ModuleList()
    mid_channel = min(512, in_channels[-1])
    for idx, in_channel in enumerate(in_channels):
        abfs.append(ABF(in_channel, mid_channel, out_channels[idx],
                        idx < len(in_channels) - 1))
    return abfs


def mdistiller_chain(abfs, x, shapes, out_shapes):
    """`forward_train`'s loop (ReviewKD.py:81-88): `x`, `shapes` and
    `out_shapes` deepest first, `abfs` reversed as `self.abfs`."""
    results = []
    out_features, res_features = abfs[0](x[0], out_shape=out_shapes[0])
    results.append(out_features)
    for features, abf, shape, out_shape in zip(
        x[1:], abfs[1:], shapes[1:], out_shapes[1:]
    ):
        out_features, res_features = abf(features, res_features, shape, out_shape)
        results.insert(0, out_features)
    return results


# Tap pairs (teacher, student), shallowest first, as (height, width,
# channels) or (channels,) for the pooled feature: mdistiller's CIFAR
# layout in small (32/16/8 -> 8/4/2), and one where the student's maps are
# smaller than the teacher's by non-integer ratios (6 -> 8, 3 -> 4) and
# the pyramid's windows overlap (6 -> 4).
LAYOUTS = {
    "cifar": ([(8, 8, 12), (4, 4, 24), (2, 2, 48), (48,)],
              [(8, 8, 6), (4, 4, 12), (2, 2, 24), (24,)]),
    "uneven": ([(8, 8, 10), (4, 4, 20), (20,)],
               [(6, 6, 5), (3, 3, 10), (1, 1, 8)]),
}
BATCH = 4


def as_map(shape):
    return (1, 1) + shape if len(shape) == 1 else shape


def random_maps(shapes, rng, scale=1.0):
    return [(scale * rng.normal(size=(BATCH,) + s)).astype("float32")
            for s in shapes]


def to_nchw(x):
    x = x.reshape((BATCH,) + as_map(x.shape[1:]))
    return x.transpose(0, 3, 1, 2)


def randomized(term, seed=0):
    """`term`'s fusions with random weights and BatchNorm statistics."""
    rng = np.random.default_rng(seed)
    for fusion in term.fusions:
        for v in fusion.weights:
            if "variance" in v.path:
                v.assign(0.5 + rng.random(v.shape).astype("float32"))
            else:
                v.assign(0.5 * rng.normal(size=v.shape).astype("float32"))


def load_abfs(term, abfs):
    """Copies each Keras fusion into mdistiller's ABF of the same tap:
    kernels `(kh, kw, in, out)` to `(out, in, kh, kw)`."""
    import torch

    def copy(tensor, value):
        with torch.no_grad():
            tensor.copy_(torch.tensor(np.asarray(value)))

    for fusion, abf in zip(term.fusions, abfs):
        pairs = [(fusion.conv1, fusion.bn1, abf.conv1),
                 (fusion.conv2, fusion.bn2, abf.conv2)]
        for conv, bn, sequential in pairs:
            copy(sequential[0].weight, np.transpose(conv.kernel, (3, 2, 0, 1)))
            copy(sequential[1].weight, bn.gamma)
            copy(sequential[1].bias, bn.beta)
            copy(sequential[1].running_mean, bn.moving_mean)
            copy(sequential[1].running_var, bn.moving_variance)
        assert (abf.att_conv is None) == (fusion.att_conv is None)
        if fusion.att_conv is not None:
            copy(abf.att_conv[0].weight,
                 np.transpose(fusion.att_conv.kernel, (3, 2, 0, 1)))
            copy(abf.att_conv[0].bias, fusion.att_conv.bias)


def connected_term(layout, seed=0):
    teacher_shapes, student_shapes = LAYOUTS[layout]
    names = [f"tap{i}" for i in range(len(teacher_shapes))]
    term = ft_keras.ReviewKD(names, names, warmup_epochs=0)
    term.connect([(None,) + s for s in teacher_shapes],
                 [(None,) + s for s in student_shapes])
    randomized(term, seed)
    return term


def torch_run(term, teacher, student, training):
    """mdistiller's fusions (weights of `term`) on the maps: the fused
    maps, `hcl_loss` and the student maps' gradient, NCHW."""
    import torch

    in_channels = [s.shape[-1] for s in student]
    out_channels = [t.shape[-1] for t in teacher]
    abfs = mdistiller_abfs(in_channels, out_channels)
    load_abfs(term, abfs)
    abfs.train(training)
    student_t = [torch.tensor(to_nchw(s), requires_grad=True) for s in student]
    teacher_t = [torch.tensor(to_nchw(t)) for t in teacher]
    shapes = [s.shape[-1] for s in student_t][::-1]
    out_shapes = [t.shape[-1] for t in teacher_t][::-1]
    results = mdistiller_chain(abfs[::-1], student_t[::-1], shapes, out_shapes)
    loss = mdistiller_hcl_loss(results, teacher_t)
    loss.backward()
    grads = {"student": [s.grad.numpy() for s in student_t],
             "conv1": [a.conv1[0].weight.grad.numpy() for a in abfs],
             "att_conv": [a.att_conv[0].weight.grad.numpy()
                          for a in abfs if a.att_conv is not None]}
    return [r.detach().numpy() for r in results], float(loss.detach()), grads


def keras_run(term, teacher, student, training):
    student_v = [tf.Variable(s) for s in student]
    with tf.GradientTape() as tape:
        t, fused = term([tf.constant(x) for x in teacher], student_v,
                        training=training)
        loss = tf.reduce_mean(term.compute_loss(t, fused, epoch=tf.constant(1.0)))
    kernels = {"conv1": [f.conv1.kernel for f in term.fusions],
               "att_conv": [f.att_conv.kernel for f in term.fusions
                            if f.att_conv is not None]}
    grads = tape.gradient(loss, [student_v, kernels])
    return [np.asarray(r) for r in fused], float(loss), grads


def close(got, expected, what, measured):
    """Per element within 1e-5 relative plus 1e-5 of the largest magnitude:
    float32 rounding (2^-24 ~ 6e-8 per operation) over the few hundred
    summed terms of a convolution, a BatchNorm over the batch and the
    pyramid means. `measured` collects the max abs / rel differences."""
    got, expected = np.asarray(got), np.asarray(expected)
    scale = np.abs(expected).max()
    diff = np.abs(got - expected).max()
    measured[what] = max(measured.get(what, 0.0), diff / scale)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale,
                               err_msg=what)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_fusions_loss_and_gradients_match_mdistillers_reviewkd(layout,
                                                               training):
    """`training`: mdistiller's training step (BatchNorm on the batch's
    statistics); otherwise its running statistics."""
    term = connected_term(layout)
    teacher_shapes, student_shapes = LAYOUTS[layout]
    rng = np.random.default_rng(1)
    teacher = random_maps(teacher_shapes, rng, scale=2.0)
    student = random_maps(student_shapes, rng)
    fused, loss, grads = keras_run(term, teacher, student, training)
    fused_t, loss_t, grads_t = torch_run(term, teacher, student, training)
    measured = {}
    # Measured (both layouts and modes): fused maps <= 4.4e-7 of their
    # largest element, loss <= 1.6e-7 relative, gradients <= 9.0e-7 of the
    # largest element (student maps, conv1 and att_conv kernels).
    for got, expected in zip(fused, fused_t):
        close(got.transpose(0, 3, 1, 2), expected, "fused", measured)
    np.testing.assert_allclose(loss, loss_t, rtol=1e-5)
    measured["loss"] = abs(loss - loss_t) / abs(loss_t)
    student_grads, kernel_grads = grads
    for got, expected in zip(student_grads, grads_t["student"]):
        close(to_nchw(np.asarray(got)), expected, "grad student", measured)
    for key in ("conv1", "att_conv"):
        assert len(kernel_grads[key]) == len(grads_t[key])
        for got, expected in zip(kernel_grads[key], grads_t[key]):
            close(np.transpose(got, (3, 2, 0, 1)), expected, f"grad {key}",
                  measured)
    print(layout, training, {k: f"{v:.1e}" for k, v in measured.items()})


def test_fusion_channels_and_sizes_follow_mdistiller():
    term = connected_term("cifar")
    # mid_channel = min(512, in_channels[-1]); out_channels: the teacher's.
    assert [(f.mid_channels, f.out_channels, f.output_size, f.fuse)
            for f in term.fusions] == [
        (24, 12, (8, 8), True), (24, 24, (4, 4), True),
        (24, 48, (2, 2), True), (24, 48, (1, 1), False)]
    wide = ft_keras.ReviewKD(["a", "b"], ["a", "b"])
    wide.connect([(None, 4, 4, 8), (None, 2048)], [(None, 4, 4, 8), (None, 1024)])
    assert wide.fusions[0].mid_channels == 512
    capped = ft_keras.ReviewKD(["a", "b"], ["a", "b"], max_mid_channels=256)
    capped.connect([(None, 4, 4, 8), (None, 2048)], [(None, 4, 4, 8), (None, 1024)])
    assert capped.fusions[0].mid_channels == 256


@pytest.mark.parametrize("in_size, out_size", [
    (4, 8), (2, 8), (3, 7), (6, 8), (5, 3), (7, 3), (8, 8), (1, 5)])
def test_nearest_resize_is_pytorchs_interpolate(in_size, out_size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(
        size=(2, 3, in_size, in_size + 1)).astype("float32")
    size = (out_size, out_size + 2)
    expected = torch.nn.functional.interpolate(torch.tensor(x), size,
                                               mode="nearest").numpy()
    got = review_kd.resize_nearest(x.transpose(0, 2, 3, 1), size)
    np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2),
                                  expected)


@pytest.mark.parametrize("height, width", [(8, 8), (6, 6), (7, 5), (3, 3)])
def test_pyramid_pools_are_pytorchs_adaptive_avg_pool(height, width):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 3, height, width)).astype(
        "float32")
    for level in review_kd.HCL_LEVELS:
        expected = torch.nn.functional.adaptive_avg_pool2d(
            torch.tensor(x), (level, level)).numpy()
        got = review_kd.adaptive_avg_pool(x.transpose(0, 2, 3, 1), level)
        # Measured: <= 1.2e-7 relative (summation order).
        np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2),
                                   expected, rtol=1e-6, atol=1e-7)


def test_hcl_loss_weights_the_levels_below_the_maps_height():
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(2, 3, 4, 4, 5)).astype("float32")
    mse = lambda a, b: np.mean((a - b) ** 2, axis=(1, 2, 3))

    def pool(x, level):
        k = x.shape[1] // level
        return x.reshape(len(x), level, k, level, k, 5).mean(axis=(2, 4))

    # Height 4: level 4 skipped, 2 and 1 at 1/2 and 1/4, over 1.75.
    expected = (mse(t, s) + 0.5 * mse(pool(t, 2), pool(s, 2))
                + 0.25 * mse(pool(t, 1), pool(s, 1))) / 1.75
    got = np.asarray(review_kd.hcl_loss([t], [s]))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # A 1x1 map: its mean squared difference alone.
    got = np.asarray(review_kd.hcl_loss([t[:, :1, :1]], [s[:, :1, :1]]))
    np.testing.assert_allclose(got, mse(t[:, :1, :1], s[:, :1, :1]), rtol=1e-6)


def test_warmup_factor_is_epoch_over_warmup_epochs_then_one():
    term = ft_keras.ReviewKD(["t"], ["s"], warmup_epochs=20)
    epochs = np.array([1, 2, 10, 19, 20, 21, 240], "float32")
    np.testing.assert_allclose(np.asarray(term.warmup(epochs)),
                               [0.05, 0.1, 0.5, 0.95, 1.0, 1.0, 1.0])
    t, s = np.random.default_rng(0).normal(size=(2, 2, 4, 4, 3)).astype("float32")
    full = np.asarray(review_kd.hcl_loss([t], [s]))
    for epoch, factor in ((1.0, 0.05), (7.0, 0.35), (30.0, 1.0)):
        np.testing.assert_allclose(
            np.asarray(term.compute_loss([t], [s], epoch=np.float32(epoch))),
            factor * full, rtol=1e-6)
    no_warmup = ft_keras.ReviewKD(["t"], ["s"], warmup_epochs=0)
    assert float(no_warmup.warmup(np.float32(1.0))) == 1.0


@pytest.mark.parametrize("kwargs, match", [
    ({"weight": -1.0}, "Received: weight=-1.0"),
    ({"warmup_epochs": -5}, r"\(20 in mdistiller, 0 for none\). Received: "
                            "warmup_epochs=-5"),
    ({"max_mid_channels": 0}, r"\(512 in mdistiller\). Received: "
                              "max_mid_channels=0"),
    ({"teacher_layers": "stage3"}, r"shallowest tap to the deepest, e.g. "
                                   r"\['stage1'.*Received: teacher_layers="
                                   "'stage3'"),
    ({"student_layers": ["stage1", None]}, "Received: student_layers="
                                           r"\['stage1', None\]"),
    ({"student_layers": ["stage1"]}, "must have the same length. Received: "
                                     r"teacher_layers=\['stage1', 'stage2'\], "
                                     r"student_layers=\['stage1'\]"),
])
def test_bad_arguments_are_rejected(kwargs, match):
    arguments = {"teacher_layers": ["stage1", "stage2"],
                 "student_layers": ["stage1", "stage2"], **kwargs}
    with pytest.raises(ValueError, match=match):
        ft_keras.ReviewKD(**arguments)


def test_taps_that_are_not_maps_are_rejected_naming_the_layer():
    term = ft_keras.ReviewKD(["stage2", "logits"], ["stage2", "seq"])
    with pytest.raises(ValueError, match=r"Student layer 'seq' gives a tensor "
                                         r"of shape \(None, 5, 7\)"):
        term.connect([(None, 4, 4, 8), (None, 10)],
                     [(None, 4, 4, 8), (None, 5, 7)])


# ----------------------------------------------------------------------
# Inside a Distiller, on digits: taps stage1 (8x8), stage2 (4x4) and the
# pooled feature (rank 2).

TAPS = ["stage1", "stage2", "pool"]


def reviewkd_distiller(warmup_epochs=0, weight=5.0):
    teacher = trained_teacher()
    student = digits_net("student", 8, seed=2)
    term = ft_keras.ReviewKD(TAPS, TAPS, weight=weight,
                             warmup_epochs=warmup_epochs)
    return ft_keras.Distiller(teacher, student, [term]), term


def full_loss(distiller, term, x):
    """The term's loss per example on `x` (inference mode, factor 1)."""
    maps = distiller(x, training=False)["terms"][term.name]
    return np.asarray(term.compute_loss(maps["teacher"], maps["student"],
                                        epoch=np.float32(1e6)))


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)  # fit's shuffling: one run, not a draw
    distiller, term = reviewkd_distiller()
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in distiller.student.trainable_variables
        + term.trainable_variables}
    teacher_before = snapshot(distiller.teacher)
    fusions_before = [np.array(v) for v in term.trainable_weights]
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      metrics=["accuracy"])
    x, y = digits(512)
    history = distiller.fit(x, y, batch_size=32, epochs=6, verbose=0).history
    return distiller, term, history, teacher_before, fusions_before


def test_reviewkd_trains_the_student_and_fusions_on_digits(trained):
    distiller, term, history, teacher_before, fusions_before = trained
    assert set(history) == {"loss", "ce_loss", "reviewkd_loss", "accuracy"}
    # The fused maps approach the teacher's while the student learns its
    # classes. Measured over 4 shuffling seeds, oneDNN's kernels and
    # Eigen's: ReviewKD's value falls to 0.10-0.11 of its first epoch's,
    # the cross-entropy to 0.48-0.69, accuracy ends 41-67%.
    review, ce = history["reviewkd_loss"], history["ce_loss"]
    assert review[-1] < 0.2 * review[0] and ce[-1] < 0.85 * ce[0], (review, ce)
    assert history["accuracy"][-1] > 0.3, history["accuracy"]
    for a, b in zip(teacher_before, snapshot(distiller.teacher)):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, np.array(v)) for a, v in
               zip(fusions_before, term.trainable_weights))
    x_test, y_test = digits(128, start=1000)
    result = distiller.evaluate(x_test, y_test, batch_size=128, verbose=0,
                                return_dict=True)
    np.testing.assert_allclose(result["reviewkd_loss"],
                               full_loss(distiller, term, x_test).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(
        result["loss"], result["ce_loss"] + 5.0 * result["reviewkd_loss"],
        rtol=1e-5)


def test_reviewkd_distiller_keras_file_round_trip(trained, tmp_path):
    distiller, term = trained[:2]
    distiller.save(tmp_path / "reviewkd.keras")
    restored = keras.models.load_model(tmp_path / "reviewkd.keras",
                                       compile=False)
    (loaded,) = restored.terms
    assert isinstance(loaded, ft_keras.ReviewKD)
    assert (loaded.teacher_layers, loaded.student_layers, loaded.weight,
            loaded.warmup_epochs, loaded.max_mid_channels) == (
        TAPS, TAPS, 5.0, 0.0, 512)
    assert all(isinstance(f, ft_keras.AttentionBasedFusion)
               for f in loaded.fusions)
    for a, b in zip(loaded.weights, term.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x, _ = digits(64, start=1000)
    np.testing.assert_array_equal(full_loss(restored, loaded, x),
                                  full_loss(distiller, term, x))
    np.testing.assert_array_equal(restored.predict(x, verbose=0),
                                  distiller.predict(x, verbose=0))


def test_warmup_factor_at_each_epochs_first_step_through_fit():
    distiller, term = reviewkd_distiller(warmup_epochs=4)
    distiller.compile(keras.optimizers.SGD(0.0))  # the maps stay the same
    x, y = digits(32)
    first = []

    class FirstBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                first.append(float(logs["reviewkd_loss"]))

    distiller.fit(x, y, batch_size=32, epochs=5, shuffle=False, verbose=0,
                  callbacks=[FirstBatch()])
    # In training mode the fusions' BatchNorm uses the batch's statistics.
    maps = distiller(x, training=True)["terms"]["reviewkd"]
    full = float(np.mean(np.asarray(term.compute_loss(
        maps["teacher"], maps["student"], epoch=np.float32(1e6)))))
    np.testing.assert_allclose(first, [0.25 * full, 0.5 * full, 0.75 * full,
                                       full, full], rtol=1e-5)
