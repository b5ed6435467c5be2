"""The core (layers, losses, distiller, models) on the JAX and PyTorch
backends: it imports no TensorFlow, trains with `fit`, keeps the frozen parts
frozen and computes the same numbers as NumPy and as TensorFlow.

Each backend runs in one subprocess with `KERAS_BACKEND` set (this file is
its script: `python tests/test_backends.py measure REPORT.json WORKDIR
WEIGHTS`), which measures everything once, evaluates a distiller whose
weights this (TensorFlow) process saved, and writes a JSON report; the
tests below check one behaviour each on that report. A backend whose package is not installed is
skipped (`pip install -e ".[backends]"`).
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from _counting import count_calls

BACKENDS = ("jax", "torch")
HERE = pathlib.Path(__file__).resolve()
ROOT = HERE.parent.parent

BATCH = 16
BETA = 50.0
KD_WEIGHT = 0.5
TEMPERATURE = 4.0
AT_WEIGHT = 100.0
AT_LAYERS = ["stage2", "stage3"]
DKD_WARMUP = 2
FITNETS_WEIGHT = 100.0
DIST_WEIGHT = 1.0
# ReviewKD on the last of mdistiller's taps of the digits-size networks
# (4x4 and 2x2 maps and the pooled feature: fusions with and without a
# residual, resized 1x1 -> 2x2 -> 4x4, hcl's 2x2 and 1x1 levels; the 8x8
# stage1 tap adds ~3 s of JAX compilation for no other rule); CRD on the
# pooled features. CRD_LABELS gives each of the 2 * BATCH
# training examples one of CRD_CLASSES classes, as many each, so with
# CRD_NEGATIVES = the other classes' examples every example's negatives
# are all of those (a random order of one set, whichever random numbers
# the backend draws).
REVIEWKD_TAPS = ["stage2", "stage3", "avg_pool"]
REVIEWKD_WEIGHT = 1.0
REVIEWKD_WARMUP = 2
CRD_WEIGHT = 0.8
CRD_FEATURE_DIM = 16
CRD_TEMPERATURE = 0.07
CRD_CLASSES = 4
CRD_LABELS = np.random.default_rng(3).permutation(
    np.arange(2 * BATCH) % CRD_CLASSES).astype("int32")
CRD_NEGATIVES = 2 * BATCH - 2 * BATCH // CRD_CLASSES


# ----------------------------------------------------------------------
# NumPy references.


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_ce(logits, y):
    return float(-np_log_softmax(logits)[np.arange(len(y)), y].mean())


def np_unit_rows(x):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def np_ft_p1(teacher_factor, student_factor):
    return float(np.abs(np_unit_rows(student_factor)
                        - np_unit_rows(teacher_factor)).mean())


def np_kd(teacher_logits, student_logits, temperature):
    log_pt = np_log_softmax(np.asarray(teacher_logits) / temperature)
    log_ps = np_log_softmax(np.asarray(student_logits) / temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1)
    return float(kl.mean() * temperature**2)


def np_dkd(teacher_logits, student_logits, labels, alpha, beta, temperature):
    """mdistiller's `dkd_loss` in NumPy (float64): TCKD on the binary
    target / non-target distributions, NCKD on the logits with the target's
    pushed down by 1000, each KL times T^2, averaged over the batch."""
    t = np.asarray(teacher_logits, np.float64) / temperature
    s = np.asarray(student_logits, np.float64) / temperature
    gt = np.eye(t.shape[1])[labels]

    def binary(logits):
        p = np.exp(np_log_softmax(logits))
        return np.stack([(p * gt).sum(1), (p * (1 - gt)).sum(1)], 1)

    def kl(log_p, log_q):
        p = np.exp(log_p)
        return np.where(p > 0, p * (log_p - log_q), 0.0).sum(1)

    tckd = kl(np.log(binary(t)), np.log(binary(s)))
    nckd = kl(np_log_softmax(t - 1000 * gt), np_log_softmax(s - 1000 * gt))
    return float((alpha * tckd + beta * nckd).mean() * temperature**2)


def np_dist(teacher_logits, student_logits, temperature):
    """DIST's loss of one batch in NumPy (float64), beta = gamma = 1: one
    minus the mean Pearson correlation of the softened predictions per
    example (inter) and per class (intra), times T^2."""
    p_t = np.exp(np_log_softmax(np.asarray(teacher_logits) / temperature))
    p_s = np.exp(np_log_softmax(np.asarray(student_logits) / temperature))

    def relation(a, b):
        a = a - a.mean(1, keepdims=True)
        b = b - b.mean(1, keepdims=True)
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1)
                                   * np.linalg.norm(b, axis=1) + 1e-8)
        return 1.0 - cosine.mean()

    return float(temperature**2 * (relation(p_s, p_t)
                                   + relation(p_s.T, p_t.T)))


def np_resize_nearest(x, size):
    """PyTorch's `F.interpolate(mode="nearest")` of a channels-last map:
    output `i` takes input `floor(i * in / out)`."""
    for axis, out in zip((1, 2), size):
        n = x.shape[axis]
        x = np.take(x, np.minimum(np.arange(out) * n // out, n - 1), axis=axis)
    return x


def np_adaptive_avg_pool(x, size):
    """PyTorch's `F.adaptive_avg_pool2d(x, size)`, channels-last: window `i`
    spans `[floor(i * in / size), ceil((i + 1) * in / size))`."""
    def bounds(n, i):
        return i * n // size, -(-(i + 1) * n // size)

    h, w = x.shape[1:3]
    return np.stack([np.stack([
        x[:, slice(*bounds(h, i)), slice(*bounds(w, j))].mean(axis=(1, 2))
        for j in range(size)], 1) for i in range(size)], 1)


def np_hcl(teacher_maps, student_maps):
    """mdistiller's `hcl_loss` in NumPy (float64): per map pair the MSE,
    plus 1/2, 1/4, 1/8 times that of the 4x4, 2x2, 1x1 adaptive average
    pools smaller than the map, over the sum of the weights."""
    total = 0.0
    for t, s in zip(teacher_maps, student_maps):
        t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
        loss, cnt, tot = np.mean((s - t) ** 2), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= s.shape[1]:
                continue
            cnt /= 2.0
            loss += cnt * np.mean((np_adaptive_avg_pool(s, level)
                                   - np_adaptive_avg_pool(t, level)) ** 2)
            tot += cnt
        total += loss / tot
    return float(total)


def np_conv_same(x, kernel):
    """A stride-1 "same" convolution (cross-correlation) of a channels-last
    map with a `(kh, kw, in, out)` kernel."""
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2),
                        ((kw - 1) // 2, kw // 2), (0, 0)))
    return sum(np.einsum("nhwc,co->nhwo", padded[:, a:a + h, b:b + w],
                         kernel[a, b]) for a in range(kh) for b in range(kw))


def np_batch_norm(x, gamma, beta, mean, variance, epsilon=1e-5):
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def np_abf(weights, x, residual):
    """mdistiller's `ABF.forward` in inference mode, channels-last, of
    `weights` (`_fusion_weights`): `(output, residual')`."""
    x = np_batch_norm(np_conv_same(x, weights["conv1"]), *weights["bn1"])
    if weights["att"] is not None:
        kernel, bias = weights["att"]
        y = np_resize_nearest(residual, x.shape[1:3])
        z = np_conv_same(np.concatenate([x, y], -1), kernel) + bias
        z = 1.0 / (1.0 + np.exp(-z))
        x = x * z[..., 0:1] + y * z[..., 1:2]
    x = np_resize_nearest(x, weights["output_size"])
    return np_batch_norm(np_conv_same(x, weights["conv2"]), *weights["bn2"]), x


def np_reviewkd(fusions, teacher_maps, student_maps):
    """ReviewKD's `hcl_loss` of the teacher's maps and the student's fused
    through the chain of ABFs from the deepest (mdistiller's
    `ReviewKD.forward_train`), in NumPy (float64); rank-2 taps as 1x1."""
    def as_map(m):
        m = np.asarray(m, np.float64)
        return m[:, None, None, :] if m.ndim == 2 else m

    student_maps = [as_map(m) for m in student_maps]
    out, residual = np_abf(fusions[-1], student_maps[-1], None)
    fused = [out]
    for i in range(len(student_maps) - 2, -1, -1):
        out, residual = np_abf(fusions[i], student_maps[i], residual)
        fused.insert(0, out)
    return np_hcl([as_map(m) for m in teacher_maps], fused)


def np_crd(teacher_features, student_features, heads, memories, z, indices,
           labels, temperature, num_examples):
    """RepDistiller's `CRDLoss` of a batch in NumPy (float64), batch mean:
    `Embed` (linear, then over the L2 norm) of each feature; each example's
    contrast set its own index then every example of another class; the
    scores `exp(<memory row, embedding> / T) / Z` of the student's
    embedding against the teacher's memory and of the teacher's against
    the student's; `ContrastLoss` (eps 1e-7) of each, summed."""
    def embed(features, kernel, bias):
        v = np.asarray(features, np.float64).reshape(len(features), -1)
        v = v @ kernel + bias
        return v / np.sqrt((v ** 2).sum(1, keepdims=True))

    def contrast_loss(scores):
        noise = (scores.shape[1] - 1) / num_examples
        return -(np.log(scores[:, 0] / (scores[:, 0] + noise + 1e-7))
                 + np.log(noise / (scores[:, 1:] + noise + 1e-7)).sum(1))

    v_t = embed(teacher_features, *heads["teacher"])
    v_s = embed(student_features, *heads["student"])
    contrast = np.stack([np.concatenate(
        [[i], np.flatnonzero(labels != labels[i])]) for i in indices])
    scores_s = np.exp(np.einsum("bkd,bd->bk", memories["teacher"][contrast],
                                v_s) / temperature) / z[0]
    scores_t = np.exp(np.einsum("bkd,bd->bk", memories["student"][contrast],
                                v_t) / temperature) / z[1]
    return float((contrast_loss(scores_s) + contrast_loss(scores_t)).mean())


