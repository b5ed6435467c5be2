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
then the 1024 red, 1024 green and 1024 blue pixels).

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
import dataclasses
import fcntl
import gzip
import hashlib
import io
import os
import pickle
import sys
import tarfile
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from ft_keras import _tfds_private

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

_IDX_FILES = {
    # name: (IDX magic, number of examples)
    "train-images-idx3-ubyte": (2051, 60_000),
    "train-labels-idx1-ubyte": (2049, 60_000),
    "t10k-images-idx3-ubyte": (2051, 10_000),
    "t10k-labels-idx1-ubyte": (2049, 10_000),
}
# sha256 of the uncompressed files of Zalando's release (identical in
# Debian's package, which only re-gzips them without the file name).
_IDX_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


@dataclasses.dataclass(frozen=True)
class _Cifar:
    """One CIFAR dataset: its archives and the binary layout TFDS reads."""

    python_dir: str  # folder inside the python archive
    binary_dir: str  # folder inside the binary archive (TFDS's `prefix`)
    train_files: tuple  # binary names; python names drop ".bin"
    test_files: tuple
    label_names: tuple  # binary label-name files, one per label byte
    python_label_keys: tuple  # pickle keys of those labels, same order
    python_meta_keys: tuple  # keys of the names in the python `meta` file
    num_classes: tuple  # per label byte


_CIFAR = {
    "cifar10": _Cifar(
        python_dir="cifar-10-batches-py",
        binary_dir="cifar-10-batches-bin",
        train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        test_files=("test_batch.bin",),
        label_names=("batches.meta.txt",),
        python_label_keys=(b"labels",),
        python_meta_keys=(b"label_names",),
        num_classes=(10,),
    ),
    "cifar100": _Cifar(
        python_dir="cifar-100-python",
        binary_dir="cifar-100-binary",
        train_files=("train.bin",),
        test_files=("test.bin",),
        label_names=("coarse_label_names.txt", "fine_label_names.txt"),
        python_label_keys=(b"coarse_labels", b"fine_labels"),
        python_meta_keys=(b"coarse_label_names", b"fine_label_names"),
        num_classes=(20, 100),
    ),
}
_CIFAR_PIXELS = 32 * 32 * 3

DATASETS = ("fashion_mnist", "cifar10", "cifar100")

_ARCHIVES = {
    "fashion_mnist": "the four IDX files (train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz)",
    "cifar10": "cifar-10-python.tar.gz or cifar-10-binary.tar.gz",
    "cifar100": "cifar-100-python.tar.gz or cifar-100-binary.tar.gz",
}


class SourceError(ValueError):
    """Local files that cannot be prepared; the message is one line naming
    the file and what is wrong with it."""


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
        f"python -m ft_keras.prepare_data {name} --from <{_ARCHIVES[name]}> "
        f"--data_dir {root}"
    )
    steps.append(
        "on a machine with internet, python -c \"import tensorflow_datasets "
        f"as tfds; tfds.builder('{name}', data_dir='{root}')"
        f".download_and_prepare()\" and copy {root}/{name}/ here"
    )
    return "; or ".join(steps)


# --------------------------------------------------------------------------
# Reading sources.


