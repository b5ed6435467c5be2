"""The entry point of `python -m ft_keras.taps` (`ft_keras.taps.command`)."""

import sys

from ft_keras.taps import command

if __name__ == "__main__":
    sys.exit(command.main())
