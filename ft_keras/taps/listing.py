"""Listing the layers a network, or a teacher-student pair, can tap: the
command `python -m ft_keras.taps`.

    python -m ft_keras.taps --network resnet56
    python -m ft_keras.taps --network keras.applications.MobileNetV2 \\
        --network_args alpha=0.35 --all
    python -m ft_keras.taps --teacher resnet50 --student \\
        keras.applications.MobileNetV2 --student_args alpha=0.35 \\
        --dataset cifar100
    python -m ft_keras.taps --gin_file=gin/paper/cifar100_resnet50_mobilenetv2.gin

For one network: its feature taps (`ft_keras.taps.feature_taps`: each
stage's output) with their output shapes, or with `--all` every layer whose
output is a feature map. For a teacher and a student: both lists, every
pair whose maps have the same height and width (what the full factor needs;
`factor_transfer.factor = 'attention'` matches any pair), with the factor's
channels at `--rate`, and the pair the paper uses: the last stage's output
of each network. Networks are given as `ft_keras.models.get` takes them,
with their keyword arguments (`--network_args`, `--teacher_args`,
`--student_args`: `key=value`, repeatable); the input shape comes from
`--dataset` or `--input_shape`.

Or from a runner config: `--gin_file` and `--gin_bindings` are read as the
runner reads them (`teacher/network.*`, `student/network.*`, `dataset.*`
with its `options['image_size']`, `factor_transfer.rate` and `rounding`),
and the configured `factor_transfer.teacher_layer` / `student_layer` pair is
marked besides the paper's. Flags win over the config: `--teacher` names
another network (without the config's arguments, which were its own),
`--teacher_args` adds to or replaces the config's arguments, `--dataset` or
`--input_shape` replaces its dataset, `--rate` its rate.

Example:

```python
from ft_keras.taps import listing
listing.key_value("alpha=0.35")  # ("alpha", 0.35)
listing.main(["--network", "resnet20"])  # prints its taps, returns 0
```
"""

import argparse
import ast
import functools
import sys

import gin

from ft_keras import cli
from ft_keras import config
from ft_keras import layers
from ft_keras import models
from ft_keras.taps.discovery import feature_maps
from ft_keras.taps.discovery import fitting_pairs
from ft_keras.taps.discovery import last_stage
from ft_keras.taps.discovery import paper_pair
from ft_keras.taps.discovery import taps_with_shapes

# The network flags: (name flag, arguments flag) of each role.
_ROLES = {
    "network": ("network", "network_args"),
    "teacher": ("teacher", "teacher_args"),
    "student": ("student", "student_args"),
}


def key_value(text):
    """`(key, value)` of a `key=value` network argument (`--network_args`):
    the value as a Python literal (`0.35`, `(1, 2)`, `None`, `'B'`), else
    the text itself (`weights=imagenet`).

    Raises an `argparse.ArgumentTypeError` naming the text and the form to
    use, which argparse reports in one line.

    Example:

    >>> key_value("weights=imagenet")
    ('weights', 'imagenet')
    """
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key.isidentifier() or not value:
        raise argparse.ArgumentTypeError(
            "a network argument must be key=value with a Python name as the "
            "key, e.g. alpha=0.35 or weights=imagenet (repeat the flag for "
            f"several). Received: {text!r}"
        )
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return key, value


def from_gin():
    """What this tool reads of gin's parsed config, as the runner reads it.

    Returns:
        `(networks, dataset, factor_transfer)`: `networks` maps `"teacher"`
        and `"student"`, where `{scope}/network.name` is bound, to their
        `ft_keras.config.NetworkConfig`; `dataset` is the `DataConfig` if
        `dataset.name` is bound, else None; `factor_transfer` is the
        `FactorTransferConfig`, with None for a layer that is not bound.

    Example:

    ```python
    import gin
    from ft_keras import config
    from ft_keras.taps import listing
    config.parse([], ["student/network.name = 'resnet20'",
                      "student/network.weight_decay = 1e-4"])
    networks, dataset, factor_transfer = listing.from_gin()
    assert networks["student"].kwargs == {"weight_decay": 1e-4}
    assert dataset is None and factor_transfer.student_layer is None
    gin.clear_config()
    ```
    """

    def bound(selector):
        return gin.get_bindings(selector, resolve_references=False)

    networks = {
        scope: config._read(config.network, "network", scope)
        for scope in ("teacher", "student")
        if "name" in bound(f"{scope}/network")
    }
    dataset = None
    if "name" in bound("dataset"):
        dataset = config._read(config.dataset, "dataset")
    unbound = {
        name: None
        for name in ("teacher_layer", "student_layer")
        if name not in bound("factor_transfer")
    }
    factor_transfer = config._read(
        functools.partial(config.factor_transfer, **unbound), "factor_transfer"
    )
    return networks, dataset, factor_transfer


