"""The entry point of `python -m ft_keras.evaluate`: runs the `evaluate` stage.

It runs `ft_keras.stages.evaluation` through `ft_keras.cli.main`, which
evaluates the trained networks of an experiment on its test split:

    python -m ft_keras.evaluate --gin_file=gin/distill.gin --workdir=/tmp/ft

Prints top-1/top-5 of the teacher, the student alone (if trained) and the
distilled student, and records them in `results.json`.
"""

from ft_keras import cli

if __name__ == "__main__":
    cli.main(stages=("evaluate",))