def np_at(teacher_map, student_map):
    def attention(m):
        return np_unit_rows((np.asarray(m, np.float64) ** 2).mean(axis=-1))
    return float(((attention(student_map) - attention(teacher_map)) ** 2).mean())


# ----------------------------------------------------------------------
# What the subprocesses run (and the TensorFlow side, in this process).


def data(n=BATCH, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=(n,)).astype("int32")
    return x, y


def networks(weight_decay=0.0):
    """Digits-sized teacher (WRN-16-2) and student (WRN-10-1)."""
    from ft_keras import models

    kwargs = dict(num_classes=10, input_shape=(8, 8, 1),
                  weight_decay=weight_decay)
    return (models.get("wrn16_2", model_name="teacher", **kwargs),
            models.get("wrn10_1", model_name="student", **kwargs))


def ft_distiller(teacher, student, paraphraser, regularizer=None, kd=False):
    """A Distiller on a FactorTransfer term (and a KD term with `kd`);
    `distiller.translator` is the FT term's translator."""
    import ft_keras

    translator = ft_keras.Translator(64, use_bn=True,
                                     kernel_regularizer=regularizer)
    terms = [ft_keras.FactorTransfer(paraphraser, translator, "stage3",
                                     "stage3", beta=BETA)]
    if kd:
        terms.append(ft_keras.KnowledgeDistillation(TEMPERATURE,
                                                    weight=KD_WEIGHT))
    distiller = ft_keras.Distiller(teacher, student, terms)
    distiller.translator = translator
    return distiller


def cross_backend_distiller():
    """The same Distiller on every backend: its weights are loaded from a
    file, and its FT+KD losses compared."""
    import ft_keras

    teacher, student = networks()
    return ft_distiller(teacher, student, ft_keras.Paraphraser(0.5, use_bn=True),
                        kd=True)


