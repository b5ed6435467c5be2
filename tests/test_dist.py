"""DIST: its loss and gradient against DIST's own formula in PyTorch, its
batch-level value inside a Distiller, and the term on real data."""

import numpy as np
import pytest
import tensorflow as tf

import keras

import ft_keras
from ft_keras.terms import dist as ft_dist

from _digits import digits
from _digits import digits_net
from _digits import snapshot
from _digits import trained_teacher


def logits(n=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    teacher = (3.0 * rng.normal(size=(n, classes))).astype("float32")
    student = (2.0 * rng.normal(size=(n, classes))).astype("float32")
    return teacher, student


def torch_dist(z_s, z_t, beta, gamma, tau):
    """`DIST.forward` of hunto/image_classification_sota's
    `lib/models/losses/dist_kd.py` (DIST_KD's classification submodule),
    with its `cosine_similarity`, `pearson_correlation`,
    `inter_class_relation` and `intra_class_relation`, as written there."""

    def cosine_similarity(a, b, eps=1e-8):
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    def pearson_correlation(a, b, eps=1e-8):
        return cosine_similarity(a - a.mean(1).unsqueeze(1),
                                 b - b.mean(1).unsqueeze(1), eps)

    def inter_class_relation(y_s, y_t):
        return 1 - pearson_correlation(y_s, y_t).mean()

    def intra_class_relation(y_s, y_t):
        return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))

    y_s = (z_s / tau).softmax(dim=1)
    y_t = (z_t / tau).softmax(dim=1)
    inter_loss = tau**2 * inter_class_relation(y_s, y_t)
    intra_loss = tau**2 * intra_class_relation(y_s, y_t)
    return beta * inter_loss + gamma * intra_loss


@pytest.mark.parametrize("beta, gamma, temperature", [
    (1.0, 1.0, 1.0),  # DIST's defaults (`kd: dist`)
    (1.0, 1.0, 4.0),  # its CIFAR-100 setting (`kd: dist_t4`)
    (2.0, 0.5, 2.0),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_gradient_match_dists_code(beta, gamma, temperature, seed):
    torch = pytest.importorskip("torch")
    teacher, student = logits(seed=seed)
    s = torch.tensor(student, requires_grad=True)
    expected = torch_dist(s, torch.tensor(teacher), beta, gamma, temperature)
    expected.backward()
    expected_grad = s.grad.numpy()

    term = ft_keras.DIST(beta, gamma, temperature)
    variable = tf.Variable(student)
    with tf.GradientTape() as tape:
        loss = term.compute_loss([tf.constant(teacher)], [variable])
    grad = tape.gradient(loss, variable).numpy()
    assert loss.shape == ()  # one value per batch
    # Measured (5 seeds, 3 settings): <= 6.4e-8 relative (loss), 3.1e-7 of
    # the largest gradient element.
    np.testing.assert_allclose(float(loss), float(expected.detach()), rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5,
                               atol=1e-5 * np.abs(expected_grad).max())
    assert np.abs(expected_grad).max() > 1e-4


def test_equal_predictions_cost_nothing_and_relations_add_up():
    teacher, _ = logits()
    # Zero but for the cosine's 1e-8 in the denominator (1e-5 here, T^2 = 16).
    assert 0 <= float(ft_dist.dist_loss(teacher, teacher, 1.0, 1.0, 4.0)) < 1e-4
    teacher, student = logits(seed=3)
    inter = float(ft_dist.dist_loss(teacher, student, 1.0, 0.0, 2.0))
    intra = float(ft_dist.dist_loss(teacher, student, 0.0, 1.0, 2.0))
    both = float(ft_dist.dist_loss(teacher, student, 3.0, 0.5, 2.0))
    np.testing.assert_allclose(both, 3.0 * inter + 0.5 * intra, rtol=1e-5)
    assert inter > 0.1 and intra > 0.1


@pytest.mark.parametrize("kwargs, match", [
    ({"beta": -1.0}, r"`beta` .*Received: beta=-1.0"),
    ({"gamma": "x"}, r"`gamma` .*Received: gamma='x'"),
    ({"temperature": 0}, r"`temperature` must be a positive number.*"
                         r"Received: temperature=0"),
    ({"temperature": True}, r"Received: temperature=True"),
])
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ft_keras.DIST(**kwargs)


def test_dist_trains_the_student_on_digits_and_round_trips(tmp_path):
    teacher = trained_teacher()
    keras.utils.set_random_seed(0)  # fit's shuffling: one run, not a draw
    student = digits_net("student", 8, seed=2)
    distiller = ft_keras.Distiller(
        teacher, student, [ft_keras.DIST(temperature=4.0, weight=2.0)])
    # lr 0.01: DIST's T^2 = 16 and weight 2 make its gradient 32x a CE-sized
    # one.
    distiller.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      metrics=["accuracy"])
    teacher_before = snapshot(teacher)
    x, y = digits(256)
    student_before = [np.array(v) for v in student.trainable_weights]
    history = distiller.fit(x, y, batch_size=32, epochs=6, verbose=0).history
    assert set(history) == {"loss", "ce_loss", "dist_loss", "accuracy"}
    # The student learns from the teacher. Measured over 4 shuffling seeds,
    # oneDNN's kernels and Eigen's: the cross-entropy falls to 0.30-0.40 of
    # its first epoch's, DIST's value to 0.13-0.21, accuracy ends 59-75%.
    ce, dist = history["ce_loss"], history["dist_loss"]
    assert ce[-1] < 0.6 * ce[0] and dist[-1] < 0.5 * dist[0], (ce, dist)
    assert history["accuracy"][-1] > 0.4, history["accuracy"]
    assert all(not np.array_equal(a, np.array(v))
               for a, v in zip(student_before, student.trainable_weights))
    for a, b in zip(teacher_before, snapshot(teacher)):
        np.testing.assert_array_equal(a, b)
    # The Distiller reports the batch's value as the term's loss.
    x_test, y_test = digits(64, start=1000)
    result = distiller.evaluate(x_test, y_test, batch_size=64, verbose=0,
                                return_dict=True)
    expected = ft_dist.dist_loss(teacher(x_test, training=False),
                                 student(x_test, training=False), 1.0, 1.0, 4.0)
    np.testing.assert_allclose(result["dist_loss"], float(expected), rtol=1e-4)
    np.testing.assert_allclose(
        result["loss"], result["ce_loss"] + 2.0 * result["dist_loss"], rtol=1e-5)
    distiller.save(tmp_path / "dist.keras")
    restored = keras.models.load_model(tmp_path / "dist.keras", compile=False)
    (term,) = restored.terms
    assert isinstance(term, ft_keras.DIST)
    assert (term.beta, term.gamma, term.temperature, term.weight) == (
        1.0, 1.0, 4.0, 2.0)
    np.testing.assert_array_equal(restored.predict(x_test, verbose=0),
                                  distiller.predict(x_test, verbose=0))
