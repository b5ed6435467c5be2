"""ParaphraserTrainer and Distiller with its terms: what trains, what is
frozen, what is reported, and how they behave under tf.distribute and mixed
precision."""

import functools
import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras

import ft_keras

from _counting import count_calls


def small_net(name, width, synchronized_bn=False, weight_decay=0.0, seed=0):
    """A functional CNN with BatchNorm and a tap named `tap` (8x8xwidth)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(width, 3, padding="same", kernel_initializer=init,
                            kernel_regularizer=reg, name="conv")(inputs)
    x = keras.layers.BatchNormalization(synchronized=synchronized_bn,
                                        name="bn")(x)
    x = keras.layers.ReLU(name="tap")(x)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same",
                            kernel_initializer=init, name="down")(x)
    x = keras.layers.ReLU(name="tap_small")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(5, kernel_initializer=init,
                                 kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 5, size=(n,)).astype(np.int32)
    return x, y


def snapshot(obj):
    return [np.array(v) for v in obj.weights]


def assert_unchanged(before, obj):
    after = snapshot(obj)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def assert_all_trainable_changed(before_trainable, obj):
    for a, v in zip(before_trainable, obj.trainable_weights):
        assert not np.array_equal(a, np.array(v)), v.path


def assert_outputs_equal(a, b):
    """`call` returns a dict of tensors: every entry equal."""
    assert set(a) == set(b)
    for key in a:
        for u, v in zip(keras.tree.flatten(a[key]), keras.tree.flatten(b[key])):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@functools.lru_cache(maxsize=None)
def _trained_teacher_weights():
    teacher = small_net("teacher", 16, seed=1)
    x, y = data(64, seed=1)
    teacher.compile(keras.optimizers.SGD(0.05),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return tuple(teacher.get_weights())


def trained_teacher():
    """A fresh teacher network with trained weights (trained once per
    session: each test gets its own copy to freeze and check)."""
    teacher = small_net("teacher", 16, seed=1)
    teacher.set_weights(list(_trained_teacher_weights()))
    teacher.compile(keras.optimizers.SGD(0.05),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return teacher


def ft_distiller(teacher, student, paraphraser, translator, teacher_layer="tap",
                 student_layer="tap", ce_weight=1.0, kd_weight=0.0,
                 temperature=4.0, **ft_kwargs):
    """A Distiller on a FactorTransfer term, and a KD term if
    `kd_weight`."""
    terms = [ft_keras.FactorTransfer(paraphraser, translator, teacher_layer,
                                     student_layer, **ft_kwargs)]
    if kd_weight:
        terms.append(ft_keras.KnowledgeDistillation(temperature, kd_weight))
    return ft_keras.Distiller(teacher, student, terms,
                              student_loss_weight=ce_weight)


def factors(distiller, x):
    """The teacher and student factors of a batch, in inference mode, as
    the FT term's `call` gives them to its loss."""
    maps = distiller(x, training=False)["terms"]["ft"]
    return np.asarray(maps["teacher"][0]), np.asarray(maps["student"][0])


def make_distiller(teacher=None, student=None, beta=500.0, p=1,
                   factor="full", student_layer="tap", use_bn=True,
                   ce_weight=1.0):
    teacher = teacher or trained_teacher()
    paraphraser = ft_keras.Paraphraser(rate=0.5, use_bn=use_bn)
    paraphraser.build((None, 8, 8, 16))
    # Give the paraphraser's BN non-trivial statistics, as pre-training would.
    paraphraser.reconstruct(np.random.default_rng(3).random(
        (8, 8, 8, 16), dtype=np.float32), training=True)
    student = student or small_net("student", 8, seed=2)
    translator = ft_keras.Translator(8, use_bn=use_bn)
    return ft_distiller(
        teacher, student, paraphraser, translator, teacher_layer="tap",
        student_layer=student_layer, beta=beta, p=p, factor=factor,
        ce_weight=ce_weight)


def test_paraphraser_trainer_trains_only_the_paraphraser():
    teacher = trained_teacher()
    teacher_before = snapshot(teacher)
    paraphraser = ft_keras.Paraphraser(rate=0.5, use_bn=True)
    trainer = ft_keras.ParaphraserTrainer(teacher, paraphraser, "tap")
    assert paraphraser.built and paraphraser.factor_channels == 8
    trainer.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    para_before = [np.array(v) for v in paraphraser.trainable_weights]
    x, _ = data()
    history = trainer.fit(x, batch_size=8, epochs=2, verbose=0)
    assert_unchanged(teacher_before, teacher)
    assert_all_trainable_changed(para_before, paraphraser)
    assert history.history["loss"][1] < history.history["loss"][0]
    assert list(history.history) == ["loss"]


def test_paraphraser_trainer_reports_the_reconstruction_loss():
    teacher = trained_teacher()
    paraphraser = ft_keras.Paraphraser(rate=0.5)
    trainer = ft_keras.ParaphraserTrainer(teacher, paraphraser, "tap",
                                          reconstruction="mse")
    trainer.compile(keras.optimizers.SGD(0.0))
    x, _ = data(16)
    features = keras.Model(teacher.input, teacher.get_layer("tap").output)(x)
    expected = np.mean(
        (np.asarray(paraphraser.reconstruct(features)) - np.asarray(features)) ** 2)
    result = trainer.evaluate(x, batch_size=16, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)