def _evaluate(model, x, y=None):
    return {k: float(v) for k, v in model.evaluate(
        x, y, batch_size=BATCH, verbose=0, return_dict=True).items()}


def _numpy(value):
    import keras

    return keras.ops.convert_to_numpy(value)


def _snapshot(obj):
    return [_numpy(v) for v in obj.weights]


def _unchanged(before, obj):
    after = _snapshot(obj)
    return len(before) == len(after) and all(
        np.array_equal(a, b) for a, b in zip(before, after))


def _all_changed(before_trainable, obj):
    return all(not np.array_equal(a, _numpy(v))
               for a, v in zip(before_trainable, obj.trainable_weights))


def _taps(model, names, x, training=False):
    """The model's logits and maps at `names`, by a plain functional model."""
    import keras

    extractor = keras.Model(
        model.input, [model.output] + [model.get_layer(n).output for n in names])
    outputs = extractor(x, training=training)
    if not isinstance(outputs, (list, tuple)):  # a one-element list comes back bare
        outputs = [outputs]
    return [_numpy(t) for t in outputs]


def _regularization(*objs):
    return float(sum(float(_numpy(v.regularizer(v.value)))
                     for obj in objs for v in obj.trainable_weights
                     if v.regularizer is not None))


def _frozen_regularizers(*objs):
    return float(sum(float(_numpy(v.regularizer(v.value)))
                     for obj in objs for v in obj.weights
                     if getattr(v, "regularizer", None) is not None))


def _zero_row_inputs():
    """A teacher map and a student map whose second example is all zero."""
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(2, 4, 4, 8)).astype("float32")
    student = rng.normal(size=(2, 4, 4, 8)).astype("float32")
    student[1] = 0.0
    return teacher, student


def _zero_row_losses():
    import ft_keras

    return {"ft": ft_keras.FactorTransferLoss(p=1),
            "ft_attention": ft_keras.FactorTransferLoss(factor="attention"),
            "at": ft_keras.losses.AttentionTransferLoss()}


def _zero_row_gradients():
    """Gradients of FT and AT with respect to a student map with an
    all-zero example, as lists."""
    import keras

    teacher, student = _zero_row_inputs()
    gradients = {}
    for name, loss in _zero_row_losses().items():
        if keras.config.backend() == "jax":
            import jax

            grad = jax.grad(lambda s: loss(teacher, s))(student)
        else:
            import torch

            s = torch.tensor(student, requires_grad=True)
            loss(teacher, s).backward()
            grad = s.grad
        gradients[name] = _numpy(grad).tolist()
    return gradients


def _first_batch_logs():
    """A callback that keeps the logs of the first training batch: the
    values of that batch alone."""
    import keras

    class FirstBatchLogs(keras.callbacks.Callback):
        logs = None

        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                self.logs = {k: float(v) for k, v in logs.items()}

    return FirstBatchLogs()


def _restoring_weights(*objs):
    """Runs the block, then puts back every weight of `objs` (a training
    pass outside `fit` moves the BatchNorm statistics)."""
    import contextlib

    @contextlib.contextmanager
    def block():
        saved = [obj.get_weights() for obj in objs]
        try:
            yield
        finally:
            for obj, weights in zip(objs, saved):
                obj.set_weights(weights)

    return block()


def _dkd_fitnets(x, y, x_train, y_train, workdir):
    """DKD (warm-up over DKD_WARMUP epochs), FitNets at stage2 and DIST in
    one Distiller: the warm-up factor of each epoch's first batch, training,
    evaluation against NumPy and the `.keras` round trip."""
    import keras

    import ft_keras

    teacher, student = networks()
    dkd = ft_keras.DecoupledKD(warmup_epochs=DKD_WARMUP)
    fitnets = ft_keras.FitNets("stage2", "stage2", weight=FITNETS_WEIGHT)
    # T = 1: at DIST's CIFAR T = 4 (16x the gradient) this small net's
    # training with DKD and FitNets can diverge.
    dist = ft_keras.DIST(weight=DIST_WEIGHT)
    distiller = ft_keras.Distiller(teacher, student, [dkd, fitnets, dist])
    # At learning rate 0 each epoch's first batch gives the same DKD times
    # that epoch's factor.
    distiller.compile(keras.optimizers.SGD(0.0))
    first_batch, first_dkd = _first_batch_logs(), []

    class EachEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            first_dkd.append(first_batch.logs["dkd_loss"])

    distiller.fit(x_train, y_train, batch_size=BATCH, epochs=3, shuffle=False,
                  verbose=0, callbacks=[first_batch, EachEpoch()])
    teacher_before = _snapshot(teacher)
    trained_before = [_numpy(v) for v in distiller.trainable_weights]
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    history = distiller.fit(x_train, y_train, batch_size=BATCH, epochs=4,
                            initial_epoch=3, verbose=0).history
    teacher_logits, teacher_map = _taps(teacher, ["stage2"], x)
    logits, student_map = _taps(student, ["stage2"], x)
    regressed = _numpy(fitnets.regressor(student_map, training=False))
    path = os.path.join(workdir, "dkd_fitnets.keras")
    distiller.save(path)
    restored = keras.models.load_model(path, compile=False)
    return {
        "first_batch_dkd": first_dkd,
        "epoch": float(_numpy(distiller.epoch)),
        "history": history,
        "teacher_unchanged": _unchanged(teacher_before, teacher),
        "trained_changed": all(
            not np.array_equal(a, _numpy(v))
            for a, v in zip(trained_before, distiller.trainable_weights)),
        "regressor_trained": len(fitnets.regressor.trainable_weights) > 0 and {
            id(v) for v in fitnets.regressor.trainable_weights} <= {
            id(v) for v in distiller.trainable_weights},
        "evaluate": _evaluate(distiller, x, y),
        "np_evaluate": {
            "ce_loss": np_ce(logits, y),
            "dkd_loss": np_dkd(teacher_logits, logits, y, 1.0, 8.0, 4.0),
            "fitnets_loss": float(np.mean((regressed - teacher_map) ** 2)),
            "dist_loss": np_dist(teacher_logits, logits, 1.0),
        },
        "round_trip_predict_equal": bool(np.array_equal(
            restored.predict(x, verbose=0), distiller.predict(x, verbose=0))),
        "round_trip_epoch": float(_numpy(restored.epoch)),
    }


