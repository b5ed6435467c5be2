"""The entry point of `python -m ft_keras.deployment`: runs
`ft_keras.deployment.command.main`.

    python -m ft_keras.deployment --workdir=runs/quickstart [--latency_runs 50]
        [--threads 4] [--full_integer]
"""

import sys

from ft_keras.deployment.command import main

if __name__ == "__main__":
    sys.exit(main())