def test_teacher_and_paraphraser_are_frozen_after_fit():
    distiller = make_distiller()
    teacher_before = snapshot(distiller.teacher)
    paraphraser_before = snapshot(distiller.terms[0].paraphraser)
    student_before = [np.array(v) for v in distiller.student.trainable_weights]
    translator_before = [np.array(v) for v in distiller.terms[0].translator.trainable_weights]
    student_stats_before = [np.array(v) for v in
                            distiller.student.non_trainable_weights]
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    x, y = data()
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    # Bit-identical: weights and BatchNorm moving statistics.
    assert_unchanged(teacher_before, distiller.teacher)
    assert_unchanged(paraphraser_before, distiller.terms[0].paraphraser)
    assert_all_trainable_changed(student_before, distiller.student)
    assert_all_trainable_changed(translator_before, distiller.terms[0].translator)
    # The student trains: its BN statistics move.
    assert not np.array_equal(student_stats_before[0],
                              np.array(distiller.student.non_trainable_weights[0]))


@pytest.mark.parametrize("built", [True, False])
def test_only_student_and_translator_variables_are_trained(built):
    if built:
        distiller = make_distiller()
    else:
        # A paraphraser that the Distiller builds itself (e.g. to load its
        # weights afterwards) is frozen too.
        distiller = ft_distiller(
            trained_teacher(), small_net("student", 8, seed=2),
            ft_keras.Paraphraser(rate=0.5), ft_keras.Translator(8), "tap", "tap")
    trained = {id(v) for v in distiller.trainable_variables}
    expected = {id(v) for v in distiller.student.trainable_variables
                + distiller.terms[0].translator.trainable_variables}
    assert trained == expected
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    x, y = data()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Gradients do not exist")
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)


@pytest.mark.parametrize("kd_weight", [0.0, 0.5])
def test_each_network_runs_once_per_step(kd_weight):
    teacher = trained_teacher()
    paraphraser = ft_keras.Paraphraser(rate=0.5)
    distiller = ft_distiller(
        teacher, small_net("student", 8, seed=2), paraphraser,
        ft_keras.Translator(8), "tap", "tap", kd_weight=kd_weight)
    counter = dict.fromkeys(["teacher", "student", "paraphraser", "translator"], 0)
    # The teacher's conv and BN run folded into one (FoldedConv2D); its tap,
    # the ReLU after them, runs once per teacher pass.
    count_calls(teacher.get_layer("tap"), counter, "teacher")
    count_calls(distiller.student.get_layer("conv"), counter, "student")
    count_calls(paraphraser, counter, "paraphraser")
    count_calls(distiller.terms[0].translator, counter, "translator")
    # Eagerly, so that the Python of every step runs.
    distiller.compile(keras.optimizers.SGD(0.01), run_eagerly=True)
    x, y = data(24)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert counter == dict.fromkeys(counter, 3)
    distiller.evaluate(x, y, batch_size=8, verbose=0)
    assert counter == dict.fromkeys(counter, 6)


def test_frozen_parts_regularization_does_not_count():
    # Teacher and paraphraser have regularizers; only the translator's (the
    # student has none here) is part of the loss.
    teacher = small_net("teacher", 16, seed=1, weight_decay=1e-2)
    paraphraser = ft_keras.Paraphraser(
        rate=0.5, kernel_regularizer=keras.regularizers.L2(1e-2))
    translator = ft_keras.Translator(
        8, kernel_regularizer=keras.regularizers.L2(1e-3))
    distiller = ft_distiller(
        teacher, small_net("student", 8, seed=2), paraphraser, translator,
        "tap", "tap", beta=10.0)
    frozen = sum(float(v.regularizer(v)) for v in teacher.weights
                 + paraphraser.weights if v.regularizer is not None)
    trained = sum(float(v.regularizer(v)) for v in translator.weights
                  if v.regularizer is not None)
    assert frozen > 0 and trained > 0
    distiller.compile(keras.optimizers.SGD(0.0))
    x, y = data(16)
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    np.testing.assert_allclose(
        history["loss"][0],
        history["ce_loss"][0] + 10.0 * history["ft_loss"][0] + trained,
        rtol=1e-5)


def test_paraphraser_trainer_adds_only_the_paraphrasers_regularization():
    teacher = small_net("teacher", 16, seed=1, weight_decay=1e-2)
    paraphraser = ft_keras.Paraphraser(
        rate=0.5, kernel_regularizer=keras.regularizers.L2(1e-3))
    trainer = ft_keras.ParaphraserTrainer(teacher, paraphraser, "tap")
    reg = sum(float(v.regularizer(v)) for v in paraphraser.weights
              if v.regularizer is not None)
    trainer.compile(keras.optimizers.SGD(0.0))
    x, _ = data(16)
    # Without BatchNorm, training and inference passes are the same:
    # evaluation reports the bare reconstruction loss.
    reconstruction = trainer.evaluate(x, batch_size=16, verbose=0)
    history = trainer.fit(x, batch_size=16, epochs=1, verbose=0).history
    np.testing.assert_allclose(history["loss"][0], reconstruction + reg,
                               rtol=1e-5)


