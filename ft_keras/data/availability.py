"""Whether a TFDS dataset can be read now: prepared, prepared from local
files, downloaded after a quick probe, or a one-line failure.

`ft_keras.data.build_dataset` reads every TFDS dataset through
`ensure_prepared`. A dataset missing from `data_dir` is prepared from local
files when `ft_keras.data.prepare.find_source` finds them; any other is only
downloaded after a quick (~3 s) reachability probe of its download hosts. If
that fails, or `download=False`, or the dataset needs a manual download,
`DatasetNotPreparedError` is raised with a one-line message naming every
path searched and the fix, within seconds, instead of TFDS's several-minute
retry loop.
"""

import os
import random
import socket
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import tensorflow_datasets as tfds

from ft_keras.data import specs
from ft_keras.data.prepare import DATASETS
from ft_keras.data.prepare import SourceError
from ft_keras.data.prepare import find_source
from ft_keras.data.prepare import fix_hint
from ft_keras.data.prepare import prepare

# Seconds allowed for the "can the download hosts be reached?" probe.
_PROBE_TIMEOUT = 3.0


class DatasetNotPreparedError(RuntimeError):
    """A TFDS dataset is not in `data_dir` and cannot be downloaded now.

    The message is a single line naming the dataset, the directory that was
    searched and how to prepare it, so that an entry point can print it as
    is.
    """


def _probe_address(url):
    """`(host, port)` that a download of `url` connects to first."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(
            proxy if "://" in proxy else "http://" + proxy
        )
        return proxy_parts.hostname, proxy_parts.port or 80
    return host, port


def _unreachable(addresses, timeout=_PROBE_TIMEOUT):
    """Returns `{(host, port): reason}` for the addresses not connected to.

    All probes run at once in daemon threads, so that even a hanging DNS
    lookup cannot block for longer than `timeout` in total.
    """
    reasons = {a: f"no answer within {timeout:g}s" for a in addresses}

    def connect(address):
        try:
            socket.create_connection(address, timeout=timeout).close()
            reasons.pop(address, None)
        except OSError as error:
            reasons[address] = (
                " ".join(str(error).split()) or type(error).__name__
            )

    threads = [
        threading.Thread(target=connect, args=(a,), daemon=True)
        for a in addresses
    ]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return dict(reasons)


def _prepare_hint(name, root):
    base = specs.base_name(name)
    if base in DATASETS:
        return fix_hint(base, root)
    return (
        "prepare it once on a machine with internet (e.g. python -c "
        f"\"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        f"data_dir='{root}').download_and_prepare()\"), then copy its "
        f"{base.split('/')[0]}/ folder into {root}"
    )


def ensure_prepared(builder, name, download):
    """Returns a builder of `name` that can be read: `builder` if prepared,
    else one prepared from local files (`prepare`) or downloaded.

    Preparing leaves Python's and NumPy's global random states as they
    were: TFDS draws from them, and Keras seeds every new layer from
    Python's, so a seeded run that prepares its data would otherwise
    initialise its networks unlike its rerun on the prepared data.

    Raises:
        DatasetNotPreparedError: neither can be done now; the one-line
            message names what was tried and how to fix it.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        return _ensure_prepared(builder, name, download)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _ensure_prepared(builder, name, download):
    """`ensure_prepared`'s work, which may draw from the random states."""
    if builder.is_prepared() or isinstance(
        builder, tfds.folder_dataset.ImageFolder
    ):
        return builder  # prepared, or image files read where they are
    root = str(builder.data_dir_root)
    where = f"Dataset {name!r} is not prepared in data_dir={root!r}"
    base = specs.base_name(name)
    if base in DATASETS:
        source, tried = find_source(base, root)
        if source is not None:
            return _prepare_from_files(name, base, source, root, where)
        where += f" and no files of it were found in {', '.join(tried)}"
    if not download:
        raise DatasetNotPreparedError(
            f"{where} and download=False; {_prepare_hint(name, root)}."
        )
    _check_downloadable(builder, name, root, where)
    try:
        builder.download_and_prepare()
    except (OSError, tfds.download.DownloadError) as error:
        reason = " ".join(str(error).split())[:300]
        raise DatasetNotPreparedError(
            f"{where} and downloading it failed ({type(error).__name__}: "
            f"{reason}); {_prepare_hint(name, root)}."
        ) from error
    return builder


def _prepare_from_files(name, base, source, root, where):
    """A builder of `name` (of TFDS name `base`) prepared from the local
    files in `source`."""
    print(
        f"[ft_keras] {where}; preparing it from the files in "
        f"{source} (once).",
        flush=True,
    )
    try:
        prepare(base, source, root)
    except SourceError as error:
        raise DatasetNotPreparedError(
            f"{where} and its local files cannot be used: {error}"
        ) from None
    return specs.tfds_builder(name, root)


def _check_downloadable(builder, name, root, where):
    """Raises a `DatasetNotPreparedError` unless `builder` can download
    now: its manual files are in place, or its download hosts answer."""
    manual_dir = os.path.join(root, "downloads", "manual")
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        if not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
            files = ""
            if specs.base_name(name) == "imagenet2012":
                files = "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
            raise DatasetNotPreparedError(
                f"{where} and it needs a manual download: put the archives "
                f"{files}in {manual_dir!r} (see "
                "https://www.tensorflow.org/datasets/catalog/"
                f"{specs.base_name(name)}"
                "), then run again."
            )
    else:
        urls = sorted(builder.url_infos or {}) or [
            "https://storage.googleapis.com"
        ]
        addresses = list(dict.fromkeys(_probe_address(u) for u in urls))[:4]
        failed = _unreachable(addresses)
        if failed:
            hosts = ", ".join(
                f"{h}:{p}: {why}" for (h, p), why in failed.items()
            )
            raise DatasetNotPreparedError(
                f"{where}; it cannot be downloaded (host not reachable: "
                f"{hosts}); {_prepare_hint(name, root)}."
            )
