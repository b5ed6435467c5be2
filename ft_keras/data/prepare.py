"""TFDS datasets prepared offline, from files you already have.

    python -m ft_keras.prepare_data fashion_mnist --from /usr/share/datasets/fashion-mnist
    python -m ft_keras.prepare_data cifar10 --from ~/Downloads/cifar-10-python.tar.gz
    python -m ft_keras.prepare_data cifar100 --from cifar-100-binary.tar.gz --data_dir /data/tfds

TFDS downloads `fashion_mnist`, `cifar10` and `cifar100` itself on a machine
with internet. On an air-gapped one (a GPU cluster, a CI runner) this module
gives TFDS's own builder the local files instead of its download URLs, so
the prepared dataset is exactly what `tfds.builder(name).download_and_prepare()`
would have written (same name, version, splits, features, label names and
example order) and every reader of TFDS datasets, `ft_keras.data.build_dataset`
included, reads it as usual.

Accepted sources (a directory holding them, or the archive itself):

- `fashion_mnist`: the four IDX files of Zalando's release
  (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`), gzipped or not.
  Debian and Ubuntu ship them: `apt-get install dataset-fashion-mnist`
  puts them in `/usr/share/datasets/fashion-mnist/`.
- `cifar10`: `cifar-10-python.tar.gz` or `cifar-10-binary.tar.gz` (or their
  extracted `cifar-10-batches-py/` / `cifar-10-batches-bin/` folders).
- `cifar100`: `cifar-100-python.tar.gz` or `cifar-100-binary.tar.gz` (or
  `cifar-100-python/` / `cifar-100-binary/`).

The files are checked before TFDS sees them (IDX headers and sizes, record
sizes, label ranges) and a bad one is named in a one-line
`SourceError`. The python versions are converted record by record to the
binary layout TFDS's CIFAR builder reads (both hold the same bytes: a label,
then the 1024 red, 1024 green and 1024 blue pixels). Reading, checking and
converting the files is `ft_keras.data.source_files`'s work.

`ft_keras.data.availability.ensure_prepared` calls `find_source` and
`prepare` by itself when a dataset is missing from `data_dir` and its files
are in one of `search_paths(name, data_dir)` (for `fashion_mnist`, the
Debian package's folder), so after `apt-get install dataset-fashion-mnist`
nothing else is needed.

Example:

```python
from ft_keras.data import prepare
prepare.prepare("fashion_mnist", "/usr/share/datasets/fashion-mnist",
                data_dir="/tmp/tfds")
```
"""

import argparse
import contextlib
import fcntl
import os
import sys
import tempfile

import tensorflow_datasets as tfds

from ft_keras import _tfds_private
from ft_keras.data import source_files
from ft_keras.data.source_files import SourceError

__all__ = [
    "DATASETS",
    "SourceError",
    "find_source",
    "fix_hint",
    "main",
    "prepare",
    "search_paths",
]


# Where Debian's `dataset-fashion-mnist` package installs the files.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

DATASETS = ("fashion_mnist", "cifar10", "cifar100")


def _check_preparable(name):
    if name not in DATASETS:
        raise ValueError(
            f"Cannot prepare {name!r} from local files: supported datasets "
            f"are {list(DATASETS)}. Received: name={name!r}"
        )


def _root(data_dir):
    return os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)


def search_paths(name, data_dir=None):
    """Where `find_source` looks for the files of `name`, in order:
    `<data_dir>/downloads/manual` (TFDS's place for hand-downloaded files),
    then, for `fashion_mnist`, Debian's `/usr/share/datasets/fashion-mnist`.
    """
    _check_preparable(name)
    paths = [os.path.join(_root(data_dir), "downloads", "manual")]
    if name == "fashion_mnist":
        paths.append(DEBIAN_FASHION_MNIST)
    return paths


def fix_hint(name, data_dir=None):
    """The commands that make `name` available offline, as one sentence."""
    _check_preparable(name)
    root = _root(data_dir)
    steps = []
    if name == "fashion_mnist":
        steps.append("apt-get install dataset-fashion-mnist (Debian/Ubuntu; "
                     "then it is prepared automatically)")
    steps.append(
        f"python -m ft_keras.prepare_data {name} "
        f"--from <{source_files.ARCHIVES[name]}> --data_dir {root}"
    )
    steps.append(
        "on a machine with internet, python -c \"import tensorflow_datasets "
        f"as tfds; tfds.builder('{name}', data_dir='{root}')"
        f".download_and_prepare()\" and copy {root}/{name}/ here"
    )
    return "; or ".join(steps)