def _read_maybe_gzip(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise SourceError(f"{path} is not a valid gzip file: {error}")
    return raw


def _idx_paths(directory):
    """`{idx name: path}` of the Fashion-MNIST files in `directory`, or None
    when one is missing."""
    found = {}
    for base in _IDX_FILES:
        for candidate in (base + ".gz", base):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                found[base] = path
                break
        else:
            return None
    return found


def _check_idx(base, path):
    """Validates one IDX file; returns its sha256 (uncompressed)."""
    magic, count = _IDX_FILES[base]
    data = _read_maybe_gzip(path)
    header = 16 if magic == 2051 else 8
    found = int(np.frombuffer(data[:4], ">u4")[0]) if len(data) >= 4 else None
    if found != magic:
        raise SourceError(
            f"{path} is not the IDX file {base}: magic number {found}, "
            f"expected {magic}."
        )
    if len(data) < header:
        raise SourceError(f"{path} is too short to be an IDX file.")
    dims = np.frombuffer(data[:header], ">u4")
    if dims[1] != count:
        raise SourceError(
            f"{path} holds {dims[1]} examples; Fashion-MNIST's {base} holds "
            f"{count} (TFDS's fashion_mnist builder needs the full split)."
        )
    if magic == 2051 and tuple(dims[2:]) != (28, 28):
        raise SourceError(
            f"{path} holds {tuple(int(d) for d in dims[2:])} images; "
            "Fashion-MNIST's are (28, 28)."
        )
    size = header + count * (784 if magic == 2051 else 1)
    if len(data) != size:
        raise SourceError(
            f"{path} has {len(data)} bytes once uncompressed; {base} has "
            f"{size} (truncated or padded file)."
        )
    if magic == 2049:
        labels = np.frombuffer(data, np.uint8, offset=header)
        if labels.max() > 9:
            raise SourceError(
                f"{path} has label {labels.max()}; Fashion-MNIST's are 0-9."
            )
    return hashlib.sha256(data).hexdigest()


def _cifar_members(name, source):
    """Reads a CIFAR source into `(kind, {member basename: bytes})`, kind
    being "python" or "binary"."""
    info = _CIFAR[name]
    wanted = {
        "binary": set(info.train_files + info.test_files + info.label_names),
        "python": {f[: -len(".bin")] for f in info.train_files + info.test_files}
        | {"meta" if name == "cifar100" else "batches.meta"},
    }
    folders = {"binary": info.binary_dir, "python": info.python_dir}

    def pick(named):
        """`named`: {relative path: reader}. Returns the complete layout."""
        for kind in ("python", "binary"):
            members = {}
            for path, read in named.items():
                parts = path.replace("\\", "/").strip("/").split("/")
                if (
                    len(parts) >= 2
                    and parts[-2] == folders[kind]
                    and parts[-1] in wanted[kind]
                ):
                    members[parts[-1]] = read
            if set(members) == wanted[kind]:
                return kind, {k: read() for k, read in members.items()}
        return None

    if os.path.isdir(source):
        for archive in _cifar_archives(name):
            if os.path.isfile(os.path.join(source, archive)):
                return _cifar_members(name, os.path.join(source, archive))
        named = {}
        for folder in folders.values():
            for base in (os.path.join(source, folder), source):
                if os.path.isdir(base):
                    for file in os.listdir(base):
                        path = os.path.join(base, file)

                        def read(path=path):
                            with open(path, "rb") as f:
                                return f.read()

                        named[f"{folder}/{file}"] = read
        found = pick(named)
    else:
        try:
            with tarfile.open(source) as tar:
                named = {
                    m.name: (lambda m=m: tar.extractfile(m).read())
                    for m in tar.getmembers()
                    if m.isfile()
                }
                found = pick(named)
        except (tarfile.TarError, OSError, EOFError) as error:
            raise SourceError(
                f"{source} is not a readable tar archive of {name}: {error}"
            )
    if found is None:
        raise SourceError(
            f"{source} does not hold {name}: expected the files of "
            f"{_ARCHIVES[name]} ({', '.join(sorted(wanted['binary']))} under "
            f"{info.binary_dir}/, or the python batches under "
            f"{info.python_dir}/)."
        )
    return found


def _cifar_archives(name):
    stem = "cifar-10" if name == "cifar10" else "cifar-100"
    return (f"{stem}-python.tar.gz", f"{stem}-binary.tar.gz")


def _python_to_binary(name, source, members):
    """The binary files of TFDS's layout, from the python pickles."""
    info = _CIFAR[name]

    def load(key):
        try:
            return pickle.load(io.BytesIO(members[key]), encoding="bytes")
        except Exception as error:  # noqa: BLE001 - any unpickling failure
            raise SourceError(
                f"{source}: {key} is not a CIFAR python batch ({error})."
            )

    out = {}
    for binary in info.train_files + info.test_files:
        batch = load(binary[: -len(".bin")])
        try:
            images = np.asarray(batch[b"data"], np.uint8)
            labels = [np.asarray(batch[k], np.int64) for k in info.python_label_keys]
        except KeyError as error:
            raise SourceError(
                f"{source}: {binary[:-4]} has no {error.args[0]!r} entry."
            )
        if images.ndim != 2 or images.shape[1] != _CIFAR_PIXELS or any(
            len(l) != len(images) for l in labels
        ):
            raise SourceError(
                f"{source}: {binary[:-4]} holds images of shape "
                f"{images.shape} and {[len(l) for l in labels]} labels; "
                f"expected (N, {_CIFAR_PIXELS}) and N labels."
            )
        records = np.concatenate(
            [np.stack(labels, axis=1).astype(np.uint8), images], axis=1
        )
        out[binary] = records.tobytes()
    meta = load("meta" if name == "cifar100" else "batches.meta")
    for file, key in zip(info.label_names, info.python_meta_keys):
        names = [n.decode() if isinstance(n, bytes) else n for n in meta[key]]
        out[file] = ("\n".join(names) + "\n").encode()
    return out


def _check_cifar_binary(name, source, files):
    """Record sizes, label ranges and label-name counts; returns the number
    of (train, test) examples."""
    info = _CIFAR[name]
    record = len(info.num_classes) + _CIFAR_PIXELS
    counts = []
    for group in (info.train_files, info.test_files):
        total = 0
        for file in group:
            data = files[file]
            if not data or len(data) % record:
                raise SourceError(
                    f"{source}: {file} has {len(data)} bytes, not a positive "
                    f"multiple of the {record}-byte {name} record."
                )
            rows = np.frombuffer(data, np.uint8).reshape(-1, record)
            for column, classes in enumerate(info.num_classes):
                if rows[:, column].max() >= classes:
                    raise SourceError(
                        f"{source}: {file} has label "
                        f"{rows[:, column].max()}; {name} has {classes} "
                        "classes."
                    )
            total += len(rows)
        counts.append(total)
    for file, classes in zip(info.label_names, info.num_classes):
        names = [n for n in files[file].decode().split("\n") if n]
        if len(names) != classes:
            raise SourceError(
                f"{source}: {file} names {len(names)} classes; {name} has "
                f"{classes}."
            )
    return tuple(counts)


# --------------------------------------------------------------------------
# Finding and preparing.


def _is_source(name, path):
    if name == "fashion_mnist":
        return os.path.isdir(path) and _idx_paths(path) is not None
    if os.path.isfile(path):
        return True
    if not os.path.isdir(path):
        return False
    info = _CIFAR[name]
    entries = set(os.listdir(path))
    return bool(
        entries
        & (set(_cifar_archives(name)) | {info.python_dir, info.binary_dir})
    )


def find_source(name, data_dir=None):
    """Looks for the files of `name` in `search_paths(name, data_dir)`.

    Returns:
        `(path or None, paths tried)`.
    """
    tried = search_paths(name, data_dir)
    for path in tried:
        if _is_source(name, path):
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


def _staged_files(name, source, staging):
    """Checks `source` and writes what TFDS's builder downloads into
    `staging`; returns `({registered file name: staged path}, note)`."""
    if name == "fashion_mnist":
        if not os.path.isdir(source):
            raise SourceError(
                f"{source} is not a directory; fashion_mnist is prepared from "
                f"a directory holding {_ARCHIVES[name]}."
            )
        paths = _idx_paths(source)
        if paths is None:
            missing = [
                b for b in _IDX_FILES
                if not any(os.path.isfile(os.path.join(source, b + s))
                           for s in (".gz", ""))
            ]
            raise SourceError(
                f"{source} lacks {', '.join(missing)} (.gz or uncompressed) "
                "of Fashion-MNIST."
            )
        official = all(
            _check_idx(base, path) == _IDX_SHA256[base]
            for base, path in paths.items()
        )
        note = ("identical to Zalando's release" if official else
                "valid IDX files, not byte-identical to Zalando's release")
        return {base + ".gz": path for base, path in paths.items()}, note

    kind, members = _cifar_members(name, source)
    files = (
        _python_to_binary(name, source, members) if kind == "python" else members
    )
    train, test = _check_cifar_binary(name, source, files)
    info = _CIFAR[name]
    archive = os.path.join(staging, f"{info.binary_dir}.tar")
    with tarfile.open(archive, "w") as tar:
        for file, data in sorted(files.items()):
            entry = tarfile.TarInfo(f"{info.binary_dir}/{file}")
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
    registered = f"{_cifar_archives(name)[1][:-len('.tar.gz')]}.tar.gz"
    note = f"{kind} version, {train} train / {test} test examples"
    return {registered: archive}, note


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
            staged, note = _staged_files(name, source, staging)
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

