"""The entry point of `python -m ft_keras.import_torch`: runs `models.torch_import`.

It runs `ft_keras.models.torch_import`, which turns a teacher trained in
PyTorch into a `.keras` model: convert once, check.

    python -m ft_keras.import_torch resnet56_best.pth --network resnet56 \\
        --dataset cifar100 --out teacher.keras
    python -m ft_keras.import_torch wrn.pth --network wrn40_2 \\
        --num_classes 100 --input_shape 32,32,3 \\
        --check_inputs x.npy --check_logits y.npy

Builds `--network` (`ft_keras.models.get`), imports the `state_dict` into it
(`ft_keras.models.load_torch_weights`, whose docstring lists the layouts),
and saves it. With `--check_inputs` (a batch of images as the PyTorch
network takes them, NCHW, `.npy`) and `--check_logits` (what it gave for
them, `.npy`) it first compares the logits, and exits 1 without saving
where they differ by more than 1e-4 of their scale. The `.keras` file is then
`experiment.teacher_checkpoint` (the runner also takes the `.pth` itself).

Example:

```python
from ft_keras import import_torch
assert import_torch.main(["x.pth", "--network", "resnet20",
                          "--input_shape", "32,32"]) == 2  # H,W,C needed
```
"""

import argparse
import os
import sys

import numpy as np

from ft_keras import models
from ft_keras.taps import listing

# The check's tolerance, relative to the largest |logit| (at least 1):
# float32 sums in another order differ by ~1e-6 of it.
TOLERANCE = 1e-4


def check_logits(model, inputs, expected):
    """`(max |difference|, scale)` between `model`'s logits for `inputs`
    (NCHW, as PyTorch takes them) and `expected`; the check passes when
    the difference is at most `TOLERANCE * scale`."""
    inputs = np.asarray(inputs, "float32")
    expected = np.asarray(expected, "float32")
    if inputs.ndim != 4:
        raise ValueError(
            f"--check_inputs must be a batch of NCHW images. Received an "
            f"array of shape {inputs.shape}."
        )
    ours = np.asarray(model.predict(inputs.transpose(0, 2, 3, 1), verbose=0))
    if ours.shape != expected.shape:
        raise ValueError(
            f"--check_logits has shape {expected.shape}; the network gives "
            f"{ours.shape} for --check_inputs."
        )
    scale = max(1.0, float(np.abs(expected).max()))
    return float(np.abs(ours - expected).max()), scale


def _shape(shape):
    return "x".join(str(d) for d in shape)


def _parser():
    """The command line's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m ft_keras.import_torch",
        description="Import a PyTorch state_dict into our network of its "
        "layout and save it as a .keras model.",
    )
    parser.add_argument("checkpoint", help="the .pth / .pt state_dict")
    parser.add_argument(
        "--network", required=True, help="our network (ft_keras.models.get)"
    )
    parser.add_argument(
        "--dataset", help="take the input shape and classes of this dataset"
    )
    parser.add_argument("--input_shape", default=None, help="H,W,C (default 32,32,3)")
    parser.add_argument("--num_classes", type=int, default=None)
    parser.add_argument(
        "--out",
        default=None,
        help="the .keras file (default: the checkpoint's " "name with .keras)",
    )
    parser.add_argument("--check_inputs", help=".npy of NCHW images")
    parser.add_argument("--check_logits", help=".npy of PyTorch's logits for them")
    return parser


def _convert(args, out):
    """`(model, summary, check)`: `--network` with the `state_dict`
    imported, a line saying what was imported into what, and
    `check_logits`' result (None without `--check_inputs`)."""
    if not out.endswith(".keras"):
        raise ValueError(f"--out must end in .keras. Received: {out}")
    input_shape, num_classes = listing.network_input(
        args.dataset, args.input_shape, args.num_classes
    )
    model = models.get(
        args.network, input_shape=input_shape, num_classes=num_classes
    )
    layout = models.load_torch_weights(model, args.checkpoint)
    check = None
    if args.check_inputs:
        check = check_logits(
            model, np.load(args.check_inputs), np.load(args.check_logits)
        )
    summary = (
        f"{args.checkpoint}: {layout} -> {args.network} (input "
        f"{_shape(input_shape)}, {num_classes} classes): "
        f"{len(model.weights)} tensors, {model.count_params():,} values"
    )
    return model, summary, check


def main(argv=None):
    """Imports, checks and saves; returns the exit status (0 saved, 1
    different logits, 2 a bad argument or file)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.check_inputs) != bool(args.check_logits):
        parser.error("give --check_inputs and --check_logits together")
    out = args.out or os.path.splitext(args.checkpoint)[0] + ".keras"
    try:
        model, summary, check = _convert(args, out)
    except (ValueError, OSError, ImportError) as e:
        print(f"ft_keras: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if check is not None:
        difference, scale = check
        same = difference <= TOLERANCE * scale
        print(
            f"check: max |logit difference| {difference:.3g} on "
            f"{len(np.load(args.check_inputs))} images (largest |logit| "
            f"{scale:.3g}): {'the same logits' if same else 'DIFFERENT logits'}"
        )
        if not same:
            print(f"{summary}: not saved", file=sys.stderr)
            return 1
    model.save(out)
    print(f"{summary}, saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
