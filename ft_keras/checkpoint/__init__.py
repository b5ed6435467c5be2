"""Checkpoints that survive a kill at any moment and resume a `fit` exactly.

`ResumableCheckpoint` (`ft_keras.checkpoint.resumable`, whose docstring
tells what it adds to `keras.callbacks.BackupAndRestore`) saves and
restores a `fit`'s whole state; with several replicas it also keeps each
replica's own BatchNormalization statistics
(`ft_keras.checkpoint.replicas`).
"""

from ft_keras.checkpoint.replicas import replica_copies
from ft_keras.checkpoint.replicas import restore_replica_copies
from ft_keras.checkpoint.resumable import LATEST
from ft_keras.checkpoint.resumable import MANIFEST
from ft_keras.checkpoint.resumable import PREVIOUS
from ft_keras.checkpoint.resumable import Position
from ft_keras.checkpoint.resumable import ResumableCheckpoint
from ft_keras.checkpoint.resumable import delete
