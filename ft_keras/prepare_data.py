"""The entry point of `python -m ft_keras.prepare_data`: runs `data.prepare`.

It runs `ft_keras.data.prepare`, which prepares a TFDS dataset offline:

    python -m ft_keras.prepare_data fashion_mnist --from /usr/share/datasets/fashion-mnist
    python -m ft_keras.prepare_data cifar10 --from ~/Downloads/cifar-10-python.tar.gz
    python -m ft_keras.prepare_data cifar100 --from cifar-100-binary.tar.gz --data_dir /data/tfds

The work is done by `ft_keras.data.prepare` (accepted sources, checks, and
the automatic preparation on first use are described there); this is its
command-line entry point.
"""

import os
import sys


def main(argv=None):
    """Runs `ft_keras.data.prepare.main`; returns the exit status."""
    from ft_keras.data import prepare

    return prepare.main(argv)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