def _spec(net):
    """`name`, or `name(key=value, ...)` with the network's arguments."""
    if not net.kwargs:
        return net.name
    return f"{net.name}({', '.join(f'{k}={v!r}' for k, v in net.kwargs.items())})"


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


def _build(net, input_shape, num_classes):
    """The network of `net` (a `NetworkConfig`) for this input; its own
    arguments win (`input_shape=...` among them)."""
    kwargs = {"input_shape": input_shape, "num_classes": num_classes}
    try:
        return models.get(net.name, **{**kwargs, **net.kwargs})
    except TypeError as e:
        raise ValueError(f"Cannot build {_spec(net)}: {e}") from None


def network_input(dataset=None, input_shape=None, num_classes=None,
                  image_size=None):
    """`(input_shape, num_classes)` of the command-line tools' `--dataset`
    (at `image_size`, the `image_size` option of its pipeline, if given),
    or `--input_shape H,W,C` (default 32,32,3) and `--num_classes` (default
    10); a given `num_classes` wins over the dataset's."""
    if dataset:
        from ft_keras import data

        return (
            data.input_shape(dataset, image_size=image_size),
            num_classes or data.num_classes(dataset),
        )
    text = input_shape or "32,32,3"
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise ValueError(f"--input_shape must be H,W,C. Received: {text}")
    return shape, num_classes or 10


def _pair_line(teacher_maps, student_maps, pair, rate, rounding, mark=""):
    (t, s) = pair
    t_shape, s_shape = teacher_maps[t][1:], student_maps[s][1:]
    factor = layers.factor_channels(t_shape[-1], rate, rounding)
    return (
        f"  factor_transfer.teacher_layer = {t!r}, student_layer = {s!r}: "
        f"{_shape(t_shape[:2])}, teacher {t_shape[-1]} ch -> factor "
        f"{factor}, student {s_shape[-1]} ch{mark}"
    )


def _configured_note(teacher_maps, student_maps, pair):
    """Why the configured pair is not among the pairs that fit."""
    t, s = pair
    absent = [
        f"{layer!r} is not a feature map of the {role} (see --all)"
        for role, layer, maps in (("teacher", t, teacher_maps),
                                  ("student", s, student_maps))
        if layer not in maps
    ]
    if absent:
        return f"  (the configured pair: {'; '.join(absent)})"
    return (
        f"  (the configured pair, {t!r} and {s!r}, differ in height x "
        f"width: {_shape(teacher_maps[t][1:3])} and "
        f"{_shape(student_maps[s][1:3])}; the full factor average-pools the "
        "larger map to the smaller when it is a multiple of it)"
    )


def _pair_lines(teacher, student, all_layers, rate=0.5, rounding="half_even",
                configured=None):
    """The pairs that fit, marking the paper's and the `configured` one
    (`(teacher_layer, student_layer)` of the gin config, or None)."""
    pairs = fitting_pairs(teacher, student, all_layers)
    every = fitting_pairs(teacher, student, all_layers=True)
    suggested = paper_pair(teacher, student)
    marks = {}
    if suggested:
        marks[suggested] = ["the paper's choice"]
    if configured in every:
        marks.setdefault(configured, []).append("the configured pair")
    teacher_maps = dict(feature_maps(teacher))
    student_maps = dict(feature_maps(student))
    lines = [
        f"pairs that fit the full factor (same height x width), "
        f"factor channels at rate {rate:g}:"
    ]
    for pair in pairs + [p for p in marks if p not in pairs]:
        mark = f"   <- {', '.join(marks[pair])}" if pair in marks else ""
        lines.append(
            _pair_line(teacher_maps, student_maps, pair, rate, rounding, mark)
        )
    if not pairs and not marks:
        lines.append(
            "  none: use factor_transfer.factor = 'attention', or "
            "taps at the same resolution"
        )
    elif not suggested:
        lines.append(
            f"  (the paper's pair, {last_stage(teacher)!r} and "
            f"{last_stage(student)!r}, differ in height x width)"
        )
    if configured and configured not in every:
        lines.append(_configured_note(teacher_maps, student_maps, configured))
    return lines


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m ft_keras.taps",
        description="The feature taps of a network, or of a teacher and a "
        "student, with their shapes and the pairs that fit.",
    )
    parser.add_argument("--network", help="one network (ft_keras.models.get)")
    parser.add_argument("--teacher")
    parser.add_argument("--student")
    for role, (name_flag, args_flag) in _ROLES.items():
        parser.add_argument(
            f"--{args_flag}", action="append", type=key_value, default=[],
            metavar="KEY=VALUE",
            help=f"a keyword argument of --{name_flag} (ft_keras.models.get), "
            "e.g. alpha=0.35; repeatable",
        )
    parser.add_argument(
        "--gin_file", action="append", default=[],
        help="a runner config (repeatable): its teacher/network, "
        "student/network, dataset and factor_transfer taps",
    )
    parser.add_argument(
        "--gin_bindings", action="append", default=[],
        help="a gin binding, e.g. \"student/network.alpha = 0.35\"",
    )
    parser.add_argument(
        "--dataset",
        help="take the input shape and classes " "of this dataset (e.g. cifar100)",
    )
    parser.add_argument("--input_shape", default=None, help="H,W,C (default 32,32,3)")
    parser.add_argument("--num_classes", type=int, default=None)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="the paraphrase rate k, for the factor channels (default: the "
        "config's factor_transfer.rate, else 0.5)",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        dest="all_layers",
        help="every layer with a feature map, not only " "each stage's output",
    )
    return parser


