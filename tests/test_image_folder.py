"""Your own images: a folder of class subfolders is a dataset by name, read
by TFDS's ImageFolder through `build_dataset`, checked with one-line errors,
and run through every stage of the runner."""

import json
import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from ft_keras import cli
from ft_keras import config
from ft_keras import data
from ft_keras import deployment as ft_deployment
from ft_keras import experiment as ft_experiment
from ft_keras import export as ft_export
from ft_keras.data import image_folder
from ft_keras.data import transforms

REPO = pathlib.Path(__file__).resolve().parent.parent
CLASSES = ("cat", "dog", "fox")


def write_folder(root, train=4, test=2, size=(12, 12), channels=3, seed=0):
    """`root/{train,test}/{cat,dog,fox}/{i}.png` of random pixels, class `k`
    brighter in channel `k`; returns `{split: (images, labels)}`."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", train), ("test", test)):
        images, labels = [], []
        for label, name in enumerate(CLASSES):
            os.makedirs(root / split / name)
            for i in range(count):
                image = rng.integers(0, 200, (*size, channels), np.uint8)
                image[..., label % channels] += 55
                write_png(root / split / name / f"{i}.png", image)
                images.append(image)
                labels.append(label)
        arrays[split] = (np.stack(images), np.array(labels, np.int32))
    return arrays


def write_png(path, image):
    tf.io.write_file(str(path), tf.io.encode_png(image))


def name_of(root):
    return image_folder.dataset_name(root)


def everything(ds):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def match(outputs, expected):
    """Index in `expected` of each output image (each exactly one)."""
    distance = np.abs(outputs[:, None] - expected[None]).reshape(
        len(outputs), len(expected), -1
    )
    nearest = distance.max(-1).argmin(1)
    assert distance.max(-1).min(1).max() < 1e-5
    assert len(set(nearest)) == len(nearest)
    return nearest


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    return root, write_folder(root)


# --------------------------------------------------------------------------
# Facts and pixels.


def test_classes_shape_and_split_sizes_come_from_the_folder(folder):
    root, _ = folder
    name = name_of(root)
    assert data.num_classes(name) == 3
    assert data.input_shape(name) == (12, 12, 3)
    assert data.num_examples(name, "train") == 12
    assert data.num_examples(name, "test") == 6
    assert data.num_examples(name, "val") is None
    assert image_folder.describe(name).classes == CLASSES


def test_mean_and_std_are_the_training_pixels(folder):
    root, arrays = folder
    pixels = arrays["train"][0].reshape(-1, 3) / 255.0
    mean, std = data.normalization_stats(name_of(root))
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-9)
    assert data.pixel_normalization(name_of(root)) == (255, mean, std)


def test_eval_batches_are_the_normalised_images_with_their_labels(folder):
    root, arrays = folder
    name = name_of(root)
    mean, std = data.normalization_stats(name)
    ds = data.build_dataset(name, "test", batch_size=4, training=False)
    images, labels = everything(ds)
    assert images.shape == (6, 12, 12, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32
    raw, raw_labels = arrays["test"]
    expected = (raw / np.float32(255) - np.float32(mean)) / np.float32(std)
    index = match(images, expected.astype(np.float32))
    np.testing.assert_array_equal(labels, raw_labels[index])
    # The last batch is kept when evaluating, dropped when training.
    assert [len(y) for _, y in ds] == [4, 2]


def test_train_batches_are_seeded_shuffled_and_full(folder):
    root, arrays = folder
    kwargs = dict(batch_size=4, training=True, seed=3, deterministic=True)
    ds = data.build_dataset(name_of(root), "train", **kwargs)
    images, labels = everything(ds)
    assert images.shape == (12, 12, 12, 3)
    assert sorted(labels) == sorted(arrays["train"][1])
    again, _ = everything(data.build_dataset(name_of(root), "train", **kwargs))
    np.testing.assert_array_equal(images, again)
    # The generic recipe: the training images are the images themselves.
    mean, std = data.normalization_stats(name_of(root))
    raw = (arrays["train"][0] / np.float32(255) - np.float32(mean)) / std
    match(images, raw.astype(np.float32))


def test_cifar_recipe_pads_crops_and_flips_a_folder(folder):
    root, arrays = folder
    ds = data.build_dataset(
        name_of(root),
        "train",
        batch_size=12,
        training=True,
        seed=1,
        deterministic=True,
        recipe="cifar",
        mean=0.0,
        std=1.0,
    )
    images = np.round(everything(ds)[0] * 255).astype(np.uint8)
    padded = np.pad(arrays["train"][0], [(0, 0), (4, 4), (4, 4), (0, 0)])
    windows = {
        w.tobytes()
        for image in padded
        for top in range(9)
        for left in range(9)
        for w in (
            image[top : top + 12, left : left + 12],
            image[top : top + 12, left : left + 12][:, ::-1],
        )
    }
    assert all(image.tobytes() in windows for image in images)
    originals = {image.tobytes() for image in arrays["train"][0]}
    assert sum(image.tobytes() not in originals for image in images) > 6
    with pytest.raises(ValueError, match="`recipe` 'imagenet' cannot be used"):
        data.build_dataset(
            name_of(root),
            "train",
            batch_size=4,
            training=True,
            recipe="imagenet",
        )


def test_other_sizes_and_greys_become_the_first_images_shape(tmp_path):
    root = tmp_path / "mixed"
    arrays = write_folder(root, train=2, test=1)
    grey = np.arange(10 * 14, dtype=np.uint8).reshape(10, 14, 1)
    write_png(root / "train" / "fox" / "z.png", grey)
    tf.io.write_file(
        str(root / "test" / "dog" / "z.jpg"),
        tf.io.encode_jpeg(np.repeat(grey, 3, -1)),
    )
    name = name_of(root)
    assert data.input_shape(name) == (12, 12, 3)
    ds = data.build_dataset(
        name, "train", batch_size=8, training=False, mean=0.0, std=1.0
    )
    images, _ = everything(ds)
    assert images.shape == (7, 12, 12, 3)
    resized = transforms.resize(np.repeat(grey, 3, -1), (12, 12)).numpy()
    match(
        np.round(images * 255),
        np.concatenate([arrays["train"][0], resized[None]]).astype(np.float32),
    )
    ds = data.build_dataset(
        name, "test", batch_size=8, training=False, image_size=(6, 8)
    )
    assert everything(ds)[0].shape == (4, 6, 8, 3)


def test_a_grey_folder_has_one_channel(tmp_path):
    root = tmp_path / "grey"
    arrays = write_folder(root, train=2, test=1, channels=1)
    assert data.input_shape(name_of(root)) == (12, 12, 1)
    mean, _ = data.normalization_stats(name_of(root))
    np.testing.assert_allclose(mean, [arrays["train"][0].mean() / 255])


# --------------------------------------------------------------------------
# Read once: the JSON beside the data.


def test_folder_is_decoded_once_then_again_when_a_file_changes(
    folder, monkeypatch
):
    root, _ = folder
    name = name_of(root)
    first = image_folder.describe(name)
    saved = json.loads((root / image_folder.CACHE_FILE).read_text())
    assert saved["info"]["classes"] == list(CLASSES)

    def fail(*args):
        raise AssertionError("decoded the images again")

    image_folder._MEMORY.clear()  # a new process: the JSON file answers
    with monkeypatch.context() as patch:
        patch.setattr(image_folder, "_measure", fail)
        assert image_folder.describe(name) == first
    write_png(
        root / "train" / "cat" / "new.png", np.zeros((12, 12, 3), np.uint8)
    )
    changed = image_folder.describe(name)
    assert dict(changed.splits)["train"] == 13
    assert changed.mean[0] < first.mean[0]
    assert data.num_examples(name, "train") == 13


# --------------------------------------------------------------------------
# Bad folders: one line naming the path and the fix.


def missing_root(root):
    return root / "nowhere", "does not exist: set dataset.path"


def no_train(root):
    (root / "train").rename(root / "training")
    return root, r"has no train/ folder \(it holds test/, training/\)"


def no_test(root):
    for path in (root / "test").rglob("*.png"):
        path.unlink()
    for name in CLASSES:
        (root / "test" / name).rmdir()
    return root, "has no evaluation split: no test/<class>/ folders"


def no_classes(root):
    for name in CLASSES:
        for path in (root / "train" / name).iterdir():
            path.rename(root / "train" / f"{name}_{path.name}")
        (root / "train" / name).rmdir()
    return root, r"/train has no class folders: put each class's images in"


def missing_in_test(root):
    for path in (root / "test" / "fox").iterdir():
        path.unlink()
    (root / "test" / "fox").rmdir()
    return root, r"class 'fox' is in train/ but not in test/"


def extra_in_test(root):
    (root / "test" / "owl").mkdir()
    write_png(root / "test" / "owl" / "a.png", np.zeros((12, 12, 3), np.uint8))
    return root, r"class 'owl' is in test/ but not in train/"


def empty_class(root):
    for path in (root / "train" / "dog").iterdir():
        path.unlink()
    (root / "train" / "dog" / "a.webp").write_bytes(b"RIFF")
    return root, (
        r"/train/dog holds no .jpg, .jpeg or .png image \(it holds "
        r"1 other file\(s\), e.g. a.webp: convert them\)"
    )


def undecodable_train(root):
    (root / "train" / "dog" / "2.png").write_bytes(b"not an image")
    return root, r"/train/dog/2.png cannot be read as an image \("


def undecodable_test(root):
    (root / "test" / "cat" / "b.jpg").write_bytes(b"\xff\xd8 broken")
    return root, r"/test/cat/b.jpg cannot be read as an image \("


def one_class(root):
    for split in ("train", "test"):
        for name in CLASSES[1:]:
            for path in (root / split / name).iterdir():
                path.unlink()
            (root / split / name).rmdir()
    return root, "holds one class folder"


@pytest.mark.parametrize(
    "break_it",
    [
        missing_root,
        no_train,
        no_test,
        no_classes,
        missing_in_test,
        extra_in_test,
        empty_class,
        undecodable_train,
        undecodable_test,
        one_class,
    ],
    ids=lambda f: f.__name__,
)
def test_bad_folder_is_one_line_naming_the_path(folder, break_it):
    root, _ = folder
    root, message = break_it(root)
    with pytest.raises(data.ImageFolderError, match=message) as error:
        data.build_dataset(
            name_of(root), "train", batch_size=2, training=False
        )
    assert "\n" not in str(error.value) and str(root) in str(error.value)


def test_missing_split_and_missing_path_say_what_to_set(folder):
    root, _ = folder
    with pytest.raises(
        data.ImageFolderError,
        match=r"no split folder 'val' \(its splits: train, "
        r"test;.*dataset.test_split",
    ):
        data.build_dataset(name_of(root), "val", batch_size=2, training=False)
    with pytest.raises(
        data.ImageFolderError,
        match=r"names no folder: use name='image_folder:",
    ):
        data.num_classes("image_folder")


# --------------------------------------------------------------------------
# gin and the runner.


def test_dataset_path_resolves_to_the_name_and_reads_back(folder, monkeypatch):
    root, _ = folder
    monkeypatch.chdir(root.parent)
    cfg = config.DataConfig(name="image_folder", path="images")
    assert (cfg.name, cfg.path) == (f"image_folder:{root}", str(root))
    assert config.DataConfig(name=cfg.name, path=cfg.path) == cfg
    assert config.DataConfig(name=cfg.name) == cfg
    # One network sees both splits: the training size is the evaluation's.
    sized = config.DataConfig(
        name="image_folder", path="images", options={"image_size": 8}
    )
    assert sized.eval_options == {"image_size": 8}
    assert data.input_shape(sized.name, image_size=8) == (8, 8, 3)
    with pytest.raises(
        ValueError,
        match=r"needs `dataset.path`.*"
        r"IMAGE_FOLDER = '/path/to/root'.*path=None",
    ):
        config.DataConfig(name="image_folder")
    with pytest.raises(ValueError, match=r"not of 'cifar10'"):
        config.DataConfig(name="cifar10", path="images")
    with pytest.raises(ValueError, match=r"name two folders"):
        config.DataConfig(name=cfg.name, path="elsewhere")


GIN_FILES = ["gin/quickstart.gin", "gin/data/image_folder.gin"]


def test_gin_include_needs_the_folder_before_any_work(clean_gin, capsys):
    assert cli.dry_run(GIN_FILES, []) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ft_keras: error:") and "\n" not in error
    assert "IMAGE_FOLDER = '/path/to/root'" in error


def test_gin_include_dry_runs_on_the_folders_shape(folder, clean_gin, capsys):
    root, _ = folder
    bindings = [
        f"IMAGE_FOLDER = '{root}'",
        "experiment.stages = ['teacher', 'paraphraser', 'student']",
    ]
    assert cli.dry_run(GIN_FILES, bindings) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "on synthetic 12x12x3 data" in out
    assert "every stage built and stepped" in out


def test_every_stage_runs_on_a_folder(folder, clean_gin, tmp_path):
    root, _ = folder
    cli.parse_config(
        GIN_FILES,
        [
            f"IMAGE_FOLDER = '{root}'",
            # The quickstart's student as the teacher too: every stage,
            # export and deployment run on the folder as with any network.
            "teacher/network.name = 'wrn10_1'",
            "training.epochs = 1",
            "paraphraser/training.epochs = 1",
            "dataset.batch_size = 4",
            "dataset.eval_batch_size = 6",
            "experiment.representative_batches = 1",
        ],
    )
    experiment = ft_experiment.Experiment(tmp_path / "run")
    assert experiment.settings.dataset.name == f"image_folder:{root}"
    assert experiment.steps_per_epoch == 3  # 12 images, batches of 4
    assert experiment.student.input_shape == (None, 12, 12, 3)
    results = experiment.run()
    assert set(results["evaluation"]) == {"teacher", "student", "baseline"}
    # Each network's top-1 is its accuracy on the folder's 6 test images,
    # recomputed here from the model file the stage saved.
    test = data.build_dataset(f"image_folder:{root}", "test", batch_size=6,
                              training=False)
    ((x, y),) = [(a.numpy(), b.numpy()) for a, b in test]
    assert len(y) == 6
    for role, scores in results["evaluation"].items():
        model = keras.models.load_model(tmp_path / "run" / role / "model.keras",
                                        compile=False)
        correct = int(np.sum(np.argmax(model(x, training=False), axis=1) == y))
        assert scores["top1"] == pytest.approx(correct / 6, abs=1e-6), role
    export = tmp_path / "run" / "export"
    assert (export / "student_float.tflite").exists()
    assert (export / "saved_model" / "saved_model.pb").exists()
    # The serving graph normalises with the folder's training statistics.
    name = experiment.settings.dataset.name
    assert ft_export.normalization(
        name, experiment.settings.dataset.eval_options
    ) == data.pixel_normalization(f"image_folder:{root}")
    # The deployment report on an image folder: each network's float files,
    # run in their own runtimes on raw images, score its top-1.
    report = ft_deployment.deployment(tmp_path / "run", latency_runs=2,
                                      onnx=False)
    rows = [r for r in report["rows"]
            if r["file_key"] in ("saved_model", "tflite_float")]
    assert {r["role"] for r in rows} == {"teacher", "student", "baseline"}
    for row in rows:
        assert row["top1"] == pytest.approx(
            results["evaluation"][row["role"]]["top1"], abs=1e-6), row


def test_image_size_option_sizes_the_networks(folder, clean_gin, capsys):
    """`dataset.options = {'image_size': ...}` resizes the folder's images,
    and the runner builds its networks for that size."""
    root, _ = folder
    bindings = [
        f"IMAGE_FOLDER = '{root}'",
        "dataset.options = {'image_size': 16, 'recipe': 'cifar'}",
        "experiment.stages = ['teacher', 'paraphraser', 'student']",
    ]
    assert cli.dry_run(GIN_FILES, bindings) == 0, capsys.readouterr().err
    assert "on synthetic 16x16x3 data" in capsys.readouterr().out