def _fusion_weights(fusion):
    """An `AttentionBasedFusion`'s weights as NumPy float64, for `np_abf`."""
    def bn(layer):
        return [np.float64(_numpy(v)) for v in (
            layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)]

    def as64(v):
        return np.float64(_numpy(v))

    return {"conv1": as64(fusion.conv1.kernel), "bn1": bn(fusion.bn1),
            "att": None if fusion.att_conv is None else (
                as64(fusion.att_conv.kernel), as64(fusion.att_conv.bias)),
            "conv2": as64(fusion.conv2.kernel), "bn2": bn(fusion.bn2),
            "output_size": fusion.output_size}


def _reviewkd_crd(x_train):
    """ReviewKD (warm-up over REVIEWKD_WARMUP epochs) and CRD in one
    Distiller, trained one epoch on `{"images", "index"}` inputs: what
    changed, and the evaluation of one batch of training examples (with
    their indices: CRD's loss with the memory as it is) against NumPy."""
    import keras

    import ft_keras

    teacher, student = networks()
    reviewkd = ft_keras.ReviewKD(REVIEWKD_TAPS, REVIEWKD_TAPS,
                                 weight=REVIEWKD_WEIGHT,
                                 warmup_epochs=REVIEWKD_WARMUP)
    crd = ft_keras.CRD(2 * BATCH, feature_dim=CRD_FEATURE_DIM,
                       num_negatives=CRD_NEGATIVES,
                       temperature=CRD_TEMPERATURE, num_classes=CRD_CLASSES,
                       weight=CRD_WEIGHT, seed=0)
    crd.set_labels(CRD_LABELS)
    distiller = ft_keras.Distiller(teacher, student, [reviewkd, crd])
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    connectors = reviewkd.fusions + [crd.embed_student, crd.embed_teacher]
    teacher_before = _snapshot(teacher)
    trained_before = {"student": [_numpy(v) for v in student.trainable_weights],
                      "connectors": [_numpy(v) for obj in connectors
                                     for v in obj.trainable_weights]}
    memory_before = [_numpy(crd.memory_student), _numpy(crd.memory_teacher)]
    index = np.arange(2 * BATCH, dtype="int32")
    history = distiller.fit({"images": x_train, "index": index}, CRD_LABELS,
                            batch_size=BATCH, epochs=1, verbose=0).history
    # Evaluation on the first BATCH training examples, with their indices.
    x, y, i = x_train[:BATCH], CRD_LABELS[:BATCH], index[:BATCH]
    teacher_taps = _taps(teacher, REVIEWKD_TAPS, x)
    student_taps = _taps(student, REVIEWKD_TAPS, x)
    epoch = float(_numpy(distiller.epoch))
    return {
        "history": history,
        "teacher_unchanged": _unchanged(teacher_before, teacher),
        "student_changed": all(not np.array_equal(a, _numpy(v)) for a, v in
                               zip(trained_before["student"],
                                   student.trainable_weights)),
        "connectors_changed": all(
            not np.array_equal(a, _numpy(v)) for a, v in zip(
                trained_before["connectors"],
                [v for obj in connectors for v in obj.trainable_weights])),
        "trained_variables_are_student_and_connectors": (
            {id(v) for v in distiller.trainable_variables}
            == {id(v) for obj in [student] + connectors
                for v in obj.trainable_variables}),
        "memory_changed": [not np.array_equal(a, _numpy(v)) for a, v in zip(
            memory_before, (crd.memory_student, crd.memory_teacher))],
        "normalization": _numpy(crd.normalization).tolist(),
        "epoch": epoch,
        "evaluate": _evaluate(distiller, {"images": x, "index": i}, y),
        "np_evaluate": {
            "ce_loss": np_ce(student_taps[0], y),
            "reviewkd_loss": min(epoch / REVIEWKD_WARMUP, 1.0) * np_reviewkd(
                [_fusion_weights(f) for f in reviewkd.fusions],
                teacher_taps[1:], student_taps[1:]),
            "crd_loss": np_crd(
                teacher_taps[-1], student_taps[-1],
                {role: [np.float64(_numpy(v)) for v in head.weights]
                 for role, head in (("teacher", crd.embed_teacher),
                                    ("student", crd.embed_student))},
                {"teacher": np.float64(_numpy(crd.memory_teacher)),
                 "student": np.float64(_numpy(crd.memory_student))},
                np.float64(_numpy(crd.normalization)), i, CRD_LABELS,
                CRD_TEMPERATURE, 2 * BATCH),
        },
    }


