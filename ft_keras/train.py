"""The entry point of `python -m ft_keras.train`: runs `ft_keras.experiment`.

It runs an experiment's stages (teacher, paraphraser, student, evaluate,
export) through `ft_keras.cli.main`:

    python -m ft_keras.train --gin_file=gin/distill.gin --workdir=/tmp/ft
    python -m ft_keras.train --gin_file=gin/distill.gin --dry_run

Rerunning the same command skips finished stages and resumes an interrupted
one; `--dry_run` checks a config end to end in a minute. Flags:
`ft_keras.cli`; the stages: `ft_keras.experiment.Experiment`.
"""

from ft_keras import cli

if __name__ == "__main__":
    cli.main()
