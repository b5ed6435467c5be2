"""CRD: RepDistiller's loss, gradient, memory update and constants
(against PyTorch), its negatives, the indices through a Distiller, two
replicas against one, a run killed mid-epoch and resumed, and the term
trained on real data."""

import numpy as np
import pytest
import tensorflow as tf

import keras

import ft_keras
from ft_keras import checkpoint as ft_checkpoint

from _digits import digits
from _digits import digits_net
from _digits import snapshot
from _digits import trained_teacher
from _interrupt import Killed
from _interrupt import StopAt

# Fixed tensors: 8 examples of a 40-example training set, 12 student and 20
# teacher features, embeddings of 16, 10 negatives.
N_DATA, BATCH, S_DIM, T_DIM, FEAT, K = 40, 8, 12, 20, 16, 10
T, M = 0.07, 0.5


def torch_crd_step(f_s, f_t, heads, memory_v1, memory_v2, params, y, idx):
    """One step of RepDistiller's `CRDLoss.forward(f_s, f_t, idx,
    contrast_idx)` (HobbitLong/RepDistiller crd/criterion.py and
    crd/memory.py), as written there with `y` the batch's indices and `idx`
    the contrast indices: its loss, and the buffers it updates in place."""
    import torch

    def embed(x, weight, bias):  # Embed: Linear, then Normalize(2)
        x = x.view(x.shape[0], -1)
        x = torch.nn.functional.linear(x, weight, bias)
        norm = x.pow(2).sum(1, keepdim=True).pow(1. / 2)
        return x.div(norm)

    v1 = embed(f_s, *heads[:2])  # f_s = self.embed_s(f_s)
    v2 = embed(f_t, *heads[2:])  # f_t = self.embed_t(f_t)

    # ContrastMemory.forward(v1, v2, y, idx)
    K = int(params[0].item())
    T = params[1].item()
    Z_v1 = params[2].item()
    Z_v2 = params[3].item()
    momentum = params[4].item()
    batchSize = v1.size(0)
    outputSize = memory_v1.size(0)
    inputSize = memory_v1.size(1)
    weight_v1 = torch.index_select(memory_v1, 0, idx.view(-1)).detach()
    weight_v1 = weight_v1.view(batchSize, K + 1, inputSize)
    out_v2 = torch.bmm(weight_v1, v2.view(batchSize, inputSize, 1))
    out_v2 = torch.exp(torch.div(out_v2, T))
    weight_v2 = torch.index_select(memory_v2, 0, idx.view(-1)).detach()
    weight_v2 = weight_v2.view(batchSize, K + 1, inputSize)
    out_v1 = torch.bmm(weight_v2, v1.view(batchSize, inputSize, 1))
    out_v1 = torch.exp(torch.div(out_v1, T))
    if Z_v1 < 0:
        params[2] = out_v1.mean() * outputSize
        Z_v1 = params[2].clone().detach().item()
    if Z_v2 < 0:
        params[3] = out_v2.mean() * outputSize
        Z_v2 = params[3].clone().detach().item()
    out_v1 = torch.div(out_v1, Z_v1).contiguous()
    out_v2 = torch.div(out_v2, Z_v2).contiguous()
    with torch.no_grad():
        l_pos = torch.index_select(memory_v1, 0, y.view(-1))
        l_pos.mul_(momentum)
        l_pos.add_(torch.mul(v1, 1 - momentum))
        l_norm = l_pos.pow(2).sum(1, keepdim=True).pow(0.5)
        updated_v1 = l_pos.div(l_norm)
        memory_v1.index_copy_(0, y, updated_v1)
        ab_pos = torch.index_select(memory_v2, 0, y.view(-1))
        ab_pos.mul_(momentum)
        ab_pos.add_(torch.mul(v2, 1 - momentum))
        ab_norm = ab_pos.pow(2).sum(1, keepdim=True).pow(0.5)
        updated_v2 = ab_pos.div(ab_norm)
        memory_v2.index_copy_(0, y, updated_v2)

    def contrast_loss(x, n_data):  # ContrastLoss.forward
        eps = 1e-7
        bsz = x.shape[0]
        m = x.size(1) - 1
        Pn = 1 / float(n_data)
        P_pos = x.select(1, 0)
        log_D1 = torch.div(P_pos, P_pos.add(m * Pn + eps)).log_()
        P_neg = x.narrow(1, 1, m)
        log_D0 = torch.div(P_neg.clone().fill_(m * Pn),
                           P_neg.add(m * Pn + eps)).log_()
        return - (log_D1.sum(0) + log_D0.view(-1, 1).sum(0)) / bsz

    return contrast_loss(out_v1, outputSize) + contrast_loss(out_v2, outputSize)


