"""The dataset's settings: `DataConfig`, gin's `dataset`."""

import dataclasses

import gin

from ft_keras.config._frozen import set_field
from ft_keras.data import image_folder


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The dataset, and the batch size *per replica*. Gin: `dataset`.

    Args:
        name: A dataset of `ft_keras.data.build_dataset` (required), or
            `'image_folder'` with `path`: read back as
            `'image_folder:<absolute path>'`.
        path: The folder of `name='image_folder'`, holding
            `train/<class>/*.jpg` and `test/<class>/*.jpg`
            (`ft_keras.data.image_folder`).
        data_dir: TFDS's data directory (None: TFDS's default).
        batch_size: Training examples per replica and step.
        eval_batch_size: Evaluation batch per replica (None: `batch_size`).
        train_split, test_split: The TFDS splits (split folders of an image
            folder).
        options: `build_dataset` options of the training split (e.g.
            `{'recipe': 'cifar', 'augment': 'randaugment'}`).
        eval_options: Those of the test split (e.g. `{'mean': ..., 'std': ...}`).
            An `image_size` in `options` is the test split's too (the
            runner builds one network for it), unless given here.
    """

    name: str
    path: str = None
    data_dir: str = None
    batch_size: int = 128
    eval_batch_size: int = None
    train_split: str = "train"
    test_split: str = "test"
    options: dict = None
    eval_options: dict = None

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(
            self.batch_size, int
        ) or self.batch_size < 1:
            raise ValueError(
                "`dataset.batch_size` must be a positive integer (per "
                f"replica). Received: batch_size={self.batch_size!r}"
            )
        self._resolve_image_folder()
        set_field(self, "eval_batch_size", self.eval_batch_size or self.batch_size)
        set_field(self, "options", dict(self.options or {}))
        set_field(self, "eval_options", dict(self.eval_options or {}))
        if "image_size" in self.options:
            # One network sees both splits (an image folder, a generic TFDS
            # dataset or ImageNet: the sizes `image_size` may change).
            self.eval_options.setdefault(
                "image_size", self.options["image_size"]
            )

    def _resolve_image_folder(self):
        """`name='image_folder'` + `path` -> `'image_folder:<abs path>'`,
        the name every `ft_keras.data` function takes; a name of that form
        fills in `path`, so `Settings.to_gin` reads back equal."""
        if not image_folder.is_image_folder(self.name):
            if self.path is not None:
                raise ValueError(
                    "`dataset.path` is the folder of `dataset.name = "
                    f"'image_folder'`, not of {self.name!r}: remove it, or "
                    f"set dataset.name = 'image_folder'. Received: "
                    f"path={self.path!r}"
                )
            return
        if self.name == image_folder.NAME:
            if self.path is None or self.path is gin.REQUIRED:
                raise ValueError(
                    "`dataset.name = 'image_folder'` needs `dataset.path`, "
                    "the folder holding train/<class>/*.jpg and "
                    "test/<class>/*.jpg: with gin/data/image_folder.gin, "
                    "--gin_bindings=\"IMAGE_FOLDER = '/path/to/root'\". "
                    f"Received: path={'gin.REQUIRED' if self.path else None}"
                )
            name = image_folder.dataset_name(self.path)
        else:
            name = image_folder.dataset_name(image_folder.root_of(self.name))
            if self.path is not None and (
                image_folder.dataset_name(self.path) != name
            ):
                raise ValueError(
                    f"`dataset.path` and `dataset.name` name two folders: "
                    f"give one. Received: name={self.name!r}, "
                    f"path={self.path!r}"
                )
        set_field(self, "name", name)
        set_field(self, "path", image_folder.root_of(name))
