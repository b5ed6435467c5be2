"""The run's input pipelines: the configured dataset's train and test
pipelines (`ft_keras.data.build_dataset`, sharded as the cluster says), or
the dry run's synthetic batches of the same shapes.

Each function takes the run's `ft_keras.stages.context.RunContext`.
"""

import numpy as np

from ft_keras import data
from ft_keras import distribute

# Per replica; the dry run's steps are about wiring, not speed.
DRY_RUN_BATCH = 4
DRY_RUN_STEPS = 2


def dataset(context, training, split=None, **overrides):
    cfg = context.settings.dataset
    if context.dry_run:
        return synthetic_dataset(context, training)
    if split is None:
        split = cfg.train_split if training else cfg.test_split
    options = dict(cfg.options if training else cfg.eval_options)
    if training and needs_indices(context):
        options["index"] = True
    options.update(overrides)
    options.setdefault("seed", context.settings.experiment.seed)
    if (
        context.settings.experiment.seed is not None
        or distribute.num_workers(context.strategy) > 1
    ):
        # Every worker must cut the same global batches from its copy.
        options.setdefault("deterministic", True)
    dataset = data.build_dataset(
        cfg.name,
        split,
        batch_size=(
            context.global_batch if training else cfg.eval_batch_size * context.replicas
        ),
        training=training,
        data_dir=cfg.data_dir,
        **options,
    )
    return dataset.with_options(
        distribute.shard_options(context.settings.cluster.auto_shard)
    )


def synthetic_dataset(context, training):
    """`DRY_RUN_STEPS` batches shaped like the configured dataset's."""
    options = (
        context.settings.dataset.options
        if training
        else context.settings.dataset.eval_options
    )
    augment = options.get("augment") or ()
    augment = (augment,) if isinstance(augment, str) else augment
    mixing = any(str(a).lower().endswith(("cutmix", "mixup")) for a in augment)
    return data.synthetic_dataset(
        context.settings.dataset.name,
        batch_size=DRY_RUN_BATCH * context.replicas,
        steps=DRY_RUN_STEPS,
        image_size=options.get("image_size"),
        one_hot=mixing,
        seed=context.settings.experiment.seed or 0,
        index=training and needs_indices(context),
    )


def needs_indices(context):
    """Whether a term needs each example's index in the training set: the
    training pipeline then yields `({"images", "index"}, labels)`."""
    return any(term.needs_indices for term in context.terms)


def training_set(context):
    """The training split's `term_configs.TrainingSet`. A dry run's has
    the real split's size where it is known (else its synthetic batch's)
    and synthetic labels."""
    from ft_keras import term_configs

    cfg = context.settings.dataset
    if context.dry_run:
        size = context.train_examples or DRY_RUN_BATCH * context.replicas
        labels = (np.arange(size) % context.num_classes).astype(np.int32)
    else:
        labels = data.split_labels(cfg.name, cfg.train_split, cfg.data_dir,
                                   **dict(cfg.options))
    return term_configs.TrainingSet(len(labels), context.num_classes, labels)


def images_only(dataset):
    """`dataset` without the indices (`needs_indices`), for a model that
    takes images; an iterator of it draws the same shuffle order and
    augmentation seeds as one of `dataset`, so the stream's position
    counts it."""
    if not isinstance(dataset.element_spec[0], dict):
        return dataset
    return dataset.map(lambda inputs, labels: (inputs["images"], labels))


def real_steps_per_epoch(context):
    """`(steps per epoch, examples)` of the real training split; 1 step
    where its size is unknown (`data.num_examples`)."""
    cfg = context.settings.dataset
    size = data.num_examples(cfg.name, cfg.train_split, cfg.data_dir)
    return (max(1, size // context.global_batch) if size else 1), size
