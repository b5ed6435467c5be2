"""Input pipelines: TFDS datasets prepared for real (tiny CIFAR archives
and ImageNet manual downloads, read through TFDS with `data_dir=`), digits,
offline."""

import dataclasses
import os
import random
import socket
import tempfile
import threading

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras

from ft_keras import data
from ft_keras.data import availability
from ft_keras.data import transforms

import _datasets

CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
NUM_TRAIN = NUM_TEST = 100  # examples per split of the tiny CIFARs


@pytest.fixture(scope="module")
def prepared_cifar(tmp_path_factory):
    """Tiny `cifar10` and `cifar100` (NUM_TRAIN train, NUM_TEST test
    examples of random pixels) prepared once from CIFAR python archives by
    `ft_keras.data.prepare`; returns `(data_dir, {name: {split: (images,
    labels)}})`, the arrays in file order."""
    root = tmp_path_factory.mktemp("cifar")
    data_dir = str(root / "tfds")
    sources = _datasets.prepare_cifar(
        data_dir, str(root / "src"), NUM_TRAIN, NUM_TEST
    )
    return data_dir, sources


@pytest.fixture(scope="module")
def cifar_dir(prepared_cifar):
    """The TFDS `data_dir` holding the prepared tiny CIFARs."""
    return prepared_cifar[0]


def batches(ds, n=None):
    ds = ds if n is None else ds.take(n)
    return [(x.numpy(), y.numpy()) for x, y in ds]


def raw_examples(name, data_dir, split="train"):
    """The prepared uint8 images and labels, read straight from TFDS."""
    ds = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.stack(images), np.array(labels)


# --------------------------------------------------------------------------
# Names, shapes, classes: no data needed.


@pytest.mark.parametrize(
    "name, classes, shape",
    [
        ("cifar10", 10, (32, 32, 3)),
        ("cifar100", 100, (32, 32, 3)),
        ("imagenet2012", 1000, (224, 224, 3)),
        ("digits", 10, (8, 8, 1)),
        ("mnist", 10, (28, 28, 1)),
    ],
)
def test_num_classes_and_input_shape_without_data(name, classes, shape):
    assert data.num_classes(name) == classes
    assert data.input_shape(name) == shape


def test_unknown_name_suggests_close_matches_and_list_builders():
    with pytest.raises(ValueError, match="list_builders") as info:
        data.build_dataset("cifar_10", "train", batch_size=8, training=True)
    assert "'cifar10'" in str(info.value)
    with pytest.raises(ValueError, match="list_builders"):
        data.num_classes("no_such_dataset_xyz")


def test_unknown_option_and_bad_values_are_rejected_with_the_value():
    with pytest.raises(
        TypeError, match="shufle_buffer.*Did you mean shuffle_buffer"
    ):
        data.build_dataset(
            "digits", "train", batch_size=8, training=True, shufle_buffer=10
        )
    with pytest.raises(ValueError, match="augment=.*'autoaugment'"):
        data.build_dataset(
            "digits",
            "train",
            batch_size=8,
            training=True,
            augment=["autoaugment"],
        )
    with pytest.raises(ValueError, match="batch_size=0"):
        data.build_dataset("digits", "train", batch_size=0, training=True)
    with pytest.raises(ValueError, match="mean=.*0.1, 0.2"):
        data.build_dataset(
            "digits", "train", batch_size=8, training=True, mean=(0.1, 0.2)
        )
    with pytest.raises(ValueError, match="split='validation'"):
        data.build_dataset("digits", "validation", batch_size=8, training=True)
    with pytest.raises(ValueError, match="autotune='yes'"):
        data.build_dataset(
            "digits", "train", batch_size=8, training=True, autotune="yes"
        )