def test_reported_loss_is_ce_plus_beta_ft_plus_regularization():
    beta = 37.0
    student = small_net("student", 8, seed=2, weight_decay=1e-3)
    distiller = make_distiller(student=student, beta=beta)
    x, y = data(16, seed=5)
    # Independent computation of every term before the (only) step.
    teacher_map = keras.Model(distiller.teacher.input,
                              distiller.teacher.get_layer("tap").output)(x)
    teacher_factor = np.asarray(distiller.terms[0].paraphraser(teacher_map, training=False))
    extractor = keras.Model(student.input,
                            [student.output, student.get_layer("tap").output])
    # BN statistics are not read in training mode, so this call's update of
    # them does not change the step's forward pass.
    logits, student_map = extractor(x, training=True)
    student_factor = np.asarray(distiller.terms[0].translator(student_map, training=True))
    logits = np.asarray(logits, np.float64)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -log_softmax[np.arange(16), y].mean()

    def normalize(f):
        f = f.reshape(len(f), -1).astype(np.float64)
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    ft = np.abs(normalize(student_factor) - normalize(teacher_factor)).mean()
    reg = 1e-3 * sum(float(np.sum(np.square(np.array(v))))
                     for v in student.trainable_weights if "kernel" in v.path
                     and v.path.split("/")[0] in ("conv", "logits"))
    assert reg > 0
    distiller.compile(keras.optimizers.SGD(0.1))
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    np.testing.assert_allclose(history["ce_loss"][0], ce, rtol=1e-4)
    np.testing.assert_allclose(history["ft_loss"][0], ft, rtol=1e-4)
    np.testing.assert_allclose(history["loss"][0], ce + beta * ft + reg, rtol=1e-4)


def test_ce_weight_scales_the_reported_cross_entropy_in_the_loss():
    ce_weight, beta = 0.3, 37.0
    distiller = make_distiller(beta=beta, ce_weight=ce_weight)
    x, y = data(16, seed=5)
    # The cross-entropy of the step's forward pass (training mode), before
    # the step.
    logits = np.asarray(distiller.student(x, training=True), np.float64)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -log_softmax[np.arange(16), y].mean()
    distiller.compile(keras.optimizers.SGD(0.1))
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    # `ce_loss` is reported before its weight; `loss` weighs it.
    np.testing.assert_allclose(history["ce_loss"][0], ce, rtol=1e-4)
    assert history["ft_loss"][0] > 0
    np.testing.assert_allclose(
        history["loss"][0],
        ce_weight * history["ce_loss"][0] + beta * history["ft_loss"][0],
        rtol=1e-5)
    assert not np.isclose(
        history["loss"][0],
        history["ce_loss"][0] + beta * history["ft_loss"][0], rtol=1e-3)


def test_student_loss_weight_round_trips_and_is_validated():
    assert make_distiller().student_loss_weight == 1.0
    config = make_distiller(ce_weight=0.3).get_config()
    assert config["student_loss_weight"] == 0.3
    assert ft_keras.Distiller.from_config(config).student_loss_weight == 0.3
    with pytest.raises(ValueError, match="Received: student_loss_weight=-1"):
        make_distiller(ce_weight=-1)


def test_fit_reports_loss_terms_and_compiled_metrics():
    distiller = make_distiller()
    distiller.compile(
        keras.optimizers.SGD(0.01),
        metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(
            k=2, name="top2")])
    x, y = data()
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0,
                            validation_data=(x, y)).history
    assert set(history) == {"loss", "ce_loss", "ft_loss", "accuracy", "top2",
                            "val_loss", "val_ce_loss", "val_ft_loss",
                            "val_accuracy", "val_top2"}
    # Evaluation: the same decomposition holds without regularization.
    np.testing.assert_allclose(
        history["val_loss"][0],
        history["val_ce_loss"][0] + 500.0 * history["val_ft_loss"][0], rtol=1e-5)


def test_call_returns_student_logits_and_predict_works():
    distiller = make_distiller()
    distiller.compile("sgd")
    x, _ = data(8)
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0), distiller.student(x), rtol=1e-6)
    np.testing.assert_array_equal(distiller(x)["logits"], distiller.student(x))


def test_string_crossentropy_is_taken_from_logits():
    distiller = make_distiller()
    distiller.compile("sgd", loss="sparse_categorical_crossentropy")
    assert distiller._classification_loss.get_config()["from_logits"] is True


def test_custom_loss_function_is_supported():
    distiller = make_distiller(beta=0.0)
    distiller.compile(
        keras.optimizers.SGD(0.0),
        loss=lambda y, logits: keras.losses.sparse_categorical_crossentropy(
            y, logits, from_logits=True) * 2.0)
    x, y = data(16)
    result = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        y, distiller.student(x))
    np.testing.assert_allclose(result["ce_loss"], 2.0 * float(plain), rtol=1e-5)


