"""Offline preparation: TFDS's own builders fed with local files."""

import gzip
import os
import socket
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ft_keras import data
from ft_keras.data import availability
from ft_keras.data import prepare
from ft_keras.data import source_files

import _datasets
from _datasets import CIFAR10_NAMES
from _datasets import CIFAR100_COARSE
from _datasets import CIFAR100_FINE
from _datasets import HAVE_DEBIAN
from _datasets import forbid_download
from _datasets import hwc
from _datasets import needs_debian
from _datasets import write_cifar10
from _datasets import write_cifar100


# --------------------------------------------------------------------------
# Tiny CIFAR archives in both of the official layouts (`_datasets`).


def read_tfds(name, data_dir, split):
    ds = tfds.builder(name, data_dir=str(data_dir)).as_dataset(
        split=split, shuffle_files=False)
    return sorted((tfds.as_numpy(ds)), key=lambda e: e["id"])


@pytest.mark.parametrize("kind", ["python", "binary"])
def test_cifar10_archive_prepares_to_what_tfds_reads(tmp_path, kind):
    archive = tmp_path / f"cifar-10-{kind}.tar.gz"
    (train_x, train_y), (test_x, (test_y,)) = write_cifar10(archive, kind)
    prepare.prepare("cifar10", str(archive), data_dir=tmp_path / "tfds",
                         verbose=False)

    builder = tfds.builder("cifar10", data_dir=str(tmp_path / "tfds"))
    assert builder.is_prepared()
    assert builder.info.features["label"].names == CIFAR10_NAMES
    assert builder.info.splits["train"].num_examples == 15
    assert builder.info.splits["test"].num_examples == 3
    train = read_tfds("cifar10", tmp_path / "tfds", "train")
    assert [e["id"] for e in train] == [f"train_{i:05d}".encode()
                                       for i in range(15)]
    np.testing.assert_array_equal(np.stack([e["image"] for e in train]),
                                  hwc(train_x))
    np.testing.assert_array_equal([e["label"] for e in train], train_y)
    test = read_tfds("cifar10", tmp_path / "tfds", "test")
    np.testing.assert_array_equal(np.stack([e["image"] for e in test]),
                                  hwc(test_x))
    np.testing.assert_array_equal([e["label"] for e in test], test_y)

    # ... and the usual pipeline reads it offline.
    (x, y), = [(x.numpy(), y.numpy()) for x, y in data.build_dataset(
        "cifar10", "test", batch_size=3, training=False,
        data_dir=str(tmp_path / "tfds"), download=False)]
    mean, std = data.normalization_stats("cifar10")
    expected = (hwc(test_x) / 255.0 - np.array(mean)) / np.array(std)
    order = np.argsort([e["id"] for e in test])  # TFDS reads in its order
    assert sorted(y.tolist()) == sorted(test_y.tolist())
    assert np.allclose(np.sort(x.reshape(3, -1), axis=0),
                       np.sort(expected[order].reshape(3, -1), axis=0),
                       atol=1e-5)


def test_cifar10_python_and_binary_versions_prepare_the_same_dataset(
    tmp_path,
):
    for kind in ("python", "binary"):
        write_cifar10(tmp_path / f"cifar-10-{kind}.tar.gz", kind, seed=7)
        prepare.prepare("cifar10", str(tmp_path / f"cifar-10-{kind}.tar.gz"),
                             data_dir=tmp_path / kind, verbose=False)
    for split in ("train", "test"):
        a = read_tfds("cifar10", tmp_path / "python", split)
        b = read_tfds("cifar10", tmp_path / "binary", split)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x["id"] == y["id"] and x["label"] == y["label"]
            np.testing.assert_array_equal(x["image"], y["image"])


def test_cifar100_python_archive_keeps_fine_and_coarse_labels(tmp_path):
    fine, coarse = CIFAR100_FINE, CIFAR100_COARSE
    splits = write_cifar100(tmp_path / "cifar-100-python.tar.gz",
                            train_size=5, test_size=2, seed=1)
    prepare.prepare("cifar100", str(tmp_path), data_dir=tmp_path / "tfds",
                         verbose=False)  # the directory holding the archive
    builder = tfds.builder("cifar100", data_dir=str(tmp_path / "tfds"))
    assert builder.info.features["label"].names == fine
    assert builder.info.features["coarse_label"].names == coarse
    for split, (images, c, f) in splits.items():
        examples = read_tfds("cifar100", tmp_path / "tfds", split)
        np.testing.assert_array_equal([e["label"] for e in examples], f)
        np.testing.assert_array_equal([e["coarse_label"] for e in examples], c)
        np.testing.assert_array_equal(np.stack([e["image"] for e in examples]),
                                      hwc(images))


