"""Small real datasets for tests: tiny CIFAR archives in the official
layouts (prepared offline by `ft_keras.data.prepare`) and tiny ImageNet
manual-download archives (prepared by TFDS's own builder), so that tests
read prepared data through TFDS's normal path with `data_dir=`."""

import fcntl
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from ft_keras.data import prepare
from ft_keras.data import source_files

DEBIAN = prepare.DEBIAN_FASHION_MNIST
HAVE_DEBIAN = all(
    os.path.exists(os.path.join(DEBIAN, f"{name}.gz"))
    for name in source_files._IDX_FILES
)
needs_debian = pytest.mark.skipif(
    not HAVE_DEBIAN,
    reason=f"needs Debian's dataset-fashion-mnist in {DEBIAN} "
    "(`apt-get install dataset-fashion-mnist`; .ci/run installs it)",
)



def fashion_mnist_dir(tmp_path_factory):
    """A TFDS data_dir holding Fashion-MNIST prepared on first use by
    `build_dataset` itself, from Debian's files: once per test run, shared
    by the run's xdist workers (under a file lock), as preparing the 70,000
    images takes most of a minute. Skips without Debian's files."""
    from ft_keras import data

    if not HAVE_DEBIAN:
        pytest.skip(needs_debian.kwargs["reason"])
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    root = (base.parent / f"fashion_mnist_{run}") if run else base / "fashion_mnist"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "prepared").exists():
            data.build_dataset("fashion_mnist", "test", batch_size=1000,
                               training=False, data_dir=str(root / "tfds"),
                               download=False)
            (root / "prepared").touch()
    return str(root / "tfds")


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog",
                 "frog", "horse", "ship", "truck"]
CIFAR100_FINE = [f"fine{i}" for i in range(100)]
CIFAR100_COARSE = [f"coarse{i}" for i in range(20)]


def cifar_arrays(rng, count, classes):
    images = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
    labels = [rng.integers(0, c, size=count) for c in classes]
    return images, labels


def add(tar, name, payload):
    entry = tarfile.TarInfo(name)
    entry.size = len(payload)
    tar.addfile(entry, io.BytesIO(payload))


def write_cifar10(path, kind, per_batch=3, seed=0, truncate=False,
                  test_size=None):
    """A tiny `cifar-10-{kind}.tar.gz` with 5 train batches of `per_batch`
    images and one test batch of `test_size` (default `per_batch`) images;
    returns the (train, test) images and labels in file order."""
    rng = np.random.default_rng(seed)
    sizes = [per_batch] * 5 + [per_batch if test_size is None else test_size]
    batches = [cifar_arrays(rng, n, [10]) for n in sizes]
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name, (images, (labels,)) in zip(names, batches):
            if kind == "python":
                payload = pickle.dumps(
                    {b"data": images, b"labels": labels.tolist(),
                     b"batch_label": name.encode()})
                add(tar, f"cifar-10-batches-py/{name}", payload)
            else:
                records = np.concatenate(
                    [labels[:, None].astype(np.uint8), images], axis=1)
                payload = records.tobytes()
                if truncate and name == "data_batch_2":
                    payload = payload[:-100]
                add(tar, f"cifar-10-batches-bin/{name}.bin", payload)
        if kind == "python":
            add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(
                {b"label_names": [n.encode() for n in CIFAR10_NAMES]}))
        else:
            add(tar, "cifar-10-batches-bin/batches.meta.txt",
                ("\n".join(CIFAR10_NAMES) + "\n").encode())
    images = np.concatenate([b[0] for b in batches[:5]])
    labels = np.concatenate([b[1][0] for b in batches[:5]])
    return (images, labels), batches[5]


def write_cifar100(path, train_size=5, test_size=2, seed=1):
    """A tiny `cifar-100-python.tar.gz`; returns `{split: (images, coarse
    labels, fine labels)}` in file order."""
    rng = np.random.default_rng(seed)
    splits = {}
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", train_size), ("test", test_size)):
            images, (c, f) = cifar_arrays(rng, count, [20, 100])
            splits[split] = (images, c, f)
            add(tar, f"cifar-100-python/{split}", pickle.dumps({
                b"data": images, b"fine_labels": f.tolist(),
                b"coarse_labels": c.tolist()}))
        add(tar, "cifar-100-python/meta", pickle.dumps({
            b"fine_label_names": [n.encode() for n in CIFAR100_FINE],
            b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE]}))
    return splits


def forbid_download(monkeypatch):
    """Makes TFDS's `download_and_prepare` fail the test if anything calls
    it: what the test reads must come from prepared files."""
    import tensorflow_datasets as tfds

    def download(self, *args, **kwargs):
        raise AssertionError("TFDS's download ran")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        download)


def hwc(images):
    """CIFAR rows (R plane, G plane, B plane) -> (N, 32, 32, 3)."""
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def prepare_cifar(data_dir, work_dir, train_size=100, test_size=100,
                  seed=0):
    """Prepares tiny `cifar10` and `cifar100` in `data_dir` from archives
    written to `work_dir` (`ft_keras.data.prepare`, TFDS's own builders);
    returns `{name: {split: (uint8 HWC images, labels)}}` in file order."""
    assert train_size % 5 == 0
    os.makedirs(work_dir, exist_ok=True)
    archive = os.path.join(work_dir, "cifar-10-python.tar.gz")
    (train_x, train_y), (test_x, (test_y,)) = write_cifar10(
        archive, "python", per_batch=train_size // 5, seed=seed,
        test_size=test_size)
    prepare.prepare("cifar10", archive, data_dir=data_dir, verbose=False)
    archive = os.path.join(work_dir, "cifar-100-python.tar.gz")
    splits = write_cifar100(archive, train_size, test_size, seed=seed + 1)
    prepare.prepare("cifar100", archive, data_dir=data_dir, verbose=False)
    return {
        "cifar10": {"train": (hwc(train_x), train_y),
                    "test": (hwc(test_x), test_y)},
        "cifar100": {s: (hwc(x), f) for s, (x, _, f) in splits.items()},
    }


def _jpeg(rng, height, width):
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels, quality=95).numpy()


def write_imagenet_manual(manual_dir, per_class=3, seed=0):
    """Tiny `ILSVRC2012_img_train.tar` (3 classes of `per_class` JPEGs, in
    class tars) and `ILSVRC2012_img_val.tar` (6 JPEGs) in `manual_dir`, the
    layout TFDS's `imagenet2012` builder prepares from; the images are of
    different sizes and aspect ratios. Returns `{split: count}`."""
    rng = np.random.default_rng(seed)
    os.makedirs(manual_dir, exist_ok=True)
    sizes = [(60, 80), (90, 50), (48, 48), (120, 70), (33, 101), (75, 64)]
    classes = ["n01440764", "n01443537", "n01484850"]
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"),
                      "w") as tar:
        for c, synset in enumerate(classes):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as class_tar:
                for i in range(per_class):
                    add(class_tar, f"{synset}_{i}.JPEG",
                        _jpeg(rng, *sizes[(c + i) % len(sizes)]))
            add(tar, f"{synset}.tar", inner.getvalue())
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"),
                      "w") as tar:
        for i, size in enumerate(sizes, 1):
            add(tar, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(rng, *size))
    return {"train": per_class * len(classes), "validation": len(sizes)}
