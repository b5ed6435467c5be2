"""DecoupledKD: mdistiller's formula and gradient (against PyTorch), its
warm-up by epoch through `fit` and a resumed `fit`, its labels, and the
term inside a Distiller on real data."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras

import ft_keras

from _digits import digits
from _digits import digits_net
from _digits import snapshot
from _digits import trained_teacher

ALPHA, BETA, TEMPERATURE = 1.0, 8.0, 4.0


def logits_and_labels(n=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    teacher = (3.0 * rng.normal(size=(n, classes))).astype("float32")
    student = (2.0 * rng.normal(size=(n, classes))).astype("float32")
    labels = (np.arange(n) % classes).astype("int32")
    return teacher, student, labels


def torch_dkd(logits_student, logits_teacher, target, alpha, beta, temperature):
    """mdistiller's `dkd_loss` (`mdistiller/distillers/DKD.py` at commit
    a08d46f, with its `_get_gt_mask`, `_get_other_mask` and `cat_mask`),
    as it is written there."""
    import torch
    import torch.nn.functional as F

    target = target.reshape(-1)
    gt_mask = torch.zeros_like(logits_student).scatter_(
        1, target.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(logits_student).scatter_(
        1, target.unsqueeze(1), 0).bool()

    def cat_mask(t, mask1, mask2):
        t1 = (t * mask1).sum(dim=1, keepdims=True)
        t2 = (t * mask2).sum(1, keepdims=True)
        return torch.cat([t1, t2], dim=1)

    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # size_average's deprecation
        tckd_loss = (F.kl_div(log_pred_student, pred_teacher, size_average=False)
                     * (temperature**2) / target.shape[0])
        pred_teacher_part2 = F.softmax(
            logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
        log_pred_student_part2 = F.log_softmax(
            logits_student / temperature - 1000.0 * gt_mask, dim=1)
        nckd_loss = (F.kl_div(log_pred_student_part2, pred_teacher_part2,
                              size_average=False)
                     * (temperature**2) / target.shape[0])
    return alpha * tckd_loss + beta * nckd_loss


def torch_value_and_gradient(teacher, student, labels, alpha=ALPHA, beta=BETA,
                             temperature=TEMPERATURE):
    torch = pytest.importorskip("torch")
    s = torch.tensor(student, requires_grad=True)
    loss = torch_dkd(s, torch.tensor(teacher), torch.tensor(labels, dtype=torch.int64),
                     alpha, beta, temperature)
    loss.backward()
    return float(loss.detach()), s.grad.numpy()


def keras_value_and_gradient(term, teacher, student, labels, epoch):
    """The batch's loss (the mean of the per-example values, as the
    Distiller reduces a term) and its gradient with respect to the
    student's logits."""
    s = tf.Variable(student)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(term.compute_loss(
            [tf.constant(teacher)], [s], labels=tf.constant(labels, tf.float32),
            epoch=tf.constant(epoch, tf.float32)))
    return float(loss), tape.gradient(loss, s).numpy()


@pytest.mark.parametrize("alpha, beta, temperature", [
    (1.0, 8.0, 4.0),  # mdistiller's defaults
    (1.0, 2.0, 4.0),  # its resnet56 -> resnet20
    (0.5, 6.0, 2.0),
])
def test_loss_and_gradient_match_mdistillers_dkd_loss(alpha, beta, temperature):
    teacher, student, labels = logits_and_labels()
    expected, expected_grad = torch_value_and_gradient(
        teacher, student, labels, alpha, beta, temperature)
    term = ft_keras.DecoupledKD(alpha, beta, temperature, warmup_epochs=20)
    # Epoch 20: the warm-up is over (factor 1).
    loss, grad = keras_value_and_gradient(term, teacher, student, labels, 20.0)
    # Measured (5 seeds, 3 settings): <= 3.2e-7 relative (loss), 2.4e-7 of
    # the largest gradient element.
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5,
                               atol=1e-6 * np.abs(expected_grad).max())
    assert np.abs(expected_grad).max() > 1e-3