def fixed_batch(seed):
    """Features, indices (distinct) and contrast indices (the index first,
    then K fixed negatives) of one batch."""
    rng = np.random.default_rng(seed)
    f_s = rng.normal(size=(BATCH, S_DIM)).astype("float32")
    f_t = rng.normal(size=(BATCH, T_DIM)).astype("float32")
    y = rng.permutation(N_DATA)[:BATCH].astype("int64")
    negatives = rng.integers(0, N_DATA, size=(BATCH, K))
    return f_s, f_t, y, np.concatenate([y[:, None], negatives], 1)


def small_crd(**kwargs):
    keras.utils.set_random_seed(0)  # the heads' initial weights
    kwargs = dict(dict(num_examples=N_DATA, teacher_layer="t", student_layer="s",
                       feature_dim=FEAT, num_negatives=K, negatives="all",
                       temperature=T, momentum=M, seed=0), **kwargs)
    term = ft_keras.CRD(**kwargs)
    term.connect([(None, T_DIM)], [(None, S_DIM)])
    return term


def heads_of(term):
    return [term.embed_student.kernel, term.embed_student.bias,
            term.embed_teacher.kernel, term.embed_teacher.bias]


def test_two_steps_match_repdistillers_crd_loss_and_memory():
    torch = pytest.importorskip("torch")
    term = small_crd()
    heads = [torch.tensor(np.array(w).T.copy() if w.ndim == 2 else np.array(w),
                          requires_grad=True) for w in heads_of(term)]
    memory_v1 = torch.tensor(np.array(term.memory_student))
    memory_v2 = torch.tensor(np.array(term.memory_teacher))
    # RepDistiller's buffer: [K, T, Z_v1, Z_v2, momentum], float32.
    params = torch.tensor([K, T, -1, -1, M])
    for step in range(2):  # the first sets Z, the second uses it
        f_s, f_t, y, contrast = fixed_batch(step)
        ts = torch.tensor(f_s, requires_grad=True)
        for h in heads:
            h.grad = None
        expected = torch_crd_step(ts, torch.tensor(f_t), heads, memory_v1,
                                  memory_v2, params, torch.tensor(y),
                                  torch.tensor(contrast))
        expected.backward()
        expected_grads = [ts.grad.numpy()] + [
            h.grad.numpy().T if h.ndim == 2 else h.grad.numpy() for h in heads]

        student = tf.Variable(f_s)
        with tf.GradientTape() as tape:
            teacher_out, student_out = term(
                [tf.constant(f_t)], [student], training=True, indices=y,
                contrast_indices=contrast)
            loss = tf.reduce_mean(term.compute_loss(teacher_out, student_out))
        grads = tape.gradient(loss, [student] + heads_of(term))
        # Measured (5 seeds x 3 steps, oneDNN on and off): the loss within
        # 1.4e-7 relative, each gradient (student features, both heads)
        # within 7.2e-7 of its largest element, Z within 7.2e-7 relative
        # (a mean of 88 scores summed in another order), the memories
        # within 1.5e-7.
        np.testing.assert_allclose(float(loss), expected.item(), rtol=2e-6)
        for got, want in zip(grads, expected_grads):
            np.testing.assert_allclose(np.array(got), want, rtol=0,
                                       atol=4e-6 * np.abs(want).max())
            assert np.abs(want).max() > 1e-4
        np.testing.assert_allclose(np.array(term.normalization),
                                   params[2:4].detach().numpy(), rtol=5e-6)
        for memory, reference in ((term.memory_student, memory_v1),
                                  (term.memory_teacher, memory_v2)):
            np.testing.assert_allclose(np.array(memory), reference.numpy(),
                                       rtol=0, atol=1e-6)


