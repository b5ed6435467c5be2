"""The `evaluate` stage: top-1/top-5 of every trained network on the test
split, recorded in `results.json` with a warning for a network at chance.

Each function takes the running `ft_keras.experiment.Experiment`, which
holds the settings, the workdir and the test pipeline.
"""

import keras

from ft_keras import callbacks as ft_callbacks
from ft_keras import distribute
from ft_keras import metrics as ft_metrics
from ft_keras import stages
from ft_keras import workdir as ft_workdir
from ft_keras._validation import ConfigurationError


def top_k_metrics(num_classes):
    """Top-1 accuracy, and top-5 when there are more than 5 classes, of
    class indices or mixed labels alike."""
    metrics = [ft_metrics.TopKAccuracy(k=1, name="top1")]
    if num_classes > 5:
        metrics.append(ft_metrics.TopKAccuracy(k=5, name="top5"))
    return metrics


def evaluate(experiment):
    """`{role: {"top1": ..., "top5": ...}}` of every network the workdir
    holds a finished `model.keras` of, on the test split.

    Raises:
        ConfigurationError: when no training stage has finished.
    """
    results = {}
    for role in stages.EVALUATED:
        if not experiment.workdir.done(role, "model.keras"):
            continue
        model = experiment.load(experiment.workdir.path(role, "model.keras"), compile=False)
        with distribute.scope(experiment.strategy):
            model.compile(
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=top_k_metrics(experiment.num_classes),
            )
        model.run_eagerly = experiment.dry_run
        scores = model.evaluate(experiment.test_ds, verbose=0, return_dict=True)
        results[role] = {k: float(v) for k, v in scores.items() if k != "loss"}
    if not results:
        raise ConfigurationError(
            f"Nothing to evaluate in {experiment.workdir}: run the training "
            "stages first (python -m ft_keras.train with the same config)."
        )
    return results


def chance_warnings(experiment, results, names):
    """`{role: line}` for each network that tests at chance while its
    stage's last training epoch scored high (`callbacks.chance_warning`)."""
    warnings = {}
    for role, scores in results.items():
        line = ft_callbacks.chance_warning(
            names[role],
            scores["top1"],
            ft_workdir.last_logged(experiment.workdir.path(role, "log.csv"), "top1"),
            experiment.num_classes,
        )
        if line:
            warnings[role] = line
    return warnings


def run(experiment):
    """Evaluates, records `evaluation` and `warnings` in results.json and
    prints one line per network (and each warning)."""
    results = evaluate(experiment)
    names = stages.network_names(experiment.settings.distillation.label)
    warnings = {} if experiment.dry_run else chance_warnings(experiment, results, names)
    experiment.workdir.update_results(evaluation=results, warnings=warnings)
    prefix = (
        "[ft_keras] dry run (synthetic data):" if experiment.dry_run else "[ft_keras]"
    )
    for role, scores in results.items():
        line = ", ".join(f"{k} {100 * v:.2f}%" for k, v in scores.items())
        flag = "   <- at chance: see the warning" if role in warnings else ""
        print(f"{prefix} {names[role]:>13}: {line}{flag}", flush=True)
    for line in warnings.values():
        print(line, flush=True)
