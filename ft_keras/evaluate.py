"""Evaluates the trained networks of an experiment on its test split.

    python -m ft_keras.evaluate --gin_file=gin/distill.gin --workdir=/tmp/ft

Prints top-1/top-5 of the teacher, the student alone (if trained) and the
Factor Transfer student, and records them in `results.json`.
"""

from ft_keras import cli


def main(argv):
    return cli.run(argv, stages=("evaluate",))


if __name__ == "__main__":
    from absl import app

    cli.define_flags()
    app.run(main)