def test_option_defaults_follow_the_dataset_and_training():
    train = data.PipelineOptions().resolve("cifar10", training=True)
    assert (train.deterministic, train.seed, train.drop_remainder) == (
        False,
        None,
        True,
    )
    assert train.shuffle_buffer == 50_000 and train.cache == "auto"
    assert (train.mean, train.std) == data.normalization_stats("cifar10")
    assert (train.repeat, train.download, train.autotune) == (
        False,
        True,
        False,
    )
    test = data.PipelineOptions().resolve("cifar10", training=False)
    assert (test.deterministic, test.drop_remainder) == (True, False)
    seeded = data.PipelineOptions(deterministic=True).resolve(
        "digits", training=True
    )
    assert seeded.seed == 0
    assert seeded.shuffle_buffer == data.DIGITS_TRAIN_SIZE
    scalar = data.PipelineOptions(mean=0.5, std=0.25, image_size=160)
    resolved = scalar.resolve("imagenet2012", training=False)
    assert resolved.mean == (0.5,) * 3 and resolved.std == (0.25,) * 3
    assert resolved.image_size == (160, 160)
    assert data.PipelineOptions(augment="MixUp").augment == ("mixup",)


def test_none_means_the_default_for_every_option():
    names = [field.name for field in dataclasses.fields(data.PipelineOptions)]
    kwargs = dict(batch_size=360, training=False)
    ((x, y),) = batches(
        data.build_dataset("digits", "test", **kwargs, **dict.fromkeys(names))
    )
    ((x0, y0),) = batches(data.build_dataset("digits", "test", **kwargs))
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize("training", [True, False])
def test_autotune_is_off_unless_asked_for(training):
    # TF 2.21 can block an iterator's deletion until the autotuner's next
    # wake-up (benchmarks/iterator_stall.py), once per Keras epoch.
    ds = data.build_dataset("digits", "train", batch_size=8, training=training)
    assert ds.options().autotune.enabled is False
    ds = data.build_dataset(
        "digits", "train", batch_size=8, training=training, autotune=True
    )
    assert ds.options().autotune.enabled is True
    assert len(batches(ds, 2)) == 2


