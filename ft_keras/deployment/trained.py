"""The workdir a deployment report reads: its trained networks, checked
whole, and its settings (`config.gin`)."""

import os

from ft_keras import workdir as ft_workdir

# The trained networks, in the order the table lists them.
ROLES = ("teacher", "student", "baseline")
# The report's directory in the workdir: `<workdir>/deployment/`.
OUT_DIR = "deployment"


class DeploymentError(ValueError):
    """A workdir without what a deployment report needs (one line)."""


def trained_models(workdir):
    """`{role: path of model.keras}` of the networks `workdir` trained,
    each checked whole against the fingerprint its stage recorded.

    Raises:
        DeploymentError: No trained student (`student/model.keras`).
        ft_keras.workdir.WorkdirError: A model file that is not whole.
    """
    workdir = os.path.abspath(workdir)
    paths = {
        role: os.path.join(workdir, role, "model.keras") for role in ROLES
    }
    present = {
        role: path for role, path in paths.items()
        if os.path.isdir(workdir) and ft_workdir.check_artifact(path)
    }
    if "student" not in present:
        raise DeploymentError(
            f"{workdir} holds no trained student ({paths['student']}): train "
            "it first with python -m ft_keras.train --gin_file=... "
            f"--workdir={workdir}."
        )
    return present


def load_settings(workdir):
    """The `ft_keras.config.Settings` of `<workdir>/config.gin`. Clears
    gin's global config first (`gin.clear_config()`) and leaves the
    workdir's in it."""
    import gin

    from ft_keras import config

    path = os.path.join(os.path.abspath(workdir), "config.gin")
    if not os.path.exists(path):
        raise DeploymentError(
            f"{workdir} has no config.gin, so its dataset is unknown: give "
            "the workdir of a run of python -m ft_keras.train."
        )
    gin.clear_config()
    # The run wrote every binding into it: no includes to look up.
    config.parse([path], [])
    return config.from_gin()
