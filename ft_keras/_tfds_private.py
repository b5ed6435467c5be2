"""Every private TensorFlow Datasets name ft_keras uses, each behind one
small function.

Offline preparation (`ft_keras.data.prepare`) hands TFDS files that are
already on disk as if it had downloaded them; TFDS has no public API for
that. Each function's docstring says what is missing and the TFDS version
its body was checked against. A TFDS upgrade that renames or changes one
fails `tests/test_tfds_private.py`, which calls each on real TFDS objects,
rather than a data preparation run. (`ft_keras._keras_private` does the
same for Keras.)
"""

import hashlib

import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums as _checksums


def url_info(path):
    """TFDS' record of one downloaded file (size, SHA-256, file name), as
    its `url_infos` hold for the files a dataset registers.

    Missing public API: `tensorflow_datasets.core.download.checksums
    .compute_url_info` is not exported under `tfds`. Checked against TFDS
    4.9.10.
    """
    return _checksums.compute_url_info(path, checksum_cls=hashlib.sha256)


def prepare_from_files(builder, manual_dir, url_infos, work_dir):
    """Runs `builder.download_and_prepare` on the files of `manual_dir`
    instead of downloads: TFDS takes a file from `manual_dir` when its name
    and checksum are those of `url_infos` (`{url: url_info(path)}`), and
    writes its scratch files under `work_dir`. Nothing is downloaded
    (`try_download_gcs=False`).

    Missing public API: a builder makes its `DownloadManager` in the private
    `DatasetBuilder._make_download_manager(download_dir, download_config)`,
    which no argument of `download_and_prepare` replaces; this sets it on
    `builder` (the instance only). Checked against TFDS 4.9.10.
    """

    def download_manager(download_dir, download_config):
        del download_dir, download_config
        return tfds.download.DownloadManager(
            download_dir=f"{work_dir}/downloads",
            extract_dir=f"{work_dir}/extracted",
            manual_dir=manual_dir,
            url_infos=url_infos,
            dataset_name=builder.name,
        )

    builder._make_download_manager = download_manager
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
