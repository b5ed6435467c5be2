"""Which layers can I tap? The feature taps of a network, and of a pair.

    python -m ft_keras.taps --network resnet56
    python -m ft_keras.taps --network keras.applications.MobileNetV2 --all
    python -m ft_keras.taps --teacher resnet50 --student \\
        keras.applications.MobileNetV2 --dataset cifar100

For one network: its feature taps (`ft_keras.models.feature_taps`: each
stage's output) with their output shapes, or with `--all` every layer whose
output is a feature map. For a teacher and a student: both lists, every
pair whose maps have the same height and width (what the full factor needs;
`factor_transfer.factor = 'attention'` matches any pair), with the factor's
channels at `--rate`, and the pair the paper uses: the last stage's output
of each network. Networks are given as `ft_keras.models.get` takes them;
the input shape comes from `--dataset` or `--input_shape`.

Example:

```python
from ft_keras import models, taps
teacher = models.get("resnet56", input_shape=(32, 32, 3))
student = models.get("resnet20", input_shape=(32, 32, 3))
taps.paper_pair(teacher, student)  # ("stage3", "stage3")
```
"""

import argparse
import sys

from ft_keras import layers
from ft_keras import models

_STAGE = models.registry._STAGE_PATTERN


def taps_with_shapes(model, all_layers=False):
    """`[(layer name, output shape without the batch)]` of `model`'s feature
    taps, or of every feature map with `all_layers`."""
    maps = dict(models.feature_maps(model))
    names = list(maps) if all_layers else models.feature_taps(model)
    return [(name, tuple(maps[name][1:])) for name in names if name in maps]


def last_stage(model):
    """The tap the paper uses: the last stage's output (`stageN` of our
    networks, not `last_conv`; the last feature map of any other)."""
    names = models.feature_taps(model)
    stages = [n for n in names if _STAGE.fullmatch(n)]
    return (stages or names)[-1] if names else None


def fitting_pairs(teacher, student, all_layers=False):
    """`[(teacher tap, student tap)]` whose maps have the same height and
    width, in network order."""
    teacher_taps = taps_with_shapes(teacher, all_layers)
    student_taps = taps_with_shapes(student, all_layers)
    return [
        (t, s)
        for t, t_shape in teacher_taps
        for s, s_shape in student_taps
        if t_shape[:2] == s_shape[:2]
    ]


def paper_pair(teacher, student):
    """The paper's pair, the last stage's output of each network, if their
    maps fit (same height and width); else None."""
    pair = (last_stage(teacher), last_stage(student))
    return pair if pair in fitting_pairs(teacher, student, all_layers=True) else None


def _shape(shape):
    return "x".join("?" if d is None else str(d) for d in shape)


def _describe(role, spec, model, all_layers):
    lines = [
        f"{role} {spec} (input {_shape(model.input_shape[1:])}): "
        f"{'feature maps' if all_layers else 'feature taps'}"
    ]
    width = max([len(n) for n, _ in taps_with_shapes(model, all_layers)] + [4])
    for name, shape in taps_with_shapes(model, all_layers):
        lines.append(f"  {name:<{width}}  {_shape(shape)}")
    return lines


def _build(spec, input_shape, num_classes):
    return models.get(spec, input_shape=input_shape, num_classes=num_classes)


def network_input(dataset=None, input_shape=None, num_classes=None):
    """`(input_shape, num_classes)` of the command-line tools' `--dataset`,
    or `--input_shape H,W,C` (default 32,32,3) and `--num_classes` (default
    10); a given `num_classes` wins over the dataset's."""
    if dataset:
        from ft_keras import data

        return data.input_shape(dataset), num_classes or data.num_classes(dataset)
    text = input_shape or "32,32,3"
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise ValueError(f"--input_shape must be H,W,C. Received: {text}")
    return shape, num_classes or 10


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ft_keras.taps",
        description="The feature taps of a network, or of a teacher and a "
        "student, with their shapes and the pairs that fit.",
    )
    parser.add_argument("--network", help="one network (ft_keras.models.get)")
    parser.add_argument("--teacher")
    parser.add_argument("--student")
    parser.add_argument(
        "--dataset",
        help="take the input shape and classes " "of this dataset (e.g. cifar100)",
    )
    parser.add_argument("--input_shape", default=None, help="H,W,C (default 32,32,3)")
    parser.add_argument("--num_classes", type=int, default=None)
    parser.add_argument(
        "--rate",
        type=float,
        default=0.5,
        help="the paraphrase rate k, for the factor channels",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        dest="all_layers",
        help="every layer with a feature map, not only " "each stage's output",
    )
    args = parser.parse_args(argv)
    if bool(args.network) == bool(args.teacher or args.student) or (
        not args.network and not (args.teacher and args.student)
    ):
        parser.error("give --network, or --teacher and --student")
    try:
        input_shape, num_classes = network_input(
            args.dataset, args.input_shape, args.num_classes
        )
        if args.network:
            model = _build(args.network, input_shape, num_classes)
            print("\n".join(_describe("network", args.network, model, args.all_layers)))
            return 0
        teacher = _build(args.teacher, input_shape, num_classes)
        student = _build(args.student, input_shape, num_classes)
    except ValueError as e:
        print(f"ft_keras: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    lines = _describe("teacher", args.teacher, teacher, args.all_layers)
    lines += _describe("student", args.student, student, args.all_layers)
    pairs = fitting_pairs(teacher, student, args.all_layers)
    suggested = paper_pair(teacher, student)
    teacher_maps = dict(models.feature_maps(teacher))
    student_maps = dict(models.feature_maps(student))
    lines.append(
        f"pairs that fit the full factor (same height x width), "
        f"factor channels at rate {args.rate:g}:"
    )
    for t, s in pairs + ([suggested] if suggested and suggested not in pairs else []):
        t_shape, s_shape = teacher_maps[t][1:], student_maps[s][1:]
        factor = layers.factor_channels(t_shape[-1], args.rate)
        mark = "   <- the paper's choice" if (t, s) == suggested else ""
        lines.append(
            f"  factor_transfer.teacher_layer = {t!r}, student_layer = {s!r}: "
            f"{_shape(t_shape[:2])}, teacher {t_shape[-1]} ch -> factor "
            f"{factor}, student {s_shape[-1]} ch{mark}"
        )
    if not pairs and not suggested:
        lines.append(
            "  none: use factor_transfer.factor = 'attention', or "
            "taps at the same resolution"
        )
    elif not suggested:
        lines.append(
            f"  (the paper's pair, {last_stage(teacher)!r} and "
            f"{last_stage(student)!r}, differ in height x width)"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
