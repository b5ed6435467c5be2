"""`ft_keras._tfds_private`: each private TFDS name ft_keras uses, called on
real TFDS objects, so that a TFDS upgrade that changes one fails here."""

import hashlib
import inspect

import tensorflow_datasets as tfds

from ft_keras import _tfds_private


def test_url_info_is_what_tfds_registers_for_a_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"0123456789" * 10)
    info = _tfds_private.url_info(path)
    assert info.size == 100
    assert info.checksum == hashlib.sha256(b"0123456789" * 10).hexdigest()
    assert info.filename == path.name
    # The kind of record a builder's `url_infos` hold.
    builder = tfds.builder("fashion_mnist", data_dir=str(tmp_path / "data"))
    registered = next(iter(builder.url_infos.values()))
    assert type(info) is type(registered)


def test_a_builder_makes_its_download_manager_where_we_replace_it(tmp_path):
    # `prepare_from_files` replaces this method on the builder instance;
    # `download_and_prepare` must still call it with these arguments.
    method = tfds.core.DatasetBuilder._make_download_manager
    assert list(inspect.signature(method).parameters) == [
        "self", "download_dir", "download_config"]
    source = inspect.getsource(tfds.core.DatasetBuilder.download_and_prepare)
    assert "self._make_download_manager(" in source
    params = inspect.signature(tfds.download.DownloadManager).parameters
    assert {"download_dir", "extract_dir", "manual_dir", "url_infos",
            "dataset_name"} <= set(params)