# --------------------------------------------------------------------------
# CIFAR through the real TFDS code path (tiny prepared datasets).


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_eval_is_pytorch_to_tensor_then_normalize(prepared_cifar, name):
    cifar_dir, sources = prepared_cifar
    raw_images, raw_labels = raw_examples(name, cifar_dir, "test")
    # TFDS holds exactly the examples of the archive (in its own order).
    source_images, source_labels = sources[name]["test"]
    assert sorted(zip(map(bytes, raw_images), raw_labels.tolist())) == sorted(
        zip(map(bytes, source_images), source_labels.tolist())
    )
    ds = data.build_dataset(
        name, "test", batch_size=32, training=False, data_dir=cifar_dir
    )
    (images, labels), *_ = batches(ds)
    assert images.shape == (32, 32, 32, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < data.num_classes(name)
    mean, std = (
        np.array(v, np.float32) for v in data.normalization_stats(name)
    )
    expected = (raw_images[:32].astype(np.float32) / 255.0 - mean) / std
    np.testing.assert_allclose(images, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels, raw_labels[:32])
    # Value range: exactly the normalised [0, 1] range.
    assert images.min() >= (-mean / std).min() - 1e-5
    assert images.max() <= ((1 - mean) / std).max() + 1e-5


def test_cifar_eval_pipeline_is_identical_across_iterations(cifar_dir):
    ds = data.build_dataset(
        "cifar10", "test", batch_size=16, training=False, data_dir=cifar_dir
    )
    first, second = batches(ds), batches(ds)
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_cifar_train_is_pad4_crop_flip_of_the_eval_image(cifar_dir):
    kwargs = dict(batch_size=20, seed=3, deterministic=True, data_dir=cifar_dir)
    (train, _), *_ = batches(
        data.build_dataset(
            "cifar10", "train", training=True, shuffle_buffer=0, **kwargs
        )
    )
    (plain, _), *_ = batches(
        data.build_dataset("cifar10", "train", training=False, **kwargs)
    )
    changed = [not np.array_equal(t, p) for t, p in zip(train, plain)]
    assert sum(changed) >= 15  # unchanged only for offset (4, 4) and no flip
    pad_value = -CIFAR10_MEAN / CIFAR10_STD  # a zero pixel, normalised
    for t, p in zip(train, plain):
        padded = np.broadcast_to(pad_value, (40, 40, 3)).copy()
        padded[4:36, 4:36] = p
        candidates = [
            c
            for dy in range(9)
            for dx in range(9)
            for c in (
                padded[dy : dy + 32, dx : dx + 32],
                padded[dy : dy + 32, dx : dx + 32][:, ::-1],
            )
        ]
        assert any(np.allclose(t, c, atol=1e-6) for c in candidates)


def test_cifar_train_is_repeatable_with_deterministic_and_seed(cifar_dir):
    def first_two(seed):
        return batches(
            data.build_dataset(
                "cifar10",
                "train",
                batch_size=16,
                training=True,
                deterministic=True,
                seed=seed,
                data_dir=cifar_dir,
            ),
            2,
        )

    a, b, c = first_two(7), first_two(7), first_two(8)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_cifar_train_draws_new_augmentation_each_epoch(cifar_dir):
    ds = data.build_dataset(
        "cifar10",
        "train",
        batch_size=16,
        training=True,
        deterministic=True,
        seed=1,
        data_dir=cifar_dir,
    )
    first, second = batches(ds), batches(ds)
    assert any(
        not np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(first, second)
    )


def test_global_batch_size_and_drop_remainder(cifar_dir):
    kwargs = dict(batch_size=32, data_dir=cifar_dir)
    train = batches(
        data.build_dataset("cifar100", "train", training=True, **kwargs)
    )
    assert [x.shape[0] for x, _ in train] == [32, 32, 32]  # 100 // 32, no rest
    test = batches(
        data.build_dataset("cifar100", "test", training=False, **kwargs)
    )
    assert [x.shape[0] for x, _ in test] == [32, 32, 32, 4]
    kept = batches(
        data.build_dataset(
            "cifar100",
            "train",
            training=True,
            drop_remainder=False,
            **kwargs,
        )
    )
    assert sum(x.shape[0] for x, _ in kept) == NUM_TRAIN
    ds = data.build_dataset("cifar100", "train", training=True, **kwargs)
    assert ds.element_spec[0].shape.as_list() == [32, 32, 32, 3]


def test_repeat_makes_the_dataset_infinite(cifar_dir):
    ds = data.build_dataset(
        "cifar10",
        "train",
        batch_size=32,
        training=True,
        repeat=True,
        data_dir=cifar_dir,
    )
    assert ds.cardinality() == tf.data.INFINITE_CARDINALITY
    assert len(batches(ds, 10)) == 10


@pytest.mark.parametrize(
    "augment, one_hot",
    [
        (["randaugment"], False),
        (["cutmix"], True),
        (["mixup"], True),
        (["randaugment", "cutmix", "mixup"], True),
    ],
)
def test_keras_augmentations_shapes_and_soft_labels(
    cifar_dir, augment, one_hot
):
    ds = data.build_dataset(
        "cifar10",
        "train",
        batch_size=16,
        training=True,
        seed=0,
        augment=augment,
        data_dir=cifar_dir,
    )
    (images, labels), *_ = batches(ds, 1)
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.float32
    assert np.isfinite(images).all()
    if one_hot:
        assert labels.shape == (16, 10) and labels.dtype == np.float32
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
        # Eval labels of the same options are one-hot too (same loss fits).
        (_, eval_labels), *_ = batches(
            data.build_dataset(
                "cifar10",
                "test",
                batch_size=16,
                training=False,
                augment=augment,
                data_dir=cifar_dir,
            ),
            1,
        )
        assert eval_labels.shape == (16, 10)
        np.testing.assert_array_equal(eval_labels.max(axis=1), 1.0)
    else:
        assert labels.shape == (16,) and labels.dtype == np.int32


def test_keras_augmentations_are_repeatable_with_deterministic(cifar_dir):
    def first(seed):
        return batches(
            data.build_dataset(
                "cifar10",
                "train",
                batch_size=16,
                training=True,
                seed=seed,
                deterministic=True,
                augment=["randaugment", "mixup"],
                data_dir=cifar_dir,
            ),
            1,
        )[0]

    (xa, ya), (xb, yb) = first(4), first(4)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)