def numpy_ft_loss(teacher, student, p=1, factor="full"):
    """The FT loss in NumPy: pool the larger map to the smaller, take the
    factor, L2-normalise per example, then mean |d| (p=1) or the batch mean
    of the per-example L2 norm (p=2)."""
    def pool(a, size):
        n, h, w, c = a.shape
        k = h // size
        return a.reshape(n, size, k, size, k, c).mean(axis=(2, 4))

    size = min(teacher.shape[1], student.shape[1])
    teacher, student = pool(teacher, size), pool(student, size)
    if factor == "attention":
        teacher, student = (teacher ** 2).mean(-1), (student ** 2).mean(-1)
    teacher = teacher.reshape(len(teacher), -1)
    student = student.reshape(len(student), -1)
    teacher = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    student = student / np.linalg.norm(student, axis=1, keepdims=True)
    if p == 1:
        return np.abs(teacher - student).mean()
    return np.linalg.norm(teacher - student, axis=1).mean()


def test_spatial_mismatch_is_pooled():
    # The teacher's 8x8 factor is average-pooled to the student's 4x4.
    distiller = make_distiller(student_layer="tap_small")
    distiller.compile(keras.optimizers.SGD(0.01))
    x, y = data(16)
    teacher, student = factors(distiller, x)
    assert teacher.shape[1:3] == (8, 8) and student.shape[1:3] == (4, 4)
    result = distiller.evaluate(x, y, batch_size=16, verbose=0,
                                return_dict=True)
    np.testing.assert_allclose(result["ft_loss"],
                               numpy_ft_loss(teacher, student), rtol=1e-5)


def test_attention_factor_mode_is_repdistillers_factor():
    distiller = make_distiller(factor="attention", p=2)
    distiller.compile(keras.optimizers.SGD(0.01))
    x, y = data(16)
    teacher, student = factors(distiller, x)
    result = distiller.evaluate(x, y, batch_size=16, verbose=0,
                                return_dict=True)
    np.testing.assert_allclose(
        result["ft_loss"],
        numpy_ft_loss(teacher, student, p=2, factor="attention"), rtol=1e-5)
    # Training computes the same attention factors' loss on the step's batch
    # (the whole of x: one step), from factors computed here part by part:
    # teacher and paraphraser in inference, student and translator in
    # training mode.
    ft = distiller.terms[0]
    teacher_map = keras.Model(distiller.teacher.input,
                              distiller.teacher.get_layer("tap").output)(x)
    student_map = keras.Model(distiller.student.input,
                              distiller.student.get_layer("tap").output)(
                                  x, training=True)
    expected = numpy_ft_loss(
        np.asarray(ft.paraphraser(teacher_map, training=False)),
        np.asarray(ft.translator(student_map, training=True)), p=2,
        factor="attention")
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    np.testing.assert_allclose(history["ft_loss"][0], expected, rtol=1e-5)


def test_unknown_layer_name_lists_valid_names():
    teacher = trained_teacher()
    with pytest.raises(ValueError, match=r"'stage9'.*Valid layer names: \[.*'tap'"):
        ft_keras.ParaphraserTrainer(teacher, ft_keras.Paraphraser(), "stage9")
    with pytest.raises(ValueError, match=r"`student_layer`='nope'"):
        make_distiller(teacher=teacher, student_layer="nope")


def test_factor_shape_mismatch_names_both_shapes():
    teacher = trained_teacher()
    paraphraser = ft_keras.Paraphraser(rate=0.5)
    with pytest.raises(
            ValueError,
            match=r"teacher factor of shape \(None, 8, 8, 8\).*"
                  r"student factor of shape \(None, 8, 8, 3\).*out_channels=8"):
        ft_distiller(teacher, small_net("student", 8), paraphraser,
                     ft_keras.Translator(3), "tap", "tap")


def test_bad_p_and_beta_are_rejected():
    with pytest.raises(ValueError, match="`p` must be 1 or 2. Received: p=3"):
        make_distiller(p=3)
    with pytest.raises(ValueError, match="beta=-1"):
        make_distiller(beta=-1)


def test_distiller_keras_file_round_trip(tmp_path):
    distiller = make_distiller()
    distiller.compile(keras.optimizers.SGD(0.01))
    x, y = data(16)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    restored = keras.models.load_model(path, compile=False)
    assert isinstance(restored, ft_keras.Distiller)
    ft = restored.terms[0]
    assert isinstance(ft, ft_keras.FactorTransfer)
    assert (ft.beta, ft.loss_fn.p, ft.student_layer) == (500.0, 1, "tap")
    assert not ft.paraphraser.trainable
    assert_outputs_equal(restored(x), distiller(x))
    np.testing.assert_array_equal(factors(restored, x)[0],
                                  factors(distiller, x)[0])