def test_tckd_and_nckd_each_match_pytorch():
    teacher, student, labels = logits_and_labels(seed=3)
    tckd, nckd = ft_keras.losses.decoupled_kd(teacher, student, labels, 4.0)
    only_tckd = torch_value_and_gradient(teacher, student, labels, 1.0, 0.0)[0]
    only_nckd = torch_value_and_gradient(teacher, student, labels, 0.0, 1.0)[0]
    np.testing.assert_allclose(np.mean(tckd), only_tckd, rtol=1e-5)
    np.testing.assert_allclose(np.mean(nckd), only_nckd, rtol=1e-5)
    assert np.all(np.asarray(tckd) >= 0) and np.all(np.asarray(nckd) >= 0)


def test_one_hot_and_soft_labels_use_the_argmax_class():
    teacher, student, labels = logits_and_labels(seed=1)
    term = ft_keras.DecoupledKD(warmup_epochs=0)
    one_hot = np.eye(10, dtype="float32")[labels]
    # MixUp-like: 0.7 of the label's class, 0.3 of the next one.
    soft = 0.7 * one_hot + 0.3 * np.roll(one_hot, 1, axis=1)
    values = [np.asarray(term.compute_loss([teacher], [student], labels=y,
                                           epoch=1.0))
              for y in (labels.astype("float32"), one_hot, soft)]
    np.testing.assert_array_equal(values[1], values[0])
    np.testing.assert_array_equal(values[2], values[0])


def test_labels_of_another_shape_are_rejected():
    teacher, student, labels = logits_and_labels()
    term = ft_keras.DecoupledKD()
    with pytest.raises(ValueError, match=r"Received labels of shape \(16, 1\)"):
        term.compute_loss([teacher], [student], labels=labels[:, None] * 1.0,
                          epoch=1.0)


def test_warmup_factor_is_epoch_over_warmup_epochs_then_one():
    term = ft_keras.DecoupledKD(warmup_epochs=20)
    factors = [float(term.warmup(keras.ops.convert_to_tensor(float(e))))
               for e in (1, 2, 10, 20, 21, 240)]
    np.testing.assert_allclose(factors, [0.05, 0.1, 0.5, 1.0, 1.0, 1.0],
                               rtol=1e-7)
    no_warmup = ft_keras.DecoupledKD(warmup_epochs=0)
    assert float(no_warmup.warmup(keras.ops.convert_to_tensor(1.0))) == 1.0


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": -1.0}, "Received: alpha=-1.0"),
    ({"beta": "8"}, "Received: beta='8'"),
    ({"temperature": 0},
     r"positive number \(4.0 in mdistiller\). Received: temperature=0"),
    ({"warmup_epochs": -5}, "20 in mdistiller, 0 for none"),
    ({"weight": -1}, "Received: weight=-1"),
])
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ft_keras.DecoupledKD(**kwargs)


# ----------------------------------------------------------------------
# Inside a Distiller: labels and epochs come from `fit`.


def dkd_distiller(warmup_epochs=3, teacher=None, student=None):
    """A Distiller on DKD whose student has no BatchNorm: its training and
    inference passes are the same."""
    teacher = teacher or trained_teacher()
    student = student or digits_net("student", 8, batch_norm=False, seed=2)
    return ft_keras.Distiller(
        teacher, student, [ft_keras.DecoupledKD(warmup_epochs=warmup_epochs)])


