"""The entry point of `python -m ft_keras.export`: runs the `export` stage.

It runs `ft_keras.stages.exporting` through `ft_keras.cli.main`, which exports
the trained student of an experiment for deployment:

    python -m ft_keras.export --gin_file=gin/distill.gin --workdir=/tmp/ft

Writes `<workdir>/export/`: a SavedModel taking raw uint8 images, float and
int8 TFLite files and `student.keras` (see `ft_keras.export`).
"""

from ft_keras import cli

if __name__ == "__main__":
    cli.main(stages=("export",))
