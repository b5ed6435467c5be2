"""Input pipelines: TFDS image classification datasets and bundled `digits`.

Everything here ends in one function, `build_dataset`, which returns a batched
`tf.data.Dataset` of `(images, labels)`: float32 NHWC images normalised per
channel, and int32 class labels (one-hot float32 when CutMix or MixUp is
requested). The same call serves `model.fit(ds)` under a
`tf.distribute.MirroredStrategy` and `strategy.experimental_distribute_dataset`:
`batch_size` is always the global batch size.

Datasets:

- `"cifar10"`, `"cifar100"`: the recipe of every Factor Transfer
  implementation (4-pixel zero pad, random 32x32 crop, horizontal flip,
  PyTorch-exact `ToTensor` + `Normalize`).
- `"fashion_mnist"`: the same recipe on 28x28 grey images.
- `"imagenet2012"`: torchvision's `RandomResizedCrop(224)` + flip for training,
  `Resize(256)` + `CenterCrop(224)` for evaluation. The archives must be
  downloaded by hand (TFDS cannot fetch them).
- `"digits"`: scikit-learn's bundled 8x8 handwritten digits (1797 real images),
  split 1437/360 (stratified, seeded). Needs no network and no TFDS.
- Any other TFDS image classification dataset by name: images scaled to
  [0, 1] and normalised with mean 0.5 / std 0.5 per channel unless `mean` and
  `std` are given; no geometric augmentation (pass `image_size` when the
  images vary in size).
- Your own images, `"image_folder:<root>"` for a folder of class subfolders
  (`<root>/train/<class>/*.jpg`, `<root>/test/<class>/*.jpg`), read by TFDS's
  `ImageFolder` builder: resized to the first training image's size (or
  `image_size`), normalised with the training split's mean and std, no
  geometric augmentation unless `recipe="cifar"`.

Offline behaviour: a TFDS dataset that is not prepared in `data_dir` is
prepared from local files when they are found (`python -m
ft_keras.prepare_data`), else only downloaded after a quick (~3 s)
reachability probe of its download hosts; if that fails, or
`download=False`, or the dataset needs a manual download,
`DatasetNotPreparedError` is raised with a one-line message within seconds
instead of TFDS's several-minute retry loop.

Modules, each depending only on those above it:

- `image_folder_files`: an image folder's layout listed and checked, its
  images decoded (`ImageFolderError`);
- `image_folder`: the classes, image shape and statistics of an image
  folder, read once and checked;
- `specs`: per-dataset facts (classes, shapes, split sizes, normalisation);
- `transforms`: per-example crops / flips / resizes, Keras augmentation
  layers;
- `options`: `PipelineOptions`, every option of `build_dataset` with its
  default and checks;
- `source_files`: the local files of a dataset prepared offline, read and
  checked (`SourceError`);
- `prepare`: offline preparation from local files
  (`python -m ft_keras.prepare_data`);
- `availability`: on first use, prepare from local files or download after
  a quick probe, or fail in one line (`DatasetNotPreparedError`);
- `pipeline`: `build_dataset`, `split_labels`, `synthetic_dataset`.
"""

from ft_keras.data.availability import DatasetNotPreparedError
from ft_keras.data.image_folder import ImageFolderError
from ft_keras.data.options import PipelineOptions
from ft_keras.data.pipeline import build_dataset
from ft_keras.data.pipeline import split_labels
from ft_keras.data.pipeline import synthetic_dataset
from ft_keras.data.specs import DIGITS_TEST_SIZE
from ft_keras.data.specs import DIGITS_TRAIN_SIZE
from ft_keras.data.specs import input_shape
from ft_keras.data.specs import normalization_stats
from ft_keras.data.specs import num_classes
from ft_keras.data.specs import num_examples
from ft_keras.data.specs import pixel_normalization
from ft_keras.data.transforms import AUGMENTATIONS

# Not public: tests/test_train.py reads the digits arrays through this name.
from ft_keras.data.specs import digits_splits as _digits_splits  # noqa: F401

__all__ = [
    "AUGMENTATIONS",
    "DIGITS_TEST_SIZE",
    "DIGITS_TRAIN_SIZE",
    "DatasetNotPreparedError",
    "ImageFolderError",
    "PipelineOptions",
    "build_dataset",
    "input_shape",
    "normalization_stats",
    "num_classes",
    "num_examples",
    "split_labels",
    "pixel_normalization",
    "synthetic_dataset",
]
