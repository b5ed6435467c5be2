"""The private Keras names that exact resumption (`ft_keras.checkpoint`) uses.

Keras 3 has no public API for these; each function's docstring says what is
missing and the Keras version its body was checked against
(tests/test_resume.py calls each one on real Keras objects, so an upgrade
that renames one fails there rather than in a long run).
"""


def seed_generator_states(model):
    """The state variables of the `keras.random.SeedGenerator`s that the
    layers of `model` own (Dropout, GaussianNoise, random augmentation
    layers), in layer order, each once.

    Missing public API: a layer's seed generators are tracked in
    `Layer._seed_generators`, and `save_weights` does not save their state
    (keras-team/keras#19796), so a resumed run would draw the same dropout
    masks again. Checked against Keras 3.15.1.
    """
    states, seen = [], set()
    for layer in model._flatten_layers(include_self=True):
        for generator in getattr(layer, "_seed_generators", ()):
            if id(generator.state) not in seen:
                seen.add(id(generator.state))
                states.append(generator.state)
    return states


def set_initial_epoch(model, epoch):
    """Makes the next `model.fit` start at `epoch` (None: at the
    `initial_epoch` argument of `fit`).

    Missing public API: a callback cannot change where `fit` starts; Keras's
    own `BackupAndRestore` sets `Trainer._initial_epoch` in
    `on_train_begin`, which `fit` reads after it. Checked against Keras
    3.15.1.
    """
    model._initial_epoch = epoch


# Iterators `fit` creates on a dataset of known cardinality per epoch (no
# `steps_per_epoch`): the epoch's own, and one more when the epoch's last
# batch is taken (`EpochIterator._enumerate_iterator` makes the next
# epoch's iterator there, then makes a new one at the next epoch's start).
# Checked against Keras 3.15.1.
ITERATORS_PER_EPOCH = 2


def fit_peeks(model):
    """How many iterators `model.fit` creates on its dataset before the
    first epoch's: 1 for a model built in a `tf.distribute` strategy's
    scope (other than the default strategy), 0 otherwise.

    Missing public API: the TensorFlow trainer reads one batch from a fresh
    iterator to build the model symbolically when it holds a strategy
    (`TensorFlowTrainer._maybe_symbolic_build`). Each iterator of a
    `shuffle(reshuffle_each_iteration=True)` dataset draws the next order,
    so a resumed run must count these to reach the same epoch's order.
    Checked against Keras 3.15.1.
    """
    return 0 if getattr(model, "_distribute_strategy", None) is None else 1
