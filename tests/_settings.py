"""Runner settings built in Python for the tests: the seeded digits run of
two WRN-10-1, one epoch a stage, the `stage3` taps."""

from ft_keras import config


def digits_settings(batch_size=32, **experiment):
    """A `config.Settings` of that run; `experiment` sets
    `ExperimentConfig` fields (`stages`, ...)."""
    return config.Settings(
        experiment=config.ExperimentConfig(seed=0, **experiment),
        cluster=config.ClusterConfig(),
        dataset=config.DataConfig("digits", batch_size=batch_size),
        distillation=config.DistillationConfig(
            terms=[config.FactorTransferConfig("stage3", "stage3")]),
        training={s: config.TrainingConfig(epochs=1)
                  for s in ("teacher", "paraphraser", "student")},
        network={"teacher": config.NetworkConfig("wrn10_1", {}),
                 "student": config.NetworkConfig("wrn10_1", {})},
    )