def measure_backend(report_path, workdir, weights_path):
    """Everything the tests check on this process's backend; last, the
    cross-backend evaluation of the weights TensorFlow saved at
    `weights_path` (loading a weights file may import TensorFlow, which
    the checks before it must not see)."""
    report = {}
    import ft_keras.distiller  # noqa: F401
    import ft_keras.layers  # noqa: F401
    import ft_keras.losses  # noqa: F401
    import ft_keras.models  # noqa: F401

    report["tensorflow_after_import"] = "tensorflow" in sys.modules
    import keras

    import ft_keras

    report["backend"] = keras.config.backend()
    # No `keras.utils.set_random_seed`: it seeds (so imports) TensorFlow
    # where TensorFlow is installed. The checks need no fixed weights.
    x, y = data()
    x_train, y_train = data(2 * BATCH, seed=1)
    teacher, student = networks(weight_decay=5e-4)
    reg = keras.regularizers.L2(1e-3)

    # Paraphraser pre-training.
    paraphraser = ft_keras.Paraphraser(0.5, use_bn=True, kernel_regularizer=reg)
    trainer = ft_keras.ParaphraserTrainer(teacher, paraphraser, "stage3")
    trainer.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    teacher_before = _snapshot(teacher)
    paraphraser_before = [_numpy(v) for v in paraphraser.trainable_weights]
    # The first batch's training loss, by hand at initialisation: the L1
    # reconstruction of the teacher's map, paraphraser in training mode,
    # plus the paraphraser's regularization.
    x_first = x_train[:BATCH]
    (first_map,) = _taps(teacher, ["stage3"], x_first)[1:]
    with _restoring_weights(paraphraser):
        first_reconstruction = _numpy(
            paraphraser.reconstruct(first_map, training=True))
    np_first_loss = (float(np.abs(first_reconstruction - first_map).mean())
                     + _regularization(paraphraser))
    first_batch = _first_batch_logs()
    history = trainer.fit(x_train, batch_size=BATCH, epochs=1, verbose=0,
                          shuffle=False, callbacks=[first_batch]).history
    (teacher_map,) = _taps(teacher, ["stage3"], x)[1:]
    reconstruction = _numpy(paraphraser.reconstruct(teacher_map, training=False))
    report["paraphraser_trainer"] = {
        "history": history,
        "first_batch": first_batch.logs,
        "np_first_batch": {"loss": np_first_loss},
        "teacher_unchanged": _unchanged(teacher_before, teacher),
        "paraphraser_changed": _all_changed(paraphraser_before, paraphraser),
        "evaluate": _evaluate(trainer, x),
        "np_loss": float(np.abs(reconstruction - teacher_map).mean()),
        "predict_is_teacher_factor": bool(np.allclose(
            trainer.predict(x, verbose=0),
            _numpy(paraphraser(teacher_map, training=False)),
            rtol=1e-5, atol=1e-6)),
    }

    # Factor Transfer: frozen parts, trained parts, one pass per network.
    distiller = ft_distiller(teacher, student, paraphraser, regularizer=reg)
    frozen_before = {"teacher": _snapshot(teacher),
                     "paraphraser": _snapshot(paraphraser)}
    trained_before = {name: [_numpy(v) for v in obj.trainable_weights]
                      for name, obj in (("student", student),
                                        ("translator", distiller.translator))}
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      metrics=["accuracy"])
    # The first batch's training values, by hand at initialisation: student
    # and translator in training mode, teacher and paraphraser in inference.
    x_first, y_first = x_train[:BATCH], y_train[:BATCH]
    (first_map,) = _taps(teacher, ["stage3"], x_first)[1:]
    first_teacher_factor = _numpy(paraphraser(first_map, training=False))
    with _restoring_weights(student, distiller.translator):
        first_logits, first_student_map = _taps(student, ["stage3"], x_first,
                                                training=True)
        first_student_factor = _numpy(
            distiller.translator(first_student_map, training=True))
    first_ce = np_ce(first_logits, y_first)
    first_ft = np_ft_p1(first_teacher_factor, first_student_factor)
    np_first_batch = {
        "ce_loss": first_ce, "ft_loss": first_ft,
        "loss": first_ce + BETA * first_ft
        + _regularization(student, distiller.translator),
        "accuracy": float(np.mean(first_logits.argmax(-1) == y_first)),
    }
    first_batch = _first_batch_logs()
    history = distiller.fit(x_train, y_train, batch_size=BATCH, epochs=1,
                            verbose=0, shuffle=False,
                            callbacks=[first_batch]).history
    ft = {
        "history": history,
        "first_batch": first_batch.logs,
        "np_first_batch": np_first_batch,
        "frozen_unchanged": {name: _unchanged(before, obj) for (name, before), obj
                             in zip(frozen_before.items(), (teacher, paraphraser))},
        "trained_changed": {name: _all_changed(before, obj) for (name, before), obj
                            in zip(trained_before.items(),
                                   (student, distiller.translator))},
        "trained_variables_are_student_and_translator": (
            {id(v) for v in distiller.trainable_variables}
            == {id(v) for v in student.trainable_variables
                + distiller.translator.trainable_variables}),
    }
    if keras.config.backend() == "torch":
        ft["frozen_have_no_grad"] = all(
            v.value.grad is None for v in teacher.weights + paraphraser.weights)

    # Evaluation on a fixed batch against NumPy.
    logits, student_map = _taps(student, ["stage3"], x)
    teacher_factor = _numpy(paraphraser(teacher_map, training=False))
    student_factor = _numpy(distiller.translator(student_map, training=False))
    ft["evaluate"] = _evaluate(distiller, x, y)
    ft["np_evaluate"] = {"ce_loss": np_ce(logits, y),
                         "ft_loss": np_ft_p1(teacher_factor, student_factor)}
    ft["predict"] = _numpy(distiller.predict(x, verbose=0)).tolist()
    ft["student_predict"] = _numpy(student.predict(x, verbose=0)).tolist()

    # One training step at learning rate 0, each network counted: the
    # reported loss is CE + beta * FT + the trained parts' regularization.
    counter = {"teacher": 0, "student": 0, "paraphraser": 0, "translator": 0}
    # The teacher's stem conv runs folded with the BN after it; its tapped
    # stage output runs once per teacher pass.
    count_calls(teacher.get_layer("stage3"), counter, "teacher")
    count_calls(student.get_layer("stem_conv"), counter, "student")
    count_calls(paraphraser, counter, "paraphraser")
    count_calls(distiller.translator, counter, "translator")
    logits, student_map = _taps(student, ["stage3"], x, training=True)
    student_factor = _numpy(distiller.translator(student_map, training=True))
    for key in counter:
        counter[key] = 0
    distiller.compile(keras.optimizers.SGD(0.0), run_eagerly=True)
    ft["step"] = distiller.fit(x, y, batch_size=BATCH, epochs=1,
                               verbose=0).history
    ft["step_calls"] = dict(counter)
    ft["np_step"] = {
        "ce_loss": np_ce(logits, y),
        "ft_loss": np_ft_p1(teacher_factor, student_factor),
        "regularization": _regularization(student, distiller.translator),
        "frozen_regularization": _frozen_regularizers(teacher, paraphraser),
    }
    for key in counter:
        counter[key] = 0
    distiller.evaluate(x, y, batch_size=BATCH, verbose=0)
    ft["evaluate_calls"] = dict(counter)
    report["distiller"] = ft

    # FT + KD, and the `.keras` round trip.
    teacher, student = networks()
    paraphraser = ft_keras.Paraphraser(0.5)
    kd_distiller = ft_distiller(teacher, student, paraphraser, kd=True)
    kd_distiller.compile(keras.optimizers.SGD(0.05))
    history = kd_distiller.fit(x_train, y_train, batch_size=BATCH, epochs=1,
                               verbose=0).history
    teacher_logits = _taps(teacher, [], x)[0]
    logits = _taps(student, [], x)[0]
    # Keras' own `.keras` serialization imports TensorFlow where it is
    # installed (to recognise `tf.TensorShape`), so look before saving.
    report["tensorflow_after_fit"] = "tensorflow" in sys.modules
    path = os.path.join(workdir, "distiller.keras")
    kd_distiller.save(path)
    restored = keras.models.load_model(path, compile=False)
    outputs, restored_outputs = kd_distiller(x), restored(x)
    report["ft_kd"] = {
        "history": history,
        "evaluate": _evaluate(kd_distiller, x, y),
        "np_kd_loss": np_kd(teacher_logits, logits, TEMPERATURE),
        "round_trip_type": type(restored).__name__,
        "round_trip_terms": [type(t).__name__ for t in restored.terms],
        "round_trip_equal": keras.tree.lists_to_tuples(
            keras.tree.map_structure(lambda v: v.shape, outputs))
        == keras.tree.lists_to_tuples(
            keras.tree.map_structure(lambda v: v.shape, restored_outputs))
        and all(np.array_equal(_numpy(a), _numpy(b)) for a, b in zip(
            keras.tree.flatten(outputs), keras.tree.flatten(restored_outputs))),
        "round_trip_predict_equal": bool(np.array_equal(
            restored.predict(x, verbose=0), kd_distiller.predict(x, verbose=0))),
    }

    # The baselines: Hinton KD, attention transfer.
    for name, make, kwargs in (
            ("kd", lambda: ft_keras.KnowledgeDistillation(TEMPERATURE, weight=0.9),
             dict(student_loss_weight=0.1)),
            ("at", lambda: ft_keras.AttentionTransfer(
                AT_LAYERS, AT_LAYERS, weight=AT_WEIGHT), {})):
        teacher, student = networks()
        baseline = ft_keras.Distiller(teacher, student, [make()], **kwargs)
        # ft_keras.optim's optimizer runs on every backend too.
        baseline.compile(ft_keras.optim.TorchSGD(
            0.05, momentum=0.9, coupled_weight_decay=5e-4), metrics=["accuracy"])
        teacher_before = _snapshot(teacher)
        student_before = [_numpy(v) for v in student.trainable_weights]
        history = baseline.fit(x_train, y_train, batch_size=BATCH, epochs=1,
                               verbose=0).history
        t = _taps(teacher, AT_LAYERS, x)
        s = _taps(student, AT_LAYERS, x)
        report[name] = {
            "history": history,
            "teacher_unchanged": _unchanged(teacher_before, teacher),
            "student_changed": _all_changed(student_before, student),
            "evaluate": _evaluate(baseline, x, y),
            "np_evaluate": {
                "ce_loss": np_ce(s[0], y),
                "kd_loss": np_kd(t[0], s[0], TEMPERATURE),
                "at_loss": sum(np_at(a, b) for a, b in zip(t[1:], s[1:])),
            },
        }
        path = os.path.join(workdir, f"{name}.keras")
        baseline.save(path)
        restored = keras.models.load_model(path, compile=False)
        report[name]["round_trip_predict_equal"] = bool(np.array_equal(
            restored.predict(x, verbose=0), baseline.predict(x, verbose=0)))

    report["dkd_fitnets"] = _dkd_fitnets(x, y, x_train, y_train, workdir)
    report["reviewkd_crd"] = _reviewkd_crd(x_train)
    report["zero_row_gradients"] = _zero_row_gradients()
    report["cross_backend"] = evaluate_cross_backend(weights_path)
    with open(report_path, "w") as f:
        json.dump(report, f)


