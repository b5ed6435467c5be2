"""The local files of a dataset prepared offline: recognised, read, checked.

`ft_keras.data.prepare` hands TFDS's builder these files instead of its
download URLs. `is_source` says whether a path holds a dataset's files;
`staged_files` checks them (IDX headers and sizes, CIFAR record sizes,
label ranges: a bad file is named in a one-line `SourceError`) and stages
what TFDS's builder reads: Fashion-MNIST's IDX files as they are, CIFAR's
binary files as the archive TFDS would have downloaded, the python version
converted record by record (both hold the same bytes: a label, then the
1024 red, 1024 green and 1024 blue pixels).
"""

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np

__all__ = ["ARCHIVES", "SourceError", "is_source", "staged_files"]

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

ARCHIVES = {
    "fashion_mnist": "the four IDX files (train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz)",
    "cifar10": "cifar-10-python.tar.gz or cifar-10-binary.tar.gz",
    "cifar100": "cifar-100-python.tar.gz or cifar-100-binary.tar.gz",
}



class SourceError(ValueError):
    """Local files that cannot be prepared; the message is one line naming
    the file and what is wrong with it."""


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


def _cifar_layouts(name):
    """`(wanted, folders)`: by kind ("python", "binary"), the member
    basenames of a whole CIFAR source of `name` and their folder."""
    info = _CIFAR[name]
    wanted = {
        "binary": set(info.train_files + info.test_files + info.label_names),
        "python": {f[: -len(".bin")] for f in info.train_files + info.test_files}
        | {"meta" if name == "cifar100" else "batches.meta"},
    }
    folders = {"binary": info.binary_dir, "python": info.python_dir}
    return wanted, folders


def _pick(named, wanted, folders):
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


def _folder_readers(source, folders):
    """`{"<folder>/<file>": reader}` of the files in the CIFAR `folders` of
    the directory `source`, or in `source` itself."""
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
    return named


def _cifar_members(name, source):
    """Reads a CIFAR source into `(kind, {member basename: bytes})`, kind
    being "python" or "binary"."""
    wanted, folders = _cifar_layouts(name)
    if os.path.isdir(source):
        for archive in _cifar_archives(name):
            if os.path.isfile(os.path.join(source, archive)):
                return _cifar_members(name, os.path.join(source, archive))
        found = _pick(_folder_readers(source, folders), wanted, folders)
    else:
        try:
            with tarfile.open(source) as tar:
                named = {
                    m.name: (lambda m=m: tar.extractfile(m).read())
                    for m in tar.getmembers()
                    if m.isfile()
                }
                found = _pick(named, wanted, folders)
        except (tarfile.TarError, OSError, EOFError) as error:
            raise SourceError(
                f"{source} is not a readable tar archive of {name}: {error}"
            )
    if found is None:
        info = _CIFAR[name]
        raise SourceError(
            f"{source} does not hold {name}: expected the files of "
            f"{ARCHIVES[name]} ({', '.join(sorted(wanted['binary']))} under "
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


def is_source(name, path):
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


def staged_files(name, source, staging):
    """Checks `source` and writes what TFDS's builder downloads into
    `staging`; returns `({registered file name: staged path}, note)`."""
    if name == "fashion_mnist":
        if not os.path.isdir(source):
            raise SourceError(
                f"{source} is not a directory; fashion_mnist is prepared from "
                f"a directory holding {ARCHIVES[name]}."
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