# --------------------------------------------------------------------------
# Finding and preparing.


def find_source(name, data_dir=None):
    """Looks for the files of `name` in `search_paths(name, data_dir)`.

    Returns:
        `(path or None, paths tried)`.
    """
    tried = search_paths(name, data_dir)
    for path in tried:
        if source_files.is_source(name, path):
            return path, tried
    return None, tried


@contextlib.contextmanager
def _lock(root, name):
    """One preparation of `name` at a time in `root`, across processes."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{name}.prepare.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(name, source, data_dir=None, verbose=True):
    """Prepares TFDS dataset `name` in `data_dir` from local files.

    Runs TFDS's own builder for `name`; only where its files come from
    changes. Nothing is done if the dataset is already prepared there.

    Args:
        name: `"fashion_mnist"`, `"cifar10"` or `"cifar100"`.
        source: A directory holding the dataset's files, or (CIFAR) the
            archive itself. See the module docstring.
        data_dir: TFDS data directory (default: TFDS's default,
            `~/tensorflow_datasets`).
        verbose: Print one line saying what was prepared.

    Returns:
        The directory of the prepared dataset version.

    Raises:
        SourceError: `source` is missing, incomplete or not the dataset.
        ValueError: `name` is not one of `DATASETS`.
    """
    _check_preparable(name)
    source = os.path.abspath(os.path.expanduser(source))
    if not os.path.exists(source):
        raise SourceError(f"{source} does not exist.")
    root = _root(data_dir)
    with _lock(root, name):
        builder = tfds.builder(name, data_dir=root)
        if builder.is_prepared():
            return str(builder.data_dir)
        # The URL TFDS would download each file from, by file name.
        urls = {info.filename: url for url, info in builder.url_infos.items()}
        with tempfile.TemporaryDirectory(prefix=f"ft_keras_{name}_") as tmp:
            staging = os.path.join(tmp, "manual")
            os.makedirs(staging)
            staged, note = source_files.staged_files(name, source, staging)
            manual = {}
            for registered, path in staged.items():
                link = os.path.join(staging, os.path.basename(path))
                if not os.path.exists(link):
                    os.symlink(path, link)
                manual[urls[registered]] = _tfds_private.url_info(link)
            tfds.disable_progress_bar()  # a log line per example otherwise
            _tfds_private.prepare_from_files(builder, staging, manual, tmp)
        splits = ", ".join(
            f"{k} {v.num_examples}" for k, v in builder.info.splits.items()
        )
        if verbose:
            print(
                f"[ft_keras] prepared {name} in {builder.data_dir} from "
                f"{source} ({note}): {splits}",
                flush=True,
            )
        return str(builder.data_dir)


# --------------------------------------------------------------------------
# Command line: python -m ft_keras.prepare_data.


def main(argv=None):
    """`python -m ft_keras.prepare_data NAME [--from SOURCE] [--data_dir DIR]`.

    Returns the exit status: 0, or 2 after a one-line error on stderr.
    """
    parser = argparse.ArgumentParser(
        prog="python -m ft_keras.prepare_data",
        description="Prepare a TFDS dataset offline from local files.",
    )
    parser.add_argument("name", choices=DATASETS)
    parser.add_argument(
        "--from", dest="source", default=None,
        help="directory of the files, or the CIFAR archive (default: the "
        "first of the dataset's search paths that holds them)",
    )
    parser.add_argument("--data_dir", default=None,
                        help="TFDS data directory (default ~/tensorflow_datasets)")
    args = parser.parse_args(argv)
    source = args.source
    if source is None:
        source, tried = find_source(args.name, args.data_dir)
        if source is None:
            print(
                f"ft_keras: error: no files of {args.name} in "
                f"{', '.join(tried)}; {fix_hint(args.name, args.data_dir)}.",
                file=sys.stderr,
            )
            return 2
    try:
        prepare(args.name, source, args.data_dir)
    except SourceError as error:
        print(f"ft_keras: error: {' '.join(str(error).split())}",
              file=sys.stderr)
        return 2
    return 0