def test_extracted_folder_is_a_source_too(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar10(archive, "binary")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    prepare.prepare("cifar10", str(tmp_path / "extracted"),
                         data_dir=tmp_path / "tfds", verbose=False)
    assert tfds.builder("cifar10", data_dir=str(tmp_path / "tfds")).is_prepared()


def test_bad_cifar_sources_name_the_file_and_the_problem(tmp_path):
    truncated = tmp_path / "t" / "cifar-10-binary.tar.gz"
    truncated.parent.mkdir()
    write_cifar10(truncated, "binary", truncate=True)
    with pytest.raises(prepare.SourceError,
                       match=r"data_batch_2.bin has \d+ bytes, not a positive "
                       r"multiple of the 3073-byte cifar10 record"):
        prepare.prepare("cifar10", str(truncated), data_dir=tmp_path / "a")

    wrong = tmp_path / "w" / "cifar-10-python.tar.gz"
    wrong.parent.mkdir()
    write_cifar10(wrong, "python")
    with pytest.raises(prepare.SourceError, match="does not hold cifar100"):
        prepare.prepare("cifar100", str(wrong), data_dir=tmp_path / "b")

    not_tar = tmp_path / "cifar-10-python.tar.gz"
    not_tar.write_bytes(b"not an archive")
    with pytest.raises(prepare.SourceError, match="not a readable tar"):
        prepare.prepare("cifar10", str(not_tar), data_dir=tmp_path / "c")
    with pytest.raises(prepare.SourceError, match="does not exist"):
        prepare.prepare("cifar10", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"supported datasets are \['fashion_mnist'"):
        prepare.prepare("mnist", str(tmp_path))
    # Nothing half-prepared is left behind.
    for name in ("a", "b", "c"):
        assert not tfds.builder("cifar10", data_dir=str(tmp_path / name)).is_prepared()


def test_cli_prepares_and_reports_errors_in_one_line(tmp_path, capsys):
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar10(archive, "python")
    code = prepare.main(["cifar10", "--from", str(archive),
                              "--data_dir", str(tmp_path / "tfds")])
    assert code == 0
    assert "prepared cifar10" in capsys.readouterr().out
    assert prepare.main(["cifar10", "--from", str(tmp_path / "missing"),
                              "--data_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ft_keras: error:") and "\n" not in err
    # Without --from: the search paths, named when empty.
    assert prepare.main(["cifar100", "--data_dir",
                              str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert os.path.join(str(tmp_path / "y"), "downloads", "manual") in err


def test_python_m_ft_keras_prepare_data_is_the_documented_command(
    tmp_path,
):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar10(archive, "binary")
    result = subprocess.run(
        [sys.executable, "-m", "ft_keras.prepare_data", "cifar10",
         "--from", str(archive), "--data_dir", str(tmp_path / "tfds")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "prepared cifar10" in result.stdout
    assert tfds.builder("cifar10", data_dir=str(tmp_path / "tfds")).is_prepared()


def test_cifar_archive_in_manual_dir_is_prepared_on_first_use(tmp_path):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    write_cifar10(manual / "cifar-10-python.tar.gz", "python")
    ds = data.build_dataset("cifar10", "train", batch_size=5, training=False,
                            data_dir=str(tmp_path), download=False)
    assert sum(int(y.shape[0]) for _, y in ds) == 15


# --------------------------------------------------------------------------
# Fashion-MNIST.


def write_idx(path, magic, dims, payload, compress=True):
    header = np.array([magic, *dims], ">u4").tobytes()
    raw = header + payload
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_bad_idx_files_name_the_file_and_the_problem(tmp_path):
    images = np.zeros((5, 28, 28), np.uint8).tobytes()
    labels = np.zeros(5, np.uint8).tobytes()
    names = list(source_files._IDX_FILES)
    for name in names:
        magic = source_files._IDX_FILES[name][0]
        dims = (5, 28, 28) if magic == 2051 else (5,)
        write_idx(tmp_path / f"{name}.gz", magic, dims,
                  images if magic == 2051 else labels)
    with pytest.raises(prepare.SourceError,
                       match="holds 5 examples; Fashion-MNIST's "
                       "train-images-idx3-ubyte holds 60000"):
        prepare.prepare("fashion_mnist", str(tmp_path),
                             data_dir=tmp_path / "tfds")
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", 2049, (60000,), b"")
    with pytest.raises(prepare.SourceError,
                       match="magic number 2049, expected 2051"):
        prepare.prepare("fashion_mnist", str(tmp_path),
                             data_dir=tmp_path / "tfds")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(prepare.SourceError,
                       match="lacks t10k-labels-idx1-ubyte"):
        prepare.prepare("fashion_mnist", str(tmp_path),
                             data_dir=tmp_path / "tfds")


def test_missing_fashion_mnist_fails_fast_naming_paths_and_fixes(
    tmp_path, monkeypatch
):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was probed")

    monkeypatch.setattr(socket, "create_connection", no_network)
    forbid_download(monkeypatch)
    monkeypatch.setattr(prepare, "DEBIAN_FASHION_MNIST",
                        str(tmp_path / "no-debian"))
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.build_dataset("fashion_mnist", "train", batch_size=8,
                           training=True, data_dir=str(tmp_path),
                           download=False)
    message = str(info.value)
    assert "\n" not in message and "'fashion_mnist'" in message
    assert str(tmp_path / "downloads" / "manual") in message
    assert str(tmp_path / "no-debian") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "python -m ft_keras.prepare_data fashion_mnist" in message
    assert "download_and_prepare()" in message


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    """Fashion-MNIST prepared on first use by `build_dataset` itself, from
    Debian's files."""
    return _datasets.fashion_mnist_dir(tmp_path_factory)


@needs_debian
def test_fashion_mnist_is_prepared_from_debian_files_on_first_use(
    fashion_dir,
):
    root = fashion_dir
    builder = tfds.builder("fashion_mnist", data_dir=root)
    assert builder.is_prepared()
    assert builder.info.features["label"].names[:3] == [
        "T-shirt/top", "Trouser", "Pullover"]
    assert {s: builder.info.splits[s].num_examples
            for s in ("train", "test")} == {"train": 60000, "test": 10000}


@needs_debian
def test_fashion_mnist_splits_are_full_balanced_and_normalised(
        fashion_dir, monkeypatch):
    root = fashion_dir

    def prepare_again(*args, **kwargs):
        raise AssertionError("prepared again")

    monkeypatch.setattr(availability, "prepare", prepare_again)
    for split, size in (("train", 60000), ("test", 10000)):
        ds = data.build_dataset("fashion_mnist", split, batch_size=5000,
                                training=False, data_dir=root)
        x, y = map(np.concatenate, zip(*[(a.numpy(), b.numpy())
                                         for a, b in ds]))
        assert x.shape == (size, 28, 28, 1)
        assert np.bincount(y).tolist() == [size // 10] * 10
        if split == "train":
            # The recipe's mean/std are the train split's.
            assert abs(x.mean()) < 1e-3 and abs(x.std() - 1) < 1e-3


@needs_debian
def test_fashion_mnist_train_is_pad4_crop_flip(fashion_dir):
    root = fashion_dir
    kwargs = dict(batch_size=64, seed=3, deterministic=True, data_dir=root)
    (train, _), = [(x.numpy(), y.numpy()) for x, y in data.build_dataset(
        "fashion_mnist", "train", training=True, shuffle_buffer=0,
        **kwargs).take(1)]
    (plain, _), = [(x.numpy(), y.numpy()) for x, y in data.build_dataset(
        "fashion_mnist", "train", training=False, **kwargs).take(1)]
    pad_value = -0.2860 / 0.3530
    flipped = shifted = 0
    for t, p in zip(train, plain):
        padded = np.full((36, 36, 1), pad_value, np.float32)
        padded[4:32, 4:32] = p
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9)
                   for f in (False, True)
                   if np.allclose(t, (padded[dy:dy + 28, dx:dx + 28][:, ::-1]
                                      if f else padded[dy:dy + 28, dx:dx + 28]),
                                  atol=1e-5)]
        assert matches, "not a padded crop (or its mirror) of the image"
        flipped += all(f for _, _, f in matches)
        shifted += all((dy, dx) != (4, 4) for dy, dx, _ in matches)
    assert flipped > 10 and shifted > 40
