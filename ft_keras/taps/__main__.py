"""The entry point of `python -m ft_keras.taps` (`ft_keras.taps.listing`)."""

import sys

from ft_keras.taps import listing

if __name__ == "__main__":
    sys.exit(listing.main())