def test_evaluation_mode_updates_neither_memory_nor_z():
    term = small_crd()
    f_s, f_t, y, contrast = fixed_batch(0)
    before = [np.array(v) for v in (term.memory_student, term.memory_teacher,
                                    term.normalization)]
    teacher_out, student_out = term([f_t], [f_s], training=False, indices=y,
                                    contrast_indices=contrast)
    for a, v in zip(before, (term.memory_student, term.memory_teacher,
                             term.normalization)):
        np.testing.assert_array_equal(a, np.array(v))
    # Z from the batch, not kept: the same scores as in training.
    trained = small_crd()
    expected = trained([f_t], [f_s], training=True, indices=y,
                       contrast_indices=contrast)
    np.testing.assert_allclose(np.array(teacher_out[0]),
                               np.array(expected[0][0]), rtol=1e-6)
    np.testing.assert_allclose(np.array(student_out[0]),
                               np.array(expected[1][0]), rtol=1e-6)
    assert term([f_t], [f_s], training=False) == ([], [])
    assert float(term.compute_loss([], [])) == 0.0


# ----------------------------------------------------------------------
# Negatives.


def draw(labels, indices, k):
    term = ft_keras.CRD(num_examples=len(labels), teacher_layer="t",
                        student_layer="s", feature_dim=4, num_negatives=k,
                        num_classes=int(max(labels)) + 1, seed=0)
    term.set_labels(labels)
    return np.array(term.sample_negatives(np.asarray(indices, "int32")))


def test_negatives_are_a_uniform_subset_of_the_other_classes():
    labels = np.arange(30) % 3  # 10 examples a class
    indices = np.tile(np.arange(30), 40)  # 1200 rows
    drawn = draw(labels, indices, k=5)
    assert drawn.shape == (1200, 6)
    np.testing.assert_array_equal(drawn[:, 0], indices)
    negatives = drawn[:, 1:]
    assert np.all(labels[negatives] != labels[indices][:, None])
    assert all(len(set(row)) == 5 for row in negatives)  # no replacement
    for c in range(3):
        rows = negatives[labels[indices] == c]
        counts = np.bincount(rows.ravel(), minlength=30)[labels != c]
        # 400 rows x 5 over 20 examples: 100 each (binomial sd ~8.7).
        assert counts.min() > 65 and counts.max() < 135, counts


def test_negatives_are_drawn_with_replacement_where_k_exceeds_them():
    # Class 0 has 20 examples (10 of other classes), classes 1 and 2 have
    # 5 (25 of other classes): with K = 12, class 0 draws with
    # replacement, the others without, as RepDistiller's
    # `replace = self.k > len(self.cls_negative[target])`.
    labels = np.array([0] * 20 + [1] * 5 + [2] * 5)
    indices = np.tile(np.arange(30), 40)
    negatives = draw(labels, indices, k=12)[:, 1:]
    assert np.all(labels[negatives] != labels[indices][:, None])
    rows_0 = negatives[labels[indices] == 0]
    assert any(len(set(row)) < 12 for row in rows_0)
    assert all(len(set(row)) == 12 for row in negatives[labels[indices] != 0])
    counts = np.bincount(rows_0.ravel(), minlength=30)[20:]
    # 800 rows x 12 over 10 examples: 960 each (sd ~29).
    assert counts.min() > 840 and counts.max() < 1080, counts
    # K above every class's negatives: all with replacement, k > n too.
    negatives = draw(np.arange(6) % 2, np.arange(6), k=8)[:, 1:]
    assert np.all(negatives % 2 != np.arange(6)[:, None] % 2)


def test_negatives_all_draw_uniformly_over_every_example():
    term = small_crd(num_negatives=20)
    drawn = np.array(term.sample_negatives(np.zeros(500, "int32")))
    assert drawn.shape == (500, 21) and np.all(drawn[:, 0] == 0)
    counts = np.bincount(drawn[:, 1:].ravel(), minlength=N_DATA)
    # 10000 draws over 40 examples: 250 each (sd ~16).
    assert counts.min() > 180 and counts.max() < 320, counts


