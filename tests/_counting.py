"""Counting a layer's calls, for the once-per-step tests (no TensorFlow
import here: tests/test_backends.py runs it under JAX and PyTorch)."""

import functools


def count_calls(layer, counter, key):
    """Wraps `layer.call` so that each call adds 1 to `counter[key]`."""
    original = layer.call

    @functools.wraps(original)
    def call(*args, **kwargs):
        counter[key] += 1
        return original(*args, **kwargs)

    layer.call = call