def test_keras_augmentations_resume_exactly_in_a_rebuilt_pipeline():
    """A run resumed mid-epoch builds its pipeline afresh, creates and
    drops one iterator per finished epoch and skips the batches already
    trained on: the augmentation layers must then draw what the
    uninterrupted pipeline drew, although their seed generators start
    afresh."""
    def build():
        return data.build_dataset(
            "digits", "train", batch_size=64, training=True, seed=3,
            deterministic=True, augment=["randaugment", "cutmix", "mixup"])

    running = build()
    first, second = batches(running), batches(running)
    resumed = build()
    iter(resumed)  # the finished epoch
    rest = batches(resumed.skip(7))
    assert len(rest) == len(second) - 7 > 0
    for (x, y), (x_resumed, y_resumed) in zip(second[7:], rest):
        np.testing.assert_array_equal(x, x_resumed)
        np.testing.assert_array_equal(y, y_resumed)
    # Each epoch draws other augmentations, and mixing did mix.
    assert not np.array_equal(first[7][0], second[7][0])
    assert 0 < np.mean(np.max(second[7][1], axis=1) < 1)


def test_keras_cv_augmentations_need_keras_cv(cifar_dir):
    try:
        import keras_cv  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install keras-cv"):
            data.build_dataset(
                "cifar10",
                "train",
                batch_size=8,
                training=True,
                augment=["keras_cv.mixup"],
                data_dir=cifar_dir,
            )
    else:
        ds = data.build_dataset(
            "cifar10",
            "train",
            batch_size=8,
            training=True,
            augment=["keras_cv.mixup"],
            data_dir=cifar_dir,
        )
        assert batches(ds, 1)[0][1].shape == (8, 10)


def test_imagenet_train_and_eval_crops(tmp_path):
    """Tiny manual-download archives (JPEGs of several sizes) in
    `<data_dir>/downloads/manual`: the first `build_dataset` prepares them
    with TFDS's own builder (`ensure_prepared`), then both recipes crop."""
    data_dir = str(tmp_path / "tfds")
    counts = _datasets.write_imagenet_manual(
        os.path.join(data_dir, "downloads", "manual")
    )
    state = random.getstate()
    train = data.build_dataset(
        "imagenet2012",
        "train",
        batch_size=4,
        training=True,
        seed=0,
        data_dir=data_dir,
    )
    assert tfds.builder("imagenet2012", data_dir=data_dir).is_prepared()
    # Preparing draws nothing from Python's random state, whence Keras seeds
    # every later layer: a seeded run that prepares its data initialises its
    # networks as its rerun on the prepared data does.
    assert random.getstate() == state
    evaluation = data.build_dataset(
        "imagenet2012",
        "validation",
        batch_size=4,
        training=False,
        data_dir=data_dir,
    )
    assert counts == {"train": 9, "validation": 6}
    for ds, sizes in ((train, [4, 4]), (evaluation, [4, 2])):
        got = batches(ds)
        assert [len(y) for _, y in got] == sizes  # train drops the rest
        for images, labels in got:
            assert images.shape[1:] == (224, 224, 3)
            assert images.dtype == np.float32 and labels.dtype == np.int32
            assert 0 <= labels.min() and labels.max() < 1000


def test_random_resized_crop_window_stays_inside_the_image():
    for i, (h, w) in enumerate([(375, 500), (500, 333), (64, 64), (10, 300)]):
        top, left, ch, cw = (
            int(v)
            for v in transforms._resized_crop_window(
                tf.constant(h), tf.constant(w), tf.constant([i, 1])
            )
        )
        assert 0 < ch <= h and 0 < cw <= w
        assert 0 <= top <= h - ch and 0 <= left <= w - cw


# --------------------------------------------------------------------------
# Distribution: the batch size is global.