def evaluate_cross_backend(weights_path):
    """Loads the weights saved by TensorFlow and evaluates the same batch."""
    import keras

    # The layer names a fresh process gives, as in the saving process's
    # distiller (a weights file is read by name).
    keras.backend.clear_session()
    distiller = cross_backend_distiller()
    distiller.load_weights(weights_path)
    distiller.compile("sgd")
    x, y = data(seed=2)
    return _evaluate(distiller, x, y)


def tensorflow_cross_backend(workdir):
    """In this (TensorFlow) process: saves the cross-backend distiller's
    weights for the backends to load; returns the path and TensorFlow's
    evaluation of the same batch."""
    import keras

    assert keras.config.backend() == "tensorflow"  # this process (conftest)
    distiller = cross_backend_distiller()
    distiller.compile("sgd")
    weights = workdir / "distiller.weights.h5"
    distiller.save_weights(weights)
    x, y = data(seed=2)
    return weights, _evaluate(distiller, x, y)


# ----------------------------------------------------------------------
# Running a backend.


def _require(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"The {backend} package is not installed, so the "
                    f"KERAS_BACKEND={backend} run is skipped (pip install -e "
                    "'.[backends]').")


def _run(backend, *args):
    _require(backend)
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu",
               CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, str(HERE), *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=540)
    if result.returncode:
        pytest.fail(f"KERAS_BACKEND={backend} {' '.join(args)} failed:\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")


@pytest.fixture(scope="module", params=BACKENDS)
def report(request, tmp_path_factory):
    _require(request.param)
    workdir = tmp_path_factory.mktemp(request.param)
    path = workdir / "report.json"
    weights, tensorflow_evaluation = tensorflow_cross_backend(workdir)
    _run(request.param, "measure", str(path), str(workdir), str(weights))
    report = json.loads(path.read_text())
    report["tensorflow_cross_backend"] = tensorflow_evaluation
    return report