class EpochStartLogs(keras.callbacks.Callback):
    """The logs of each epoch's first batch: that batch's values alone."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.logs.append({k: float(v) for k, v in logs.items()})


def full_dkd(distiller, x, y):
    """DKD at factor 1 of a batch, from the logits the Distiller hands the
    term (the teacher's with its BatchNorm folded) in inference mode."""
    term = distiller.terms[0]
    maps = distiller(x, training=False)["terms"][term.name]
    return float(np.mean(term.compute_loss(
        maps["teacher"], maps["student"], labels=y * 1.0, epoch=1e6)))


def test_warmup_factor_at_the_first_steps_of_each_epoch_through_fit():
    distiller = dkd_distiller(warmup_epochs=3)
    assert float(distiller.epoch) == 1.0
    distiller.compile(keras.optimizers.SGD(0.0))  # the logits stay put
    x, y = digits(32)
    base = full_dkd(distiller, x[:16], y[:16])
    logs = EpochStartLogs()
    distiller.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0,
                  callbacks=[logs])
    got = [entry["dkd_loss"] / base for entry in logs.logs]
    # Epochs 1 and 2 of the warm-up, its last epoch, and after it.
    np.testing.assert_allclose(got, [1 / 3, 2 / 3, 1.0, 1.0, 1.0], rtol=1e-5)
    for entry in logs.logs:
        np.testing.assert_allclose(
            entry["loss"], entry["ce_loss"] + entry["dkd_loss"], rtol=1e-6)
    assert float(distiller.epoch) == 5.0


def test_warmup_is_constant_within_an_epoch():
    distiller = dkd_distiller(warmup_epochs=4)
    distiller.compile(keras.optimizers.SGD(0.0))
    x, y = digits(48)
    history = distiller.fit(x, y, batch_size=16, epochs=2, shuffle=False,
                            verbose=0).history
    # An epoch's logged value is the mean of its three batches' values.
    whole = full_dkd(distiller, x, y)
    np.testing.assert_allclose(history["dkd_loss"], [whole / 4, whole / 2],
                               rtol=1e-5)


def test_warmup_continues_when_fit_resumes_at_initial_epoch(tmp_path):
    x, y = digits(64)

    def fresh():
        distiller = dkd_distiller(warmup_epochs=4)
        distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
        return distiller

    uninterrupted = fresh()
    initial = [w.copy() for w in uninterrupted.get_weights()]
    logs = EpochStartLogs()
    expected = uninterrupted.fit(x, y, batch_size=16, epochs=4, shuffle=False,
                                 verbose=0, callbacks=[logs]).history
    # The same run, killed after epoch 2: its `.keras` file (weights and
    # optimizer state) is loaded into a new process' Distiller, whose
    # `fit` resumes at `initial_epoch=2`.
    first = fresh()
    first.set_weights(initial)
    first.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    first.save(tmp_path / "epoch2.keras")
    resumed = keras.models.load_model(tmp_path / "epoch2.keras")
    assert float(resumed.epoch) == 2.0
    assert int(resumed.optimizer.iterations) == 8
    resumed_logs = EpochStartLogs()
    history = resumed.fit(x, y, batch_size=16, epochs=4, initial_epoch=2,
                          shuffle=False, verbose=0,
                          callbacks=[resumed_logs]).history
    # Epochs 3 and 4 (factors 3/4 and 1) are those of the uninterrupted run.
    for key in ("loss", "ce_loss", "dkd_loss"):
        np.testing.assert_allclose(history[key], expected[key][2:],
                                   rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(resumed_logs.logs[0]["dkd_loss"],
                               logs.logs[2]["dkd_loss"], rtol=1e-5)
    for a, b in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(resumed.epoch) == 4.0


def test_dkd_trains_the_student_on_digits_and_round_trips(tmp_path):
    teacher = trained_teacher()
    keras.utils.set_random_seed(0)  # fit's shuffling: one run, not a draw
    student = digits_net("student", 8, seed=2)
    distiller = ft_keras.Distiller(
        teacher, student,
        [ft_keras.DecoupledKD(alpha=1.0, beta=2.0, warmup_epochs=2)])
    distiller.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                      metrics=["accuracy"])
    teacher_before = snapshot(teacher)
    student_before = [np.array(v) for v in student.trainable_weights]
    x, y = digits(256)
    history = distiller.fit(x, y, batch_size=32, epochs=6, verbose=0).history
    assert set(history) == {"loss", "ce_loss", "dkd_loss", "accuracy"}
    # The student learns from the teacher. Measured over 4 shuffling seeds:
    # the cross-entropy falls to 0.69-0.86 of its first epoch's, DKD at its
    # full factor (epochs 2-6) to 0.53-0.75, accuracy ends 23-40%.
    ce, dkd = history["ce_loss"], history["dkd_loss"]
    assert ce[-1] < 0.95 * ce[0] and dkd[-1] < 0.9 * dkd[1], (ce, dkd)
    assert history["accuracy"][-1] > 0.15, history["accuracy"]
    for a, b in zip(teacher_before, snapshot(teacher)):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, np.array(v))
               for a, v in zip(student_before, student.trainable_weights))
    # Evaluation after the warm-up: CE + DKD at the full factor.
    x_test, y_test = digits(64, start=1000)
    result = distiller.evaluate(x_test, y_test, batch_size=64, verbose=0,
                                return_dict=True)
    np.testing.assert_allclose(result["dkd_loss"],
                               full_dkd(distiller, x_test, y_test), rtol=1e-5)
    np.testing.assert_allclose(result["loss"],
                               result["ce_loss"] + result["dkd_loss"], rtol=1e-6)
    distiller.save(tmp_path / "dkd.keras")
    restored = keras.models.load_model(tmp_path / "dkd.keras", compile=False)
    (term,) = restored.terms
    assert isinstance(term, ft_keras.DecoupledKD)
    assert (term.alpha, term.beta, term.temperature, term.warmup_epochs,
            float(restored.epoch)) == (1.0, 2.0, 4.0, 2.0, 6.0)
    np.testing.assert_array_equal(restored.predict(x_test, verbose=0),
                                  distiller.predict(x_test, verbose=0))


