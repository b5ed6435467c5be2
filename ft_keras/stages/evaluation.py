"""The `evaluate` stage: top-1/top-5 of every trained network on the test
split, recorded in `results.json` with a warning for a network at chance.

Each function takes the run's `ft_keras.stages.context.RunContext`, which
holds the settings, the workdir and the test pipeline.
"""

import keras

from ft_keras import callbacks as ft_callbacks
from ft_keras import distribute
from ft_keras import metrics as ft_metrics
from ft_keras import stages
from ft_keras import workdir as ft_workdir
from ft_keras._validation import ConfigurationError


def evaluate(context):
    """`{role: {"top1": ..., "top5": ...}}` of every network the workdir
    holds a finished `model.keras` of, on the test split.

    Raises:
        ConfigurationError: when no training stage has finished.
    """
    results = {}
    for role in stages.EVALUATED:
        if not context.workdir.done(role, "model.keras"):
            continue
        model = context.load(context.workdir.path(role, "model.keras"), compile=False)
        with distribute.scope(context.strategy):
            model.compile(
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=ft_metrics.top_k_metrics(context.num_classes),
            )
        model.run_eagerly = context.dry_run
        scores = model.evaluate(context.test_ds, verbose=0, return_dict=True)
        results[role] = {k: float(v) for k, v in scores.items() if k != "loss"}
    if not results:
        raise ConfigurationError(
            f"Nothing to evaluate in {context.workdir}: run the training "
            "stages first (python -m ft_keras.train with the same config)."
        )
    return results


def chance_warnings(context, results, names):
    """`{role: line}` for each network that tests at chance while its
    stage's last training epoch scored high (`callbacks.chance_warning`)."""
    warnings = {}
    for role, scores in results.items():
        line = ft_callbacks.chance_warning(
            names[role],
            scores["top1"],
            ft_workdir.last_logged(context.workdir.path(role, "log.csv"), "top1"),
            context.num_classes,
        )
        if line:
            warnings[role] = line
    return warnings


def run(context):
    """Evaluates, records `evaluation` and `warnings` in results.json and
    prints one line per network (and each warning)."""
    results = evaluate(context)
    names = stages.network_names(context.settings.distillation.label)
    warnings = {} if context.dry_run else chance_warnings(context, results, names)
    context.workdir.update_results(evaluation=results, warnings=warnings)
    prefix = (
        "[ft_keras] dry run (synthetic data):" if context.dry_run else "[ft_keras]"
    )
    for role, scores in results.items():
        line = ", ".join(f"{k} {100 * v:.2f}%" for k, v in scores.items())
        flag = "   <- at chance: see the warning" if role in warnings else ""
        print(f"{prefix} {names[role]:>13}: {line}{flag}", flush=True)
    for line in warnings.values():
        print(line, flush=True)