def _networks(parser, args, configured):
    """`{role: NetworkConfig}` of the flags over the `configured` networks
    (`from_gin`'s): a flag's name replaces the config's network, a flag's
    arguments add to its arguments. Usage errors exit through `parser`."""
    networks = {}
    for role, (name_flag, args_flag) in _ROLES.items():
        name, pairs = getattr(args, name_flag), getattr(args, args_flag)
        net = None if args.network else configured.get(role)
        if name and (net is None or net.name != name):
            net = config.NetworkConfig(name, {})
        if net is None:
            if pairs:
                bound = "" if role == "network" else (
                    f" (or {role}/network.name in the gin config)")
                parser.error(f"--{args_flag} needs --{name_flag}{bound}")
            continue
        networks[role] = config.NetworkConfig(
            net.name, {**net.kwargs, **dict(pairs)})
    if not args.network and len(networks) < 2:
        gin_hint = (" (the gin config binds neither, or only one, of "
                    "teacher/network.name and student/network.name)")
        parser.error("give --network, or --teacher and --student"
                     + (gin_hint if args.gin_file or args.gin_bindings else ""))
    return networks


def _read_config(args):
    """`from_gin()` of `--gin_file` and `--gin_bindings`; `({}, None, None)`
    without them."""
    if not (args.gin_file or args.gin_bindings):
        return {}, None, None
    cli.parse_config(args.gin_file, args.gin_bindings)
    return from_gin()


def _input(args, dataset):
    """`(input_shape, num_classes)`: the flags', else the configured
    `dataset`'s (a `DataConfig` or None)."""
    if args.dataset or args.input_shape or dataset is None:
        return network_input(args.dataset, args.input_shape, args.num_classes)
    return network_input(
        dataset.name, None, args.num_classes, dataset.options.get("image_size")
    )


def _factor_settings(args, factor_transfer):
    """`(rate, rounding, configured pair or None)` of `--rate` over the
    configured `factor_transfer` (a `FactorTransferConfig` or None)."""
    if factor_transfer is None:
        return (0.5 if args.rate is None else args.rate), "half_even", None
    pair = (factor_transfer.teacher_layer, factor_transfer.student_layer)
    return (
        factor_transfer.rate if args.rate is None else args.rate,
        factor_transfer.rounding,
        None if None in pair else pair,
    )


def _fail(error):
    print(f"ft_keras: error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2


_ERRORS = (ValueError, OSError, SyntaxError, ImportError)


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.network and (args.teacher or args.student):
        parser.error("give --network, or --teacher and --student")
    try:
        configured, dataset, factor_transfer = _read_config(args)
    except _ERRORS as e:
        return _fail(e)
    try:
        networks = _networks(parser, args, configured)
        input_shape, num_classes = _input(args, dataset)
        built = {role: _build(net, input_shape, num_classes)
                 for role, net in networks.items()}
    except _ERRORS as e:
        return _fail(e)
    lines = []
    for role, model in built.items():
        lines += _describe(role, _spec(networks[role]), model, args.all_layers)
    if not args.network:
        lines += _pair_lines(built["teacher"], built["student"],
                             args.all_layers,
                             *_factor_settings(args, factor_transfer))
    print("\n".join(lines))
    return 0