def test_one_hot_labels_train_as_their_classes():
    x, y = digits(32)
    results = []
    for labels in (y, np.eye(10, dtype="float32")[y]):
        distiller = dkd_distiller(warmup_epochs=0)
        distiller.compile(keras.optimizers.SGD(0.0))
        results.append(distiller.evaluate(x, labels, batch_size=32, verbose=0,
                                          return_dict=True))
    np.testing.assert_allclose(results[1]["dkd_loss"], results[0]["dkd_loss"],
                               rtol=1e-6)


def test_evaluating_without_labels_names_the_term():
    distiller = dkd_distiller()
    distiller.compile("sgd", loss=lambda y, logits: keras.ops.mean(logits))
    x, _ = digits(16)
    with pytest.raises(ValueError, match="The term 'dkd' needs the labels"):
        distiller.evaluate(x, batch_size=16, verbose=0)


def test_two_replicas_report_the_single_devices_warmup():
    x, y = digits(32)
    histories = []
    # Reduction through one device, not collective ops, whose instance keys
    # a later MirroredStrategy of the process would reuse (test_data.py).
    mirrored = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"],
        cross_device_ops=tf.distribute.ReductionToOneDevice())
    for strategy in (tf.distribute.get_strategy(), mirrored):
        with strategy.scope():
            distiller = dkd_distiller(warmup_epochs=2)
            distiller.compile(keras.optimizers.SGD(0.0))
        histories.append(distiller.fit(x, y, batch_size=16, epochs=3,
                                       shuffle=False, verbose=0).history)
        assert float(distiller.epoch.numpy()) == 3.0
    np.testing.assert_allclose(histories[1]["dkd_loss"],
                               histories[0]["dkd_loss"], rtol=1e-5)
    ratios = np.array(histories[0]["dkd_loss"]) / histories[0]["dkd_loss"][1]
    np.testing.assert_allclose(ratios, [0.5, 1.0, 1.0], rtol=1e-5)