def test_set_labels_checks_and_is_needed_for_other_classes():
    term = ft_keras.CRD(num_examples=6, teacher_layer="t", student_layer="s",
                        feature_dim=4, num_negatives=2, num_classes=3)
    with pytest.raises(ValueError, match=r"term.set_labels\(labels\)"):
        term.sample_negatives(np.arange(2, dtype="int32"))
    with pytest.raises(ValueError, match=r"each of the 6 training examples "
                                         r"its class in \[0, 3\).*shape \(5,\)"):
        term.set_labels([0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="from 0 to 3"):
        term.set_labels([0, 1, 2, 0, 1, 3])
    term.set_labels(np.eye(3)[[0, 1, 2, 2, 1, 0]])  # one-hot rows
    np.testing.assert_array_equal(np.array(term.labels), [0, 1, 2, 2, 1, 0])
    np.testing.assert_array_equal(np.array(term.class_order), [0, 5, 1, 4, 2, 3])
    with pytest.raises(ValueError, match="over all examples"):
        small_crd().set_labels(np.zeros(N_DATA))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_examples": 0}, "Received: num_examples=0"),
    ({"num_examples": 5.0}, "training set's size"),
    ({"feature_dim": -1}, r"\(128 in RepDistiller\). Received: feature_dim=-1"),
    ({"num_negatives": "16384"}, "Received: num_negatives='16384'"),
    ({"temperature": 0}, r"\(0.07 in RepDistiller\). Received: temperature=0"),
    ({"momentum": 1.0}, "below 1.*Received: momentum=1.0"),
    ({"momentum": -0.5}, "Received: momentum=-0.5"),
    ({"negatives": "exact"}, r"\('other_classes', 'all'\).*mode='exact'"),
    ({"num_classes": None}, r"needed for negatives='other_classes'\)\. "
                            "Received: num_classes=None"),
    ({"num_classes": 1}, "at least 2 classes"),
    ({"teacher_layer": None}, "'avg_pool'.*Received: teacher_layer=None"),
    ({"weight": -1.0}, "Received: weight=-1.0"),
    ({"seed": 1.5}, "Received: seed=1.5"),
])
def test_bad_arguments_are_rejected(kwargs, match):
    arguments = dict(num_examples=10, num_classes=2, feature_dim=4,
                     num_negatives=2)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ft_keras.CRD(**arguments)


def test_taps_of_unknown_size_are_rejected():
    term = ft_keras.CRD(num_examples=10, num_classes=2, feature_dim=4,
                        num_negatives=2)
    with pytest.raises(ValueError, match=r"student tap 'avg_pool' gives a "
                                         r"tensor of shape \(None, None\)"):
        term.connect([(None, 8)], [(None, None)])


# ----------------------------------------------------------------------
# Inside a Distiller.


def indexed(x, start=0):
    return {"images": x, "index": np.arange(start, start + len(x))}


def crd_distiller(n, student=None, **kwargs):
    arguments = dict(num_examples=n, teacher_layer="pool", student_layer="pool",
                     feature_dim=16, num_negatives=32, num_classes=10, seed=0)
    arguments.update(kwargs)
    term = ft_keras.CRD(**arguments)
    term.set_labels(digits(n)[1])
    student = student or digits_net("student", 8, seed=2)
    return ft_keras.Distiller(trained_teacher(), student, [term])


def test_fit_without_indices_names_the_term():
    distiller = crd_distiller(32)
    distiller.compile(keras.optimizers.SGD(0.1))
    x, y = digits(32)
    with pytest.raises(ValueError, match="The term 'crd' needs each example's "
                                         "index in the training set"):
        distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"keys 'images' \(the images\) and "
                                         r"'index'.*\['images', 'indices'\]"):
        distiller.fit({"images": x, "indices": np.arange(32)}, y,
                      batch_size=16, epochs=1, verbose=0)


def test_evaluate_without_indices_leaves_the_term_out_and_with_them_updates_nothing():
    distiller = crd_distiller(64)
    distiller.compile(keras.optimizers.SGD(0.1))
    x, y = digits(64)
    distiller.fit(indexed(x), y, batch_size=32, epochs=1, verbose=0)
    term = distiller.terms[0]
    state = snapshot(term)
    held_out = distiller.evaluate(*digits(64, start=1000), batch_size=32,
                                  verbose=0, return_dict=True)
    assert held_out["crd_loss"] == 0.0
    np.testing.assert_allclose(held_out["loss"], held_out["ce_loss"], rtol=1e-6)
    seen = distiller.evaluate(indexed(x), y, batch_size=32, verbose=0,
                              return_dict=True)
    assert seen["crd_loss"] > 1.0
    np.testing.assert_allclose(seen["loss"], seen["ce_loss"] + 0.8 * seen["crd_loss"],
                               rtol=1e-5)
    for a, b in zip(state, snapshot(term)):
        np.testing.assert_array_equal(a, b)
    assert distiller.predict(x, verbose=0).shape == (64, 10)
    np.testing.assert_array_equal(distiller.predict(indexed(x), verbose=0),
                                  distiller.predict(x, verbose=0))


