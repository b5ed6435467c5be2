"""The README's commands and example are the ones that work."""

import pathlib
import re

import numpy as np
import tensorflow as tf

REPO = pathlib.Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    command = [l for l in ci_lines if "pytest" in l]
    assert len(command) == 1
    assert command[0] in "".join(code_blocks("bash"))


def test_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (example,) = [b for b in code_blocks("python") if "Distiller" in b]
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    distiller = namespace["distiller"]
    # The distilled student learned the task and was exported.
    x, y = next(iter(namespace["test"]))
    accuracy = np.mean(np.argmax(distiller.student(x), axis=1) == y.numpy())
    assert accuracy > 0.8
    served = tf.saved_model.load(str(tmp_path / "student_savedmodel"))
    np.testing.assert_allclose(served.serve(x), distiller.student(x), atol=1e-5)
