"""FactorTransferLoss and reconstruction losses against NumPy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import ft_keras
from ft_keras import losses


def np_normalize(x):
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def np_avg_pool(x, size):
    n, h, w, c = x.shape
    ph, pw = h // size[0], w // size[1]
    return x.reshape(n, size[0], ph, size[1], pw, c).mean(axis=(2, 4))


def np_ft_loss(teacher, student, p, factor, p_form="norm"):
    if teacher.shape[1:3] != student.shape[1:3]:
        if teacher.shape[1] > student.shape[1]:
            teacher = np_avg_pool(teacher, student.shape[1:3])
        else:
            student = np_avg_pool(student, teacher.shape[1:3])
    if factor == "attention":
        teacher = (teacher ** 2).mean(axis=-1)
        student = (student ** 2).mean(axis=-1)
    diff = np_normalize(student) - np_normalize(teacher)
    if p == 1:
        return np.abs(diff).mean()
    if p_form == "mean":
        return (diff ** 2).mean()
    return np.linalg.norm(diff, axis=1).mean()


rng = np.random.default_rng(0)


@pytest.mark.parametrize("p, p_form", [(1, "norm"), (2, "norm"), (2, "mean")])
@pytest.mark.parametrize("factor", ["full", "attention"])
@pytest.mark.parametrize(
    "teacher_shape, student_shape",
    [((4, 8, 8, 16), (4, 8, 8, 16)),
     ((4, 8, 8, 16), (4, 4, 4, 16)),
     ((4, 2, 2, 16), (4, 8, 8, 16))],
)
def test_factor_transfer_loss_matches_numpy(p, p_form, factor, teacher_shape,
                                            student_shape):
    if factor == "attention":  # channels may differ in attention mode
        student_shape = student_shape[:3] + (5,)
    teacher = rng.normal(size=teacher_shape).astype(np.float32)
    student = rng.normal(size=student_shape).astype(np.float32)
    loss = ft_keras.FactorTransferLoss(p=p, factor=factor, p_form=p_form)
    got = float(loss(teacher, student))
    np.testing.assert_allclose(
        got, np_ft_loss(teacher, student, p, factor, p_form), rtol=1e-5)


def test_p1_is_mean_over_all_elements_not_per_example_sum():
    teacher = np.zeros((2, 1, 1, 4), np.float32)
    teacher[:, 0, 0, 0] = 1.0
    student = np.zeros((2, 1, 1, 4), np.float32)
    student[:, 0, 0, 1] = 1.0
    # Normalised factors are unit vectors e0 and e1: |diff| sums to 2 over
    # 4 elements per example.
    assert float(ft_keras.FactorTransferLoss(p=1)(teacher, student)) == 0.5
    np.testing.assert_allclose(
        float(ft_keras.FactorTransferLoss(p=2)(teacher, student)), np.sqrt(2),
        rtol=1e-6)


def np_repdistiller_ft(f_s, f_t, p1=2, p2=2):
    """RepDistiller's distiller_zoo/FT.py on NCHW maps, in NumPy:
    factor(f) = normalize(f.pow(p1).mean(1).view(N, -1)); p2 = 2 gives
    (factor(f_s) - factor(f_t)).pow(2).mean()."""
    def factor(f):
        a = (f.astype(np.float64) ** p1).mean(axis=1).reshape(f.shape[0], -1)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    d = factor(f_s) - factor(f_t)
    return np.abs(d).mean() if p2 == 1 else (d ** p2).mean()


@pytest.mark.parametrize("p", [1, 2])
def test_mean_form_is_repdistillers_factor_transfer(p):
    teacher = rng.normal(size=(4, 8, 8, 16)).astype(np.float32)
    student = rng.normal(size=(4, 8, 8, 6)).astype(np.float32)
    expected = np_repdistiller_ft(student.transpose(0, 3, 1, 2),
                                  teacher.transpose(0, 3, 1, 2), p2=p)
    loss = ft_keras.FactorTransferLoss(p=p, factor="attention", p_form="mean")
    np.testing.assert_allclose(float(loss(teacher, student)), expected,
                               rtol=1e-5)


def test_p2_forms_differ_by_the_square_and_the_element_count():
    teacher = np.zeros((2, 1, 1, 4), np.float32)
    teacher[:, 0, 0, 0] = 1.0
    student = np.zeros((2, 1, 1, 4), np.float32)
    student[:, 0, 0, 1] = 1.0
    # Unit vectors e0, e1: the norm of the difference is sqrt(2); the mean
    # of its squares over 4 elements is 2 / 4.
    norm = float(ft_keras.FactorTransferLoss(p=2)(teacher, student))
    mean = float(ft_keras.FactorTransferLoss(p=2, p_form="mean")(teacher, student))
    np.testing.assert_allclose(norm, np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(mean, 0.5, rtol=1e-6)


def test_p1_is_the_same_in_both_forms():
    teacher = rng.normal(size=(3, 4, 4, 8)).astype(np.float32)
    student = rng.normal(size=(3, 4, 4, 8)).astype(np.float32)
    assert float(ft_keras.FactorTransferLoss(p=1)(teacher, student)) == float(
        ft_keras.FactorTransferLoss(p=1, p_form="mean")(teacher, student))


def test_bad_p_form_is_rejected():
    with pytest.raises(ValueError, match="Received: p_form='sum'"):
        ft_keras.FactorTransferLoss(p=2, p_form="sum")


def test_loss_is_scale_invariant_and_zero_for_equal_factors():
    x = rng.normal(size=(3, 4, 4, 8)).astype(np.float32)
    loss = ft_keras.FactorTransferLoss()
    assert float(loss(x, 7.0 * x)) == pytest.approx(0.0, abs=1e-7)


def test_float16_factors_give_float32_loss():
    x = rng.normal(size=(2, 4, 4, 8)).astype(np.float16)
    y = rng.normal(size=(2, 4, 4, 8)).astype(np.float16)
    value = ft_keras.FactorTransferLoss()(x, y)
    assert value.dtype == tf.float32
    np.testing.assert_allclose(
        float(value), np_ft_loss(x.astype(np.float32), y.astype(np.float32), 1,
                                 "full"), rtol=1e-3)


@pytest.mark.parametrize("p", [0, 3, "1", True, 1.5])
def test_bad_p_is_rejected(p):
    with pytest.raises(ValueError, match=r"`p` must be 1 or 2. Received: p="):
        ft_keras.FactorTransferLoss(p=p)


def test_bad_factor_is_rejected():
    with pytest.raises(ValueError, match="factor='spatial'"):
        ft_keras.FactorTransferLoss(factor="spatial")


def test_channel_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 8\).*\(2, 4, 4, 6\)"):
        ft_keras.FactorTransferLoss()(
            np.ones((2, 4, 4, 8), np.float32), np.ones((2, 4, 4, 6), np.float32))


def test_non_integer_spatial_ratio_is_rejected():
    with pytest.raises(ValueError, match="integer multiple"):
        ft_keras.FactorTransferLoss()(
            np.ones((2, 6, 6, 8), np.float32), np.ones((2, 4, 4, 8), np.float32))


@pytest.mark.parametrize(
    "name, reference",
    [("l1", lambda t, r: np.abs(r - t).mean()),
     ("mse", lambda t, r: ((r - t) ** 2).mean()),
     ("normalized_l2",
      lambda t, r: ((np_normalize(r) - np_normalize(t)) ** 2).sum(1).mean())],
)
def test_reconstruction_losses_match_numpy(name, reference):
    target = rng.normal(size=(3, 4, 4, 8)).astype(np.float32)
    recon = rng.normal(size=(3, 4, 4, 8)).astype(np.float32)
    got = float(losses.reconstruction_loss(name)(target, recon))
    np.testing.assert_allclose(got, reference(target, recon), rtol=1e-5)


def test_unknown_reconstruction_is_rejected():
    with pytest.raises(ValueError, match="reconstruction='l3'"):
        losses.reconstruction_loss("l3")


def test_loss_under_mirrored_strategy_is_divided_by_replicas():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    teacher = rng.normal(size=(4, 4, 4, 8)).astype(np.float32)
    student = rng.normal(size=(4, 4, 4, 8)).astype(np.float32)
    loss = ft_keras.FactorTransferLoss()

    @tf.function
    def replica_fn(t, s):
        return loss(t, s)

    per_replica = strategy.run(replica_fn, args=(teacher, student))
    # Each replica's value is its share of the global batch loss, so the sum
    # over replicas (what gradients see) is the loss of the whole batch.
    total = strategy.reduce("SUM", per_replica, axis=None)
    np.testing.assert_allclose(
        float(total), np_ft_loss(teacher, student, 1, "full"), rtol=1e-5)


def test_config_round_trip():
    loss = ft_keras.FactorTransferLoss(p=2, factor="attention", name="ft",
                                       p_form="mean")
    clone = ft_keras.FactorTransferLoss.from_config(loss.get_config())
    assert (clone.p, clone.factor, clone.name, clone.p_form) == (
        2, "attention", "ft", "mean")


def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_matches_numpy(temperature):
    teacher = rng.normal(size=(6, 10)).astype(np.float32) * 3
    student = rng.normal(size=(6, 10)).astype(np.float32) * 3
    log_pt = np_log_softmax(teacher.astype(np.float64) / temperature)
    log_ps = np_log_softmax(student.astype(np.float64) / temperature)
    expected = (np.exp(log_pt) * (log_pt - log_ps)).sum(1).mean() * temperature**2
    got = float(losses.KnowledgeDistillationLoss(temperature)(teacher, student))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_kd_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature=0"):
        losses.KnowledgeDistillationLoss(temperature=0)


@pytest.mark.parametrize("student_shape", [(3, 8, 8, 5), (3, 4, 4, 5)])
def test_attention_transfer_loss_matches_numpy(student_shape):
    teacher = rng.normal(size=(3, 8, 8, 16)).astype(np.float32)
    student = rng.normal(size=student_shape).astype(np.float32)
    t = teacher if student_shape[1] == 8 else np_avg_pool(teacher, (4, 4))
    at_t = np_normalize((t.astype(np.float64) ** 2).mean(-1))
    at_s = np_normalize((student.astype(np.float64) ** 2).mean(-1))
    expected = ((at_s - at_t) ** 2).mean()
    got = float(losses.AttentionTransferLoss()(teacher, student))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("name, keras_loss", [
    ("l1", "MeanAbsoluteError"), ("mse", "MeanSquaredError")])
def test_l1_and_mse_reconstructions_are_keras_losses(name, keras_loss):
    loss = losses.reconstruction_loss(name)
    assert type(loss) is getattr(keras.losses, keras_loss)
    assert loss.name == name


@pytest.mark.parametrize("name", losses.RECONSTRUCTIONS)
def test_reconstruction_losses_compute_in_float32(name):
    target = rng.normal(size=(3, 4, 4, 8)).astype(np.float16)
    recon = rng.normal(size=(3, 4, 4, 8)).astype(np.float16)
    value = losses.reconstruction_loss(name)(target, recon)
    assert value.dtype == tf.float32
    exact = losses.reconstruction_loss(name)(target.astype(np.float32),
                                             recon.astype(np.float32))
    np.testing.assert_allclose(float(value), float(exact), rtol=1e-6)


def test_row_normalization_equals_keras_normalize():
    x = rng.normal(size=(8, 300)).astype(np.float32)
    x[3] = 0.0
    np.testing.assert_allclose(
        losses._l2_normalize_rows(x),
        keras.ops.normalize(x, axis=-1, order=2, epsilon=1e-12),
        rtol=1e-6, atol=1e-7)


def _zero_student_expectations(teacher):
    """The value and gradient of each loss at an all-zero student map, by
    hand: a zero row's normalised factor is `x / 1e-12` (the clamp), so
    the gradient of the full factor is that of the loss in the normalised
    factor times 1e12; the attention maps square the map, whose gradient
    at 0 is 0."""
    n = teacher.shape[0]
    t_hat = np_normalize(teacher)  # (n, D)
    d = t_hat.shape[1]
    att_hat = np_normalize((teacher.astype(np.float64) ** 2).mean(axis=-1))
    zeros = np.zeros(teacher.shape)
    return {
        # mean |0 - t_hat|; d/ds = sign(s_hat - t_hat) / (n * D) / 1e-12.
        "ft": (np.abs(t_hat).mean(),
               (-np.sign(t_hat) / (n * d * 1e-12)).reshape(teacher.shape)),
        "ft_attention": (np.abs(att_hat).mean(), zeros),
        # The mean of the squared unit attention map: 1 / (H * W).
        "at": ((att_hat ** 2).mean(), zeros),
        # sum (0 - t_hat)^2 = 1 per example; d/ds = 2 (s_hat - t_hat) / n / 1e-12.
        "normalized_l2": (1.0,
                          (-2.0 * t_hat / (n * 1e-12)).reshape(teacher.shape)),
    }


@pytest.mark.parametrize("name, loss", [
    ("ft", ft_keras.FactorTransferLoss()),
    ("ft_attention", ft_keras.FactorTransferLoss(factor="attention")),
    ("at", losses.AttentionTransferLoss()),
    ("normalized_l2", losses.NormalizedL2Loss())])
def test_an_all_zero_map_gets_finite_gradients(name, loss):
    # tests/test_backends.py checks the JAX and PyTorch backends, where
    # `keras.ops.normalize` gives NaN here.
    teacher_np = rng.normal(size=(2, 4, 4, 8)).astype(np.float32)
    teacher = tf.constant(teacher_np)
    student = tf.Variable(np.zeros((2, 4, 4, 8), np.float32))
    with tf.GradientTape() as tape:
        value = loss(teacher, student)
    gradient = tape.gradient(value, student).numpy()
    expected_value, expected_gradient = _zero_student_expectations(
        teacher_np)[name]
    assert np.all(np.isfinite(gradient))
    # float32 rounding of the normalisation: measured <= 1.2e-7 relative
    # (20 random teachers).
    np.testing.assert_allclose(float(value), expected_value, rtol=1e-6)
    # The 1e12-scaled gradients: measured <= 1.6e-7 relative.
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-6, atol=0)


def test_classification_crossentropy_takes_class_indices_and_mixed_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 10)).astype(np.float32)
    indices = rng.integers(0, 10, 6).astype(np.int32)
    # Soft labels as MixUp makes them: two classes, weights summing to 1.
    lam = rng.uniform(size=(6, 1)).astype(np.float32)
    soft = lam * np.eye(10, dtype=np.float32)[indices] + (1 - lam) * np.eye(
        10, dtype=np.float32)[indices[::-1]]
    loss = losses.ClassificationCrossentropy()
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(float(loss(indices, logits)),
                               -log_p[np.arange(6), indices].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(loss(soft, logits)),
                               -(soft * log_p).sum(axis=1).mean(), rtol=1e-6)
    # The class-index case is Keras' own loss, bit for bit.
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert float(loss(indices, logits)) == float(sparse(indices, logits))
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, losses.ClassificationCrossentropy)
    assert restored.from_logits is True


@pytest.mark.parametrize("k", [1, 5])
def test_top_k_accuracy_counts_mixed_labels_as_their_main_class(k):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(64, 10)).astype(np.float32)
    indices = rng.integers(0, 10, 64).astype(np.int32)
    soft = 0.7 * np.eye(10, dtype=np.float32)[indices] + 0.3 * np.eye(
        10, dtype=np.float32)[(indices + 1) % 10]
    expected = np.mean([i in np.argsort(-row)[:k]
                        for i, row in zip(indices, logits)])
    assert 0 < expected < 1
    for labels in (indices, soft):
        metric = ft_keras.metrics.TopKAccuracy(k=k)
        metric.update_state(labels, logits)
        np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(restored, ft_keras.metrics.TopKAccuracy)
    assert restored.k == k