def test_experimental_distribute_dataset_splits_the_global_batch(cifar_dir):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    ds = data.build_dataset(
        "cifar10",
        "train",
        batch_size=32,
        training=True,
        seed=0,
        data_dir=cifar_dir,
    )
    dist = strategy.experimental_distribute_dataset(ds)
    steps = 0
    for images, labels in dist:
        per_replica = strategy.experimental_local_results(images)
        assert [x.shape[0] for x in per_replica] == [16, 16]
        assert all(
            y.shape == (16,)
            for y in strategy.experimental_local_results(labels)
        )
        steps += 1
    assert steps == NUM_TRAIN // 32


def test_fit_under_mirrored_strategy_on_digits():
    # Reduction through one device, not collective ops: collective instance
    # keys restart with every MirroredStrategy, and a later strategy in the
    # same process (e.g. SyncBatchNormalization in test_distiller.py) would
    # otherwise collide with the instances this one leaves behind.
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
    with strategy.scope():
        ds = data.build_dataset(
            "digits",
            "train",
            batch_size=64,
            training=True,
            seed=0,
            augment=["mixup"],
        )
        model = keras.Sequential(
            [
                keras.Input(data.input_shape("digits")),
                keras.layers.Flatten(),
                keras.layers.Dense(data.num_classes("digits")),
            ]
        )
        # A learning rate at which one epoch of mixup learns the digits.
        model.compile(
            keras.optimizers.SGD(0.5),
            keras.losses.CategoricalCrossentropy(from_logits=True),
        )

    class CountBatches(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1

    counter = CountBatches()
    model.fit(ds, epochs=1, verbose=0, callbacks=[counter])
    # One optimizer step per global batch of 64 (split over the replicas),
    # every full batch of the train split once.
    steps = int(ds.cardinality())
    assert steps == len(list(ds)) > 0
    assert counter.batches == steps
    assert int(model.optimizer.iterations.numpy()) == steps
    # It learned: top-1 on the test split far above chance (1/10); measured
    # 0.51 to 0.67 over 11 runs.
    test = data.build_dataset("digits", "test", batch_size=64, training=False)
    images = np.concatenate([x.numpy() for x, _ in test])
    labels = np.concatenate([y.numpy() for _, y in test])
    top1 = np.mean(model.predict(images, verbose=0).argmax(-1) == labels)
    assert top1 > 0.3


# --------------------------------------------------------------------------
# digits: scikit-learn's bundled images, no network.


def test_digits_split_sizes_and_stratification():
    counts = {}
    for split in ("train", "test"):
        ds = data.build_dataset("digits", split, batch_size=100, training=False)
        labels = np.concatenate([y for _, y in batches(ds)])
        counts[split] = np.bincount(labels, minlength=10)
    assert counts["train"].sum() == data.DIGITS_TRAIN_SIZE == 1437
    assert counts["test"].sum() == data.DIGITS_TEST_SIZE == 360
    # Stratified: every class is 20% of its examples in test, +-1.
    total = counts["train"] + counts["test"]
    np.testing.assert_allclose(counts["test"], total * 360 / 1797, atol=1)


def test_digits_eval_is_deterministic_and_normalised_with_train_stats():
    ds = data.build_dataset("digits", "train", batch_size=1437, training=False)
    ((x1, y1),) = batches(ds)
    ((x2, y2),) = batches(ds)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.shape == (1437, 8, 8, 1)
    # Normalised with the train split's own mean/std.
    assert abs(x1.mean()) < 1e-5 and abs(x1.std() - 1) < 1e-5
    (mean,), (std,) = data.normalization_stats("digits")
    assert 0.30 < mean < 0.31 and 0.37 < std < 0.38


def test_digits_train_shifts_by_at_most_one_pixel_and_never_flips():
    kwargs = dict(batch_size=64, seed=2, deterministic=True)
    (train, _), *_ = batches(
        data.build_dataset(
            "digits", "train", training=True, shuffle_buffer=0, **kwargs
        )
    )
    (plain, _), *_ = batches(
        data.build_dataset("digits", "train", training=False, **kwargs)
    )
    (mean,), (std,) = data.normalization_stats("digits")
    pad_value = -mean / std
    for t, p in zip(train, plain):
        padded = np.full((10, 10, 1), pad_value, np.float32)
        padded[1:9, 1:9] = p
        shifts = [
            padded[dy : dy + 8, dx : dx + 8]
            for dy in range(3)
            for dx in range(3)
        ]
        assert any(np.allclose(t, s, atol=1e-6) for s in shifts)
    assert any(not np.array_equal(t, p) for t, p in zip(train, plain))


def test_digits_train_is_repeatable_with_deterministic_and_seed():
    def first(seed):
        return batches(
            data.build_dataset(
                "digits",
                "train",
                batch_size=32,
                training=True,
                deterministic=True,
                seed=seed,
            ),
            3,
        )

    for (xa, ya), (xb, yb) in zip(first(1), first(1)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(first(1)[0][1], first(2)[0][1])


def test_index_gives_each_example_its_position_once_an_epoch():
    """`index=True` (for CRD's memory): each example's position in the
    split, read in order, rides through shuffling and augmentation; the
    labels by position are `split_labels`; the images are those of the
    pipeline without it."""
    def pipeline(**options):
        return data.build_dataset("digits", "train", batch_size=64, training=True,
                                  deterministic=True, seed=3, **options)

    labels = data.split_labels("digits", "train")
    assert labels.dtype == np.int32 and len(labels) == 1437
    plain, indexed = pipeline(), pipeline(index=True)
    seen = []
    for (x, y), (inputs, y_i) in zip(plain, indexed):
        assert sorted(inputs) == ["images", "index"]
        np.testing.assert_array_equal(x, inputs["images"])
        np.testing.assert_array_equal(y, y_i)
        np.testing.assert_array_equal(labels[inputs["index"].numpy()], y_i)
        seen.extend(inputs["index"].numpy())
    # Every full batch of the epoch (22 of 64): each example at most once.
    assert len(seen) == len(set(seen)) == 22 * 64
    assert len(set(seen)) > 0.95 * len(labels)
    # Unshuffled, the indices count the split in order, and the image of
    # index i is the split's i-th.
    inputs, _ = next(iter(data.build_dataset(
        "digits", "train", batch_size=8, training=False, index=True)))
    np.testing.assert_array_equal(inputs["index"], np.arange(8))
    ordered, _ = next(iter(data.build_dataset(
        "digits", "train", batch_size=8, training=False)))
    np.testing.assert_array_equal(inputs["images"], ordered)
    with pytest.raises(ValueError, match=r"`index=True` .* \('mixup'\)"):
        pipeline(index=True, augment=["mixup"])


# --------------------------------------------------------------------------
# Offline: not prepared and no network -> one-line error within seconds.


def assert_one_line_error(error, name, data_dir):
    message = str(error)
    assert "\n" not in message
    assert repr(name) in message and data_dir in message


@pytest.fixture
def direct_connections(monkeypatch):
    """No proxy in the environment: the probe connects to the download host
    itself (with a proxy it probes the proxy, `availability._probe_address`)."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def test_offline_not_prepared_dataset_fails_at_the_probe_without_downloading(
    monkeypatch, direct_connections
):
    """Offline (every connection refused), a dataset that is neither prepared
    nor found locally fails at the reachability probe, naming the host and
    the fix; TFDS's own download, with its minutes of retries, never runs."""
    probed = []

    def offline(address, *args, **kwargs):
        probed.append(address)
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    _datasets.forbid_download(monkeypatch)
    data_dir = tempfile.mkdtemp()
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.build_dataset(
            "cifar10", "train", batch_size=8, training=True, data_dir=data_dir
        )
    assert_one_line_error(info.value, "cifar10", data_dir)
    assert "host not reachable: www.cs.toronto.edu:443: [Errno 101] Network " \
        "is unreachable" in str(info.value)
    assert probed == [("www.cs.toronto.edu", 443)]
    assert "download_and_prepare" in str(info.value)


def test_offline_probe_gives_up_after_its_timeout_on_a_hanging_network(
    monkeypatch, direct_connections
):
    """A connection that never answers is reported as such once the probe's
    timeout has passed: the message says so, which it can only do if the
    probe stopped waiting for the hanging connection."""
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(60)  # then fail as a real connect that timed out would
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    data_dir = tempfile.mkdtemp()
    try:
        with pytest.raises(data.DatasetNotPreparedError) as info:
            data.build_dataset(
                "cifar100", "train", batch_size=8, training=True,
                data_dir=data_dir
            )
    finally:
        release.set()
    assert "host not reachable: www.cs.toronto.edu:443: no answer within " \
        f"{availability._PROBE_TIMEOUT:g}s" in str(info.value)


def test_download_false_fails_without_touching_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was probed")

    monkeypatch.setattr(socket, "create_connection", no_network)
    data_dir = tempfile.mkdtemp()
    with pytest.raises(
        data.DatasetNotPreparedError, match="download=False"
    ) as info:
        data.build_dataset(
            "cifar10",
            "test",
            batch_size=8,
            training=False,
            data_dir=data_dir,
            download=False,
        )
    assert_one_line_error(info.value, "cifar10", data_dir)


def test_imagenet_without_manual_archives_says_where_to_put_them():
    data_dir = tempfile.mkdtemp()
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.build_dataset(
            "imagenet2012",
            "train",
            batch_size=8,
            training=True,
            data_dir=data_dir,
        )
    assert_one_line_error(info.value, "imagenet2012", data_dir)
    assert "ILSVRC2012_img_train.tar" in str(info.value)
    assert f"{data_dir}/downloads/manual" in str(info.value)


def test_probe_ok_then_download_failure_is_one_line(monkeypatch):
    """Reachable host: TFDS's own download runs; its failure is wrapped."""
    calls = []

    class Connection:
        def close(self):
            pass

    def download_and_prepare(self, *args, **kwargs):
        calls.append(self.name)
        raise ConnectionError("Max retries exceeded\nwith url: cifar-10")

    monkeypatch.setattr(
        socket, "create_connection", lambda *a, **k: Connection()
    )
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare
    )
    data_dir = tempfile.mkdtemp()
    with pytest.raises(
        data.DatasetNotPreparedError, match="downloading it failed"
    ) as info:
        data.build_dataset(
            "cifar10", "train", batch_size=8, training=True, data_dir=data_dir
        )
    assert calls == ["cifar10"]
    assert_one_line_error(info.value, "cifar10", data_dir)


# --------------------------------------------------------------------------
# A really prepared dataset (TFDS's own CIFAR-10 builder fed with a small
# archive by `ft_keras.data.prepare`) is read from data_dir without any
# network access.


def test_prepared_dataset_is_read_without_network(
    prepared_cifar, monkeypatch
):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was probed")

    monkeypatch.setattr(socket, "create_connection", no_network)
    data_dir, sources = prepared_cifar
    test_images, test_labels = sources["cifar10"]["test"]
    assert os.path.isdir(os.path.join(data_dir, "cifar10"))
    ((images, labels),) = batches(
        data.build_dataset(
            "cifar10",
            "test",
            batch_size=NUM_TEST,
            training=False,
            data_dir=data_dir,
            download=False,
        )
    )
    # TFDS stores examples in a hashed order: match them one by one.
    expected = (test_images / np.float32(255.0) - CIFAR10_MEAN) / CIFAR10_STD
    order = [
        int(np.argmin(np.abs(expected - x).max(axis=(1, 2, 3)))) for x in images
    ]
    assert sorted(order) == list(range(NUM_TEST))
    np.testing.assert_allclose(images, expected[order], atol=1e-6)
    np.testing.assert_array_equal(labels, test_labels[order])
    train = batches(
        data.build_dataset(
            "cifar10", "train", batch_size=16, training=True, data_dir=data_dir
        )
    )
    assert [x.shape for x, _ in train] == [(16, 32, 32, 3)] * 6  # 100 // 16