def test_mirrored_strategy_step_matches_single_device():
    x, y = data(16, seed=7)

    def build():
        # Synchronized BN makes the student's batch statistics global, so a
        # two-replica step computes exactly what one device computes.
        teacher = small_net("teacher", 16, seed=1)
        student = small_net("student", 8, synchronized_bn=True, seed=2)
        paraphraser = ft_keras.Paraphraser(rate=0.5)
        paraphraser.build((None, 8, 8, 16))
        translator = ft_keras.Translator(8)
        translator.build((None, 8, 8, 8))
        return teacher, student, paraphraser, translator

    def one_step(strategy, weights=None):
        with strategy.scope():
            parts = build()
            if weights is not None:
                for part, w in zip(parts, weights):
                    part.set_weights(w)
            distiller = ft_distiller(*parts, "tap", "tap", beta=50.0)
            distiller.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                              metrics=["accuracy"])
        history = distiller.fit(x, y, batch_size=16, epochs=1, shuffle=False,
                                verbose=0).history
        return parts, distiller, history

    parts, single, single_history = one_step(tf.distribute.get_strategy())
    initial = [p.get_weights() for p in build()]
    # Re-run single-device from the same initial weights used for mirrored.
    parts, single, single_history = one_step(tf.distribute.get_strategy(), initial)
    mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored_strategy.num_replicas_in_sync == 2
    m_parts, mirrored, mirrored_history = one_step(mirrored_strategy, initial)
    for a, b in zip(single.student.weights + single.terms[0].translator.weights,
                    mirrored.student.weights + mirrored.terms[0].translator.weights):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5, rtol=1e-5)
    # Reported metrics are the global batch's, not replica-scaled.
    for key in ("loss", "ce_loss", "ft_loss", "accuracy"):
        np.testing.assert_allclose(single_history[key], mirrored_history[key],
                                   rtol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_distillation(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        distiller = make_distiller()
        compute = policy.split("_")[1]
        assert distiller.student.get_layer("conv").compute_dtype == compute
        # The connectors compute in float32 under any policy (layers/connectors.py).
        assert distiller.terms[0].translator.compute_dtype == "float32"
        distiller.compile(keras.optimizers.SGD(0.01))
        # Only float16 needs loss scaling.
        assert isinstance(distiller.optimizer,
                          keras.optimizers.LossScaleOptimizer) == (
                              compute == "float16")
        x, y = data(16)
        before = [np.array(v) for v in distiller.terms[0].translator.trainable_weights]
        # The first step's loss part by part under the same policy: CE of
        # the student's logits + beta * FT, student and translator in
        # training mode.
        ft = distiller.terms[0]
        teacher_map = keras.Model(distiller.teacher.input,
                                  distiller.teacher.get_layer("tap").output)(x)
        logits, student_map = keras.Model(
            distiller.student.input,
            [distiller.student.output,
             distiller.student.get_layer("tap").output])(x, training=True)
        logits = np.asarray(logits, np.float64)
        log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        expected = -log_softmax[np.arange(16), y].mean() + 500.0 * numpy_ft_loss(
            np.asarray(ft.paraphraser(teacher_map, training=False), np.float64),
            np.asarray(ft.translator(student_map, training=True), np.float64))
        # Two steps on the whole batch: the first from the initial weights,
        # the second after an update that lowers the loss (an update of
        # unscaled gradients).
        history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0).history
        # Measured: 7.4e-6 relative under both policies.
        np.testing.assert_allclose(history["loss"][0], expected, rtol=1e-4)
        assert history["loss"][1] < history["loss"][0]
        assert_all_trainable_changed(before, distiller.terms[0].translator)
        teacher = small_net("t2", 16)
        paraphraser = ft_keras.Paraphraser()
        trainer = ft_keras.ParaphraserTrainer(teacher, paraphraser, "tap")
        trainer.compile(keras.optimizers.SGD(0.01))
        # One step on the whole batch: its loss is the L1 reconstruction of
        # the teacher's map, the paraphraser in training mode. (The trainer
        # runs the teacher with BatchNorm folded, rounded differently in 16
        # bits: measured 2e-4 relative with float16, 5.4e-4 with bfloat16.)
        teacher_map = np.asarray(keras.Model(
            teacher.input, teacher.get_layer("tap").output)(x), np.float64)
        reconstruction = np.asarray(
            paraphraser.reconstruct(teacher_map.astype(np.float32),
                                    training=True), np.float64)
        np.testing.assert_allclose(
            trainer.fit(x, epochs=1, verbose=0).history["loss"][0],
            np.abs(reconstruction - teacher_map).mean(), rtol=5e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_ft_plus_kd_reports_and_sums_the_kd_term():
    teacher = trained_teacher()
    distiller = make_distiller(teacher=teacher)
    combined = ft_distiller(
        teacher, small_net("student2", 8, seed=2), distiller.terms[0].paraphraser,
        ft_keras.Translator(8, use_bn=True), "tap", "tap", beta=10.0,
        kd_weight=0.5, temperature=2.0)
    combined.compile(keras.optimizers.SGD(0.0))
    x, y = data(16)
    result = combined.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    kd = ft_keras.losses.KnowledgeDistillationLoss(2.0)(
        teacher(x, training=False), combined.student(x, training=False))
    np.testing.assert_allclose(result["kd_loss"], float(kd), rtol=1e-5)
    np.testing.assert_allclose(
        result["loss"],
        result["ce_loss"] + 10.0 * result["ft_loss"] + 0.5 * result["kd_loss"],
        rtol=1e-5)


def test_kd_baseline_trains_only_the_student():
    teacher = trained_teacher()
    teacher_before = snapshot(teacher)
    student = small_net("student", 8, seed=2)
    student_before = [np.array(v) for v in student.trainable_weights]
    kd = ft_keras.Distiller(teacher, student,
                            [ft_keras.KnowledgeDistillation(4.0, weight=0.9)],
                            student_loss_weight=0.1)
    kd.compile(keras.optimizers.SGD(0.05, momentum=0.9), metrics=["accuracy"])
    x, y = data()
    history = kd.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert set(history) == {"loss", "ce_loss", "kd_loss", "accuracy"}
    assert_unchanged(teacher_before, teacher)
    assert_all_trainable_changed(student_before, student)
    assert {id(v) for v in kd.trainable_variables} == {
        id(v) for v in student.trainable_variables}


def test_attention_transfer_baseline_loss_decomposition():
    teacher = trained_teacher()
    student = small_net("student", 8, seed=2)
    at = ft_keras.Distiller(teacher, student, [ft_keras.AttentionTransfer(
        ["tap", "tap_small"], ["tap", "tap_small"], weight=1000.0)])
    at.compile(keras.optimizers.SGD(0.0))
    x, y = data(16)
    result = at.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    loss = ft_keras.losses.AttentionTransferLoss()
    expected_at = sum(
        float(loss(keras.Model(teacher.input, teacher.get_layer(n).output)(x),
                   keras.Model(student.input, student.get_layer(n).output)(x)))
        for n in ("tap", "tap_small"))
    np.testing.assert_allclose(result["at_loss"], expected_at, rtol=1e-5)
    np.testing.assert_allclose(result["loss"],
                               result["ce_loss"] + 1000.0 * expected_at, rtol=1e-5)


def test_terms_and_their_taps_are_validated():
    teacher = trained_teacher()
    student = small_net("student", 8)
    with pytest.raises(ValueError, match="needs at least one term"):
        ft_keras.Distiller(teacher, student, [])
    with pytest.raises(ValueError, match="must be an `ft_keras.Term`"):
        ft_keras.Distiller(teacher, student,
                           [ft_keras.losses.KnowledgeDistillationLoss()])
    with pytest.raises(ValueError, match=r"own name.*\['kd', 'kd'\]"):
        ft_keras.Distiller(teacher, student, [ft_keras.KnowledgeDistillation(),
                                              ft_keras.KnowledgeDistillation()])
    with pytest.raises(ValueError, match="same, non-zero length"):
        ft_keras.AttentionTransfer(["tap"], [])
    with pytest.raises(ValueError, match="Received: weight=-1"):
        ft_keras.KnowledgeDistillation(weight=-1)
    with pytest.raises(ValueError, match=r"'logits' \(None, 5\)"):
        ft_keras.Distiller(teacher, student, [
            ft_keras.AttentionTransfer(["tap"], ["logits"])])
    with pytest.raises(ValueError, match=r"`student_layer`='nope'"):
        ft_keras.Distiller(teacher, student, [
            ft_keras.AttentionTransfer(["tap"], ["nope"])])


def test_kd_and_at_terms_keras_round_trip(tmp_path):
    teacher = trained_teacher()
    at = ft_keras.Distiller(
        teacher, small_net("student", 8, seed=2),
        [ft_keras.KnowledgeDistillation(2.0, weight=0.5),
         ft_keras.AttentionTransfer(["tap"], ["tap"], weight=10.0, power=1)],
        student_loss_weight=0.5)
    at.compile(keras.optimizers.SGD(0.01))
    x, y = data(16)
    at.fit(x, y, batch_size=8, epochs=1, verbose=0)
    at.save(tmp_path / "at.keras")
    restored = keras.models.load_model(tmp_path / "at.keras", compile=False)
    kd, att = restored.terms
    assert (kd.weight, kd.temperature, att.weight, att.power,
            att.student_layers, restored.student_loss_weight) == (
        0.5, 2.0, 10.0, 1, ["tap"], 0.5)
    assert_outputs_equal(restored(x), at(x))


class LogitL2(ft_keras.Term):
    """Logit matching (Ba & Caruana): the mean squared difference of the
    logits, per example."""

    def __init__(self, **kwargs):
        super().__init__([None], [None], **kwargs)

    def compute_loss(self, teacher, student):
        return keras.ops.mean(keras.ops.square(teacher[0] - student[0]), axis=-1)


class Hint(ft_keras.Term):
    """A term with a trainable connector: a 1x1 regressor, with BN."""

    def connect(self, teacher_shapes, student_shapes):
        self.regressor = keras.Sequential([
            keras.layers.Conv2D(teacher_shapes[0][-1], 1),
            keras.layers.BatchNormalization()])
        self.regressor.build(student_shapes[0])
        self.built = True

    def call(self, teacher, student, training=None):
        return teacher, [self.regressor(student[0], training=training)]

    def compute_loss(self, teacher, student):
        return keras.ops.mean(keras.ops.square(teacher[0] - student[0]),
                              axis=(1, 2, 3))


def test_a_users_term_trains_with_its_connector_and_sums_its_loss():
    teacher = trained_teacher()
    student = small_net("student", 8, seed=2)
    hint = Hint(["tap"], ["tap"], weight=3.0, name="hint")
    l2 = LogitL2(weight=0.0, name="l2")
    distiller = ft_keras.Distiller(teacher, student, [hint, l2])
    x, y = data(16)
    trained = {id(v) for v in distiller.trainable_variables}
    assert trained == {id(v) for v in student.trainable_variables
                       + hint.regressor.trainable_variables}
    # The connector's BN statistics update in training (in `call`).
    moving_mean = hint.regressor.layers[1].moving_mean
    before = np.array(moving_mean)
    distiller.compile(keras.optimizers.SGD(0.05))
    regressor_before = [np.array(v) for v in hint.regressor.trainable_weights]
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert set(history) == {"loss", "ce_loss", "hint_loss", "l2_loss"}
    assert not np.array_equal(before, np.array(moving_mean))
    assert_all_trainable_changed(regressor_before, hint.regressor)
    # Evaluation: the loss is CE + 3 * hint + 0 * l2, each as in NumPy.
    result = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    tap = lambda m, n: np.asarray(keras.Model(m.input, m.get_layer(n).output)(x))
    hint_map = np.asarray(hint.regressor(tap(student, "tap"), training=False))
    np.testing.assert_allclose(result["hint_loss"], np.mean(
        (tap(teacher, "tap") - hint_map) ** 2), rtol=1e-5)
    np.testing.assert_allclose(result["l2_loss"], np.mean(
        (np.asarray(teacher(x)) - np.asarray(student(x))) ** 2), rtol=1e-5)
    np.testing.assert_allclose(
        result["loss"], result["ce_loss"] + 3.0 * result["hint_loss"], rtol=1e-5)


def test_a_term_returning_a_scalar_counts_as_the_batch_loss():
    class Scalar(LogitL2):
        def compute_loss(self, teacher, student):
            return keras.ops.mean(super().compute_loss(teacher, student))

    x, y = data(16)
    results = []
    # Under two replicas too: each replica's scalar is scaled as Keras
    # scales a loss, so the global batch's loss is reported.
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for strategy in (tf.distribute.get_strategy(), mirrored):
        for cls in (LogitL2, Scalar):
            with strategy.scope():
                distiller = ft_keras.Distiller(
                    trained_teacher(), small_net("student", 8, seed=2),
                    [cls(name="l2")])
                distiller.compile("sgd")
            results.append(distiller.evaluate(
                x, y, batch_size=16, verbose=0, return_dict=True)["l2_loss"])
    np.testing.assert_allclose(results, [results[0]] * 4, rtol=1e-5)
    assert results[0] > 0


def test_paraphraser_trainer_keras_round_trip(tmp_path):
    trainer = ft_keras.ParaphraserTrainer(
        trained_teacher(), ft_keras.Paraphraser(rate=0.25, use_bn=True), "tap",
        reconstruction="normalized_l2")
    trainer.compile(keras.optimizers.SGD(0.01))
    x, _ = data(16)
    trainer.fit(x, batch_size=8, epochs=1, verbose=0)
    trainer.save(tmp_path / "trainer.keras")
    restored = keras.models.load_model(tmp_path / "trainer.keras", compile=False)
    assert (restored.reconstruction, restored.paraphraser.rate) == (
        "normalized_l2", 0.25)
    assert_outputs_equal(restored(x), trainer(x))


def np_unit_rows(x):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_p_form_mean_reaches_the_loss_and_round_trips(tmp_path):
    teacher = trained_teacher()
    student = small_net("student", 8, seed=2)
    paraphraser = ft_keras.Paraphraser(rate=0.5)
    paraphraser.build((None, 8, 8, 16))
    distiller = ft_distiller(
        teacher, student, paraphraser, ft_keras.Translator(8), "tap", "tap",
        p=2, p_form="mean")
    distiller.compile(keras.optimizers.SGD(0.0))
    x, y = data(16)
    student_map = keras.Model(student.input, student.get_layer("tap").output)(x)
    diff = (np_unit_rows(distiller.terms[0].translator(student_map))
            - np_unit_rows(factors(distiller, x)[0]))
    # RepDistiller's p2=2: the mean of the squared differences.
    result = distiller.evaluate(x, y, batch_size=16, verbose=0,
                                return_dict=True)
    np.testing.assert_allclose(result["ft_loss"], np.mean(diff ** 2),
                               rtol=1e-5)
    distiller.save(tmp_path / "distiller.keras")
    restored = keras.models.load_model(tmp_path / "distiller.keras",
                                       compile=False)
    loss = restored.terms[0].loss_fn
    assert (loss.p, loss.p_form) == (2, "mean")


def test_p_form_is_validated():
    with pytest.raises(ValueError, match="Received: p_form='sqrt'"):
        ft_distiller(
            trained_teacher(), small_net("student", 8, seed=2),
            ft_keras.Paraphraser(rate=0.5), ft_keras.Translator(8), "tap",
            "tap", p=2, p_form="sqrt")


def test_coupled_weight_decay_decays_the_translator_never_the_frozen_parts():
    # beta = 0 leaves the translator a zero loss gradient, so with plain SGD
    # (no momentum) each of the 4 steps multiplies every translator
    # variable, biases and BN gamma/beta included, by (1 - lr * wd).
    lr, weight_decay, steps = 0.05, 0.5, 4
    distiller = make_distiller(beta=0.0, use_bn=True)
    teacher_before = snapshot(distiller.teacher)
    paraphraser_before = snapshot(distiller.terms[0].paraphraser)
    translator_before = [np.array(v) for v in
                         distiller.terms[0].translator.trainable_variables]
    distiller.compile(ft_keras.optim.TorchSGD(
        lr, coupled_weight_decay=weight_decay))
    x, y = data(8 * steps)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert_unchanged(teacher_before, distiller.teacher)
    assert_unchanged(paraphraser_before, distiller.terms[0].paraphraser)
    names = set()
    for before, v in zip(translator_before,
                         distiller.terms[0].translator.trainable_variables):
        np.testing.assert_allclose(
            np.asarray(v), before * (1 - lr * weight_decay) ** steps,
            rtol=1e-5, atol=1e-7)
        names.add(v.path.split("/")[-1])
    assert names == {"kernel", "bias", "gamma", "beta"}


def test_coupled_weight_decay_leaves_the_teacher_alone_in_pre_training():
    teacher = trained_teacher()
    teacher_before = snapshot(teacher)
    paraphraser = ft_keras.Paraphraser(rate=0.5)
    trainer = ft_keras.ParaphraserTrainer(teacher, paraphraser, "tap")
    trainer.compile(ft_keras.optim.TorchSGD(0.1, momentum=0.9,
                                            coupled_weight_decay=0.5))
    before = [np.array(v) for v in paraphraser.trainable_variables]
    x, _ = data(16)
    trainer.fit(x, batch_size=8, epochs=1, verbose=0)
    assert_unchanged(teacher_before, teacher)
    assert_all_trainable_changed(before, paraphraser)


def test_factor_transfer_makes_a_translator_with_the_factor_channels(tmp_path):
    teacher = trained_teacher()
    paraphraser = ft_keras.Paraphraser(rate=0.25)
    ft = ft_keras.FactorTransfer(paraphraser, None, "tap", "tap")
    distiller = ft_keras.Distiller(teacher, small_net("student", 8, seed=2), [ft])
    assert isinstance(ft.translator, ft_keras.Translator)
    assert ft.translator.out_channels == paraphraser.factor_channels == 4
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in distiller.student.trainable_variables
        + ft.translator.trainable_variables}
    distiller.save(tmp_path / "d.keras")
    restored = keras.models.load_model(tmp_path / "d.keras", compile=False)
    x, _ = data(8)
    assert_outputs_equal(restored(x), distiller(x))


class LabelledMargin(ft_keras.Term):
    """A term of a user that reads the labels and the epoch: the student's
    logit of the label's class, times the epoch."""

    needs_labels = True
    needs_epoch = True

    def __init__(self, **kwargs):
        super().__init__([None], [None], **kwargs)

    def compute_loss(self, teacher, student, labels, epoch):
        classes = ft_keras.metrics.class_indices(labels, student[0])
        mask = keras.ops.one_hot(keras.ops.cast(classes, "int32"), 5)
        return epoch * keras.ops.sum(mask * student[0], axis=-1)


def test_terms_that_declare_labels_and_epoch_get_them_and_others_do_not():
    x, y = data(16)
    distiller = ft_keras.Distiller(
        trained_teacher(), small_net("student", 8, seed=2),
        [LabelledMargin(name="margin", weight=0.0), LogitL2(name="l2")])
    distiller.compile(keras.optimizers.SGD(0.0))
    logits = np.asarray(distiller.student(x))
    margin = logits[np.arange(16), y].mean()
    # One-hot labels reach the term as they are; it takes their class.
    for labels in (y, np.eye(5, dtype="float32")[y]):
        result = distiller.evaluate(x, labels, batch_size=16, verbose=0,
                                    return_dict=True)
        np.testing.assert_allclose(result["margin_loss"], margin, rtol=1e-5)
    distiller.epoch.assign(3.0)
    result = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["margin_loss"], 3.0 * margin, rtol=1e-5)


def test_fit_sets_the_epoch_with_callbacks_given_any_way():
    x, y = data(16)
    distiller = ft_keras.Distiller(
        trained_teacher(), small_net("student", 8, seed=2),
        [LabelledMargin(name="margin", weight=0.0)])
    distiller.compile(keras.optimizers.SGD(0.0))
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(float(distiller.epoch)))
    # Positional arguments as keras.Model.fit takes them, callbacks too.
    distiller.fit(x, y, 8, 2, 0, [record])
    distiller.fit(x, y, batch_size=8, epochs=4, initial_epoch=2, verbose=0,
                  callbacks=keras.callbacks.CallbackList([record]))
    assert seen == [1.0, 2.0, 3.0, 4.0]


def test_no_epoch_variable_without_a_term_that_needs_it():
    distiller = make_distiller()
    assert distiller.epoch is None
    assert not any("epoch" in v.path for v in distiller.weights)