def _close(actual, expected, rtol=1e-5, atol=0.0):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# KD of two nearly uniform distributions (untrained networks at T=4) is a
# small difference of float32 logs times T^2: about 1e-6 absolute rounding.
KD_ATOL = 2e-6
# DKD is alpha * TCKD + beta * NCKD, each such a KL: alpha + beta = 9 times.
DKD_ATOL = (1.0 + 8.0) * KD_ATOL
# The gradients of FT and AT on JAX and PyTorch against TensorFlow's, per
# element: within GRAD_RTOL relative, plus GRAD_ATOL times the largest
# gradient of the nonzero example (float32 rounding of near-zero elements).
# Measured: at most 3.5e-7 of that largest gradient.
GRAD_RTOL = 1e-5
GRAD_ATOL = 1e-5


def test_core_imports_and_trains_without_tensorflow(report):
    assert report["backend"] in BACKENDS
    assert report["tensorflow_after_import"] is False
    assert report["tensorflow_after_fit"] is False


def test_paraphraser_trainer_trains_only_the_paraphraser(report):
    r = report["paraphraser_trainer"]
    assert list(r["history"]) == ["loss"]
    # Measured: <= 2e-7 relative (float32 against float64 NumPy).
    _close(r["first_batch"]["loss"], r["np_first_batch"]["loss"], rtol=1e-5)
    assert r["teacher_unchanged"] and r["paraphraser_changed"]
    assert r["predict_is_teacher_factor"]


def test_paraphraser_trainer_reports_the_reconstruction_loss(report):
    r = report["paraphraser_trainer"]
    _close(r["evaluate"]["loss"], r["np_loss"])


def test_teacher_and_paraphraser_are_bit_identical_after_fit(report):
    r = report["distiller"]
    # Every weight, BatchNorm moving statistics included.
    assert r["frozen_unchanged"] == {"teacher": True, "paraphraser": True}
    assert r["trained_variables_are_student_and_translator"]
    if report["backend"] == "torch":
        assert r["frozen_have_no_grad"]


def test_student_and_translator_train(report):
    r = report["distiller"]
    assert r["trained_changed"] == {"student": True, "translator": True}
    assert set(r["history"]) == {"loss", "ce_loss", "ft_loss", "accuracy"}
    got, expected = r["first_batch"], r["np_first_batch"]
    assert set(got) == set(expected)
    # Measured: <= 2e-7 relative (float32 against float64 NumPy).
    for key in ("ce_loss", "ft_loss", "loss"):
        _close(got[key], expected[key], rtol=1e-5)
    assert got["accuracy"] == expected["accuracy"]


def test_each_network_runs_once_per_step(report):
    r = report["distiller"]
    once = {"teacher": 1, "student": 1, "paraphraser": 1, "translator": 1}
    assert r["step_calls"] == once
    assert r["evaluate_calls"] == once


def test_training_loss_is_ce_plus_beta_ft_plus_trained_parts_regularization(
        report):
    r = report["distiller"]
    step, expected = r["step"], r["np_step"]
    # The frozen teacher and paraphraser have regularizers too: they must
    # not count.
    assert expected["regularization"] > 0 and expected["frozen_regularization"] > 0
    _close(step["ce_loss"][0], expected["ce_loss"], rtol=1e-4)
    _close(step["ft_loss"][0], expected["ft_loss"], rtol=1e-4)
    _close(step["loss"][0], expected["ce_loss"] + BETA * expected["ft_loss"]
           + expected["regularization"], rtol=1e-4)


def test_evaluate_terms_match_numpy(report):
    r = report["distiller"]
    got, expected = r["evaluate"], r["np_evaluate"]
    _close(got["ce_loss"], expected["ce_loss"])
    _close(got["ft_loss"], expected["ft_loss"])
    _close(got["loss"], got["ce_loss"] + BETA * got["ft_loss"])


def test_predict_returns_the_student_logits(report):
    r = report["distiller"]
    np.testing.assert_allclose(r["predict"], r["student_predict"], rtol=1e-5,
                               atol=1e-6)


def test_ft_plus_kd_reports_and_sums_the_kd_term(report):
    r = report["ft_kd"]
    assert set(r["history"]) == {"loss", "ce_loss", "ft_loss", "kd_loss"}
    got = r["evaluate"]
    _close(got["kd_loss"], r["np_kd_loss"], atol=KD_ATOL)
    _close(got["loss"], got["ce_loss"] + BETA * got["ft_loss"]
           + KD_WEIGHT * got["kd_loss"])


def test_keras_file_round_trip(report):
    assert report["ft_kd"]["round_trip_type"] == "Distiller"
    assert report["ft_kd"]["round_trip_terms"] == [
        "FactorTransfer", "KnowledgeDistillation"]
    assert report["ft_kd"]["round_trip_equal"]
    assert report["ft_kd"]["round_trip_predict_equal"]
    assert report["kd"]["round_trip_predict_equal"]
    assert report["at"]["round_trip_predict_equal"]


@pytest.mark.parametrize("method, terms", [
    ("kd", {"loss", "ce_loss", "kd_loss", "accuracy"}),
    ("at", {"loss", "ce_loss", "at_loss", "accuracy"}),
])
def test_baselines_train_only_the_student_and_match_numpy(report, method, terms):
    r = report[method]
    assert set(r["history"]) == terms
    assert r["teacher_unchanged"] and r["student_changed"]
    got, expected = r["evaluate"], r["np_evaluate"]
    _close(got["ce_loss"], expected["ce_loss"])
    if method == "kd":
        _close(got["kd_loss"], expected["kd_loss"], atol=KD_ATOL)
        total = 0.1 * got["ce_loss"] + 0.9 * got["kd_loss"]
    else:
        _close(got["at_loss"], expected["at_loss"])
        total = got["ce_loss"] + AT_WEIGHT * got["at_loss"]
    _close(got["loss"], total)