def test_crd_trains_the_student_on_digits_and_round_trips(tmp_path):
    teacher = trained_teacher()
    keras.utils.set_random_seed(0)  # fit's shuffling: one run, not a draw
    x, y = digits(256)
    term = ft_keras.CRD(num_examples=256, teacher_layer="pool",
                        student_layer="pool", feature_dim=16, num_negatives=64,
                        num_classes=10, seed=0)
    term.set_labels(y)
    student = digits_net("student", 8, seed=2)
    distiller = ft_keras.Distiller(teacher, student, [term])
    distiller.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                      metrics=["accuracy"])
    teacher_before = snapshot(teacher)
    trained_before = [np.array(v) for v in distiller.trainable_weights]
    memory_before = np.array(term.memory_student)
    history = distiller.fit(indexed(x), y, batch_size=32, epochs=6,
                            verbose=0).history
    assert set(history) == {"loss", "ce_loss", "crd_loss", "accuracy"}
    # Measured over 6 shuffling seeds, oneDNN on and off: CRD falls to
    # 0.49-0.55 of its first epoch's, the cross-entropy to 0.83-0.95,
    # accuracy ends 14-34%.
    ce, crd = history["ce_loss"], history["crd_loss"]
    assert crd[-1] < 0.65 * crd[0] and ce[-1] < 0.98 * ce[0], (ce, crd)
    assert history["accuracy"][-1] > 0.12, history["accuracy"]
    for a, b in zip(teacher_before, snapshot(teacher)):
        np.testing.assert_array_equal(a, b)
    # The student and both heads (the teacher's too) are trained.
    assert [w.path for w in distiller.trainable_weights][-4:] == [
        "embed_student/kernel", "embed_student/bias",
        "embed_teacher/kernel", "embed_teacher/bias"]
    assert all(not np.array_equal(a, np.array(v))
               for a, v in zip(trained_before, distiller.trainable_weights))
    # Every row was updated (6 epochs over each example) and is a unit vector.
    memory = np.array(term.memory_student)
    assert not np.any(np.all(memory == memory_before, axis=1))
    np.testing.assert_allclose(np.linalg.norm(memory, axis=1), 1.0, rtol=1e-5)
    assert np.all(np.array(term.normalization) > 0)

    distiller.save(tmp_path / "crd.keras")
    restored = keras.models.load_model(tmp_path / "crd.keras")
    (loaded,) = restored.terms
    assert isinstance(loaded, ft_keras.CRD)
    assert loaded.get_config() == term.get_config()
    for name in ("memory_student", "memory_teacher", "normalization",
                 "labels", "class_order", "class_start", "class_count"):
        np.testing.assert_array_equal(np.array(getattr(loaded, name)),
                                      np.array(getattr(term, name)), name)
    for a, b in zip(restored.get_weights(), distiller.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(restored.predict(x[:64], verbose=0),
                                  distiller.predict(x[:64], verbose=0))
    # It trains on, its labels known.
    restored.fit(indexed(x[:32]), y[:32], batch_size=32, epochs=1, verbose=0)


def replicated_fit(strategy, n, learning_rate, epochs):
    """History, weights and seed state of a CRD Distiller fit on the first
    `n` digits in batches of 16, in order, under `strategy`."""
    x, y = digits(n)
    with strategy.scope():
        keras.utils.set_random_seed(1)  # the heads' initial weights
        distiller = crd_distiller(n, digits_net("student", 8, batch_norm=False,
                                                seed=2))
        distiller.compile(keras.optimizers.SGD(learning_rate, momentum=0.9))
    history = distiller.fit(indexed(x), y, batch_size=16, epochs=epochs,
                            shuffle=False, verbose=0).history
    term = distiller.terms[0]
    if strategy.num_replicas_in_sync > 1:  # the same state on every replica
        for variable in (term.memory_student, term.memory_teacher,
                         term.normalization, term.seed_generator.state):
            a, b = strategy.experimental_local_results(variable.value)
            np.testing.assert_array_equal(np.array(a), np.array(b))
    return (history, distiller.get_weights(),
            np.array(term.seed_generator.state))


def test_two_replicas_train_as_one_on_the_global_batch():
    # Reduction through one device, not collective ops, whose instance keys
    # a later MirroredStrategy of the process would reuse (test_data.py).
    mirrored = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"],
        cross_device_ops=tf.distribute.ReductionToOneDevice())
    one_replica = tf.distribute.get_strategy()
    # Trained: 2 epochs of 4 batches of 16 (8 a replica).
    (one, weights_one, seed_one), (two, weights_two, seed_two) = [
        replicated_fit(strategy, 64, 0.1, 2) for strategy in (one_replica, mirrored)]
    for key in ("loss", "ce_loss", "crd_loss"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, err_msg=key)
    # Student, heads, memories, Z: equal to float32 rounding.
    for a, b in zip(weights_two, weights_one):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(seed_two, seed_one)
    # A last batch of 7 split 4 + 3: the memory takes all 7 rows. (Keras
    # weights an uneven batch's gradient by replica, not by example, so the
    # weights stay put here: learning rate 0.)
    (one, weights_one, _), (two, weights_two, _) = [
        replicated_fit(strategy, 55, 0.0, 1) for strategy in (one_replica, mirrored)]
    np.testing.assert_allclose(two["crd_loss"], one["crd_loss"], rtol=1e-5)
    for a, b in zip(weights_two, weights_one):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_run_killed_mid_epoch_resumes_with_the_same_weights_and_memory(
        tmp_path, replicas):
    x, y = digits(64)
    data = tf.data.Dataset.from_tensor_slices((indexed(x), y)).batch(16)
    strategy = tf.distribute.get_strategy() if replicas == 1 else (
        tf.distribute.MirroredStrategy(  # as test_two_replicas_train_as_one...
            ["/cpu:0", "/cpu:1"],
            cross_device_ops=tf.distribute.ReductionToOneDevice()))

    def fresh():
        with strategy.scope():
            keras.utils.set_random_seed(1)
            distiller = crd_distiller(64)
            distiller.compile(keras.optimizers.SGD(0.1, momentum=0.9))
        return distiller

    def checkpoint():
        return ft_checkpoint.ResumableCheckpoint(
            tmp_path / "ckpt", save_freq=1, delete_on_end=False)

    straight = fresh()
    straight.fit(data, epochs=2, verbose=0)
    first = fresh()
    with pytest.raises(Killed):
        first.fit(data, epochs=2, verbose=0,
                  callbacks=[checkpoint(), StopAt(1, 2)])
    second = fresh()
    resumed = checkpoint()
    assert resumed.position == ft_checkpoint.Position(1, 2)
    second.fit(data.skip(2), initial_epoch=1, epochs=2, verbose=0,
               callbacks=[resumed])  # the rest of epoch 2
    for a, b in zip(straight.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    terms = straight.terms[0], second.terms[0]
    for name in ("memory_student", "memory_teacher", "normalization"):
        np.testing.assert_array_equal(*[np.array(getattr(t, name)) for t in terms])
    np.testing.assert_array_equal(*[np.array(t.seed_generator.state) for t in terms])
    for variable in (second.terms[0].memory_student, second.terms[0].normalization):
        copies = strategy.experimental_local_results(variable.value)
        assert len(copies) == replicas  # each replica's copy, restored
        for copy in copies[1:]:
            np.testing.assert_array_equal(np.array(copy), np.array(copies[0]))


def test_gin_reference_file_gives_repdistillers_setting(monkeypatch):
    import pathlib

    import gin

    from ft_keras import cli
    from ft_keras import config
    from ft_keras import term_configs

    monkeypatch.chdir(pathlib.Path(__file__).resolve().parent.parent)
    gin.clear_config()
    try:
        cli.parse_config(
            ["gin/peers/repdistiller_crd_cifar100_resnet56_resnet20.gin"], [])
        settings = config.from_gin()
    finally:
        gin.clear_config()
    distillation = settings.distillation
    assert distillation.label == "CRD" and term_configs.LABELS["crd"] == "CRD"
    assert distillation.student_loss_weight == 1.0
    # CIFAR-100's train split, as the runner reads it (`for_data`).
    split = term_configs.TrainingSet(50000, 100, np.arange(50000) % 100)
    (term,) = [t.for_data(split).build(None, None) for t in distillation.terms]
    assert isinstance(term, ft_keras.CRD)
    assert (term.teacher_layer, term.student_layer, term.num_examples,
            term.num_classes, term.feature_dim, term.num_negatives,
            term.temperature, term.momentum, term.weight, term.negatives) == (
        "avg_pool", "avg_pool", 50000, 100, 128, 16384, 0.07, 0.5, 0.8,
        "other_classes")