def test_dkd_warmup_follows_the_epoch(report):
    r = report["dkd_fitnets"]
    # Epochs 1, 2, 3 at learning rate 0: factors 1/2, 1, 1 of one value
    # (a traced step that froze the epoch would repeat the first).
    first = np.asarray(r["first_batch_dkd"])
    _close(first / first[1], [0.5, 1.0, 1.0])
    assert r["epoch"] == 4.0 and r["round_trip_epoch"] == 4.0


def test_dkd_fitnets_and_dist_train_and_match_numpy(report):
    r = report["dkd_fitnets"]
    assert set(r["history"]) == {"loss", "ce_loss", "dkd_loss", "fitnets_loss",
                                 "dist_loss"}
    assert r["teacher_unchanged"] and r["trained_changed"]
    assert r["regressor_trained"]
    got, expected = r["evaluate"], r["np_evaluate"]
    _close(got["ce_loss"], expected["ce_loss"])
    # DKD of two nearly uniform distributions: small differences of logs
    # (6.4e-6 absolute, 1.6e-4 relative, seen once on JAX).
    _close(got["dkd_loss"], expected["dkd_loss"], rtol=1e-4, atol=DKD_ATOL)
    _close(got["fitnets_loss"], expected["fitnets_loss"])
    # DIST of one batch (its value spans the batch: evaluate's one batch).
    _close(got["dist_loss"], expected["dist_loss"], rtol=1e-4)
    _close(got["loss"], got["ce_loss"] + got["dkd_loss"]
           + FITNETS_WEIGHT * got["fitnets_loss"]
           + DIST_WEIGHT * got["dist_loss"])
    assert r["round_trip_predict_equal"]


def test_reviewkd_and_crd_train_and_match_numpy(report):
    """ReviewKD's fusions and CRD's heads train with the student (the
    teacher bit-identical), and the evaluation of one batch of training
    examples with their indices matches NumPy float64.

    keras.random draws differently on each backend, seeded alike (a
    `SeedGenerator(2)`'s first `uniform((4,))` starts 0.80 on TensorFlow,
    0.56 on JAX, 0.61 on PyTorch), so CRD's negatives differ between
    backends and from NumPy: no seed makes them match. With CRD_NEGATIVES
    the number of the other classes' examples, each example's negatives
    are all of them in a random order, so the loss (a sum over the
    negatives) is the same whatever was drawn, and NumPy computes it from
    the memory, Z and heads as they are, the negatives it uses being every
    other class's example (a wrong draw would miss by far more than
    rounding)."""
    r = report["reviewkd_crd"]
    assert set(r["history"]) == {"loss", "ce_loss", "reviewkd_loss",
                                 "crd_loss"}
    assert r["teacher_unchanged"]
    assert r["student_changed"] and r["connectors_changed"]
    assert r["trained_variables_are_student_and_connectors"]
    assert r["memory_changed"] == [True, True]
    assert all(z > 0 for z in r["normalization"])  # Z, from the first batch
    assert r["epoch"] == 1.0  # ReviewKD's factor 1 / REVIEWKD_WARMUP
    got, expected = r["evaluate"], r["np_evaluate"]
    # Measured, relative, float32 against float64 NumPy, over several runs
    # (the weights are unseeded): JAX ce <= 5.9e-8, reviewkd <= 4.5e-8, crd
    # <= 9.2e-8; PyTorch ce <= 6.3e-8, reviewkd <= 7.8e-8, crd <= 1.1e-7
    # (TensorFlow, the same function: <= 2.6e-8, 9.0e-8, 1.4e-7).
    for key in ("ce_loss", "reviewkd_loss", "crd_loss"):
        _close(got[key], expected[key], rtol=1e-6, atol=0.0)
    _close(got["loss"], got["ce_loss"] + REVIEWKD_WEIGHT * got["reviewkd_loss"]
           + CRD_WEIGHT * got["crd_loss"])


def _tf_zero_row_gradients():
    import tensorflow as tf

    teacher, student = _zero_row_inputs()
    gradients = {}
    for name, loss in _zero_row_losses().items():
        s = tf.Variable(student)
        with tf.GradientTape() as tape:
            value = loss(teacher, s)
        gradients[name] = tape.gradient(value, s).numpy()
    return gradients


def test_factor_gradients_are_finite_for_an_all_zero_map(report):
    got = {name: np.asarray(g) for name, g in report["zero_row_gradients"].items()}
    assert set(got) == {"ft", "ft_attention", "at"}
    assert all(np.all(np.isfinite(g)) for g in got.values())
    # The all-zero example, by hand: its normalised full factor is x / 1e-12
    # (the clamp), so FT's p=1 gradient there is sign(s - t) / (N D 1e-12)
    # with N = 2 and D = 4*4*8; the attention maps square the map, whose
    # gradient at 0 is 0.
    teacher, _ = _zero_row_inputs()
    np.testing.assert_allclose(
        got["ft"][1], -np.sign(teacher[1]) / (2 * 128 * 1e-12), rtol=1e-6)
    np.testing.assert_array_equal(got["ft_attention"][1], 0.0)
    np.testing.assert_array_equal(got["at"][1], 0.0)
    # Every element equals TensorFlow's gradient of the same loss.
    for name, expected in _tf_zero_row_gradients().items():
        np.testing.assert_allclose(got[name], expected, rtol=GRAD_RTOL,
                                   atol=GRAD_ATOL * np.abs(expected[0]).max(),
                                   err_msg=name)


def test_ft_loss_equals_tensorflow_for_the_same_weights_and_batch(report):
    """The backend's evaluation of the weights TensorFlow saved (in the
    report's process, after its own checks) against TensorFlow's."""
    got, expected = report["cross_backend"], report["tensorflow_cross_backend"]
    assert set(got) == {"loss", "ce_loss", "ft_loss", "kd_loss"}
    for key in got:
        np.testing.assert_allclose(
            got[key], expected[key], rtol=1e-5,
            atol=KD_ATOL if key == "kd_loss" else 0.0, err_msg=key)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"measure": measure_backend}[command](*arguments)
