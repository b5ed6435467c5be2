"""The runner's stages, described once.

Each stage of `python -m ft_keras.train` is one row: its name, the gin
scope whose `training` and `network` it uses, the artifacts it reads from
earlier stages, the artifacts it writes into `<workdir>/<name>/`, and
whether it applies to the chosen method. Config validation, the dry run,
the runner, the report, evaluation, export and the benchmarks read this
table; it is plain data and imports nothing.

    stage        scope        reads                          writes
    teacher      teacher      -                              model.keras
    paraphraser  paraphraser  teacher/model.keras            paraphraser.keras   (FT only)
    student      student      teacher/model.keras,           translator.keras (FT only),
                              paraphraser/... (FT only)      model.keras
    baseline     student      -                              model.keras
    evaluate     -            the trained model.keras files  results.json "evaluation"
    export       -            student/model.keras            export/
    deployment   -            the trained model.keras files  deployment/, results.json "deployment"

```python
from ft_keras import stages

stages.get("student").writes_for("kd")  # ('model.keras',)
[s.name for s in stages.STAGES if s.trains]
# ['teacher', 'paraphraser', 'student', 'baseline']
```
"""

import dataclasses

from ft_keras import methods


@dataclasses.dataclass(frozen=True)
class Stage:
    """One row of the stage table.

    Attributes:
        name: The stage's name in `experiment.stages` and its directory in
            the workdir.
        scope: The gin scope of its `training` and `network` bindings;
            None for a stage that trains nothing.
        reads: `(stage, artifact)` pairs it needs from earlier stages.
        writes: The artifacts it writes into `<workdir>/<name>/`, in the
            order it writes them: the last marks the stage finished.
        factor_transfer_only: Reads or writes that only Factor Transfer
            methods have (the paraphraser and the translator).
        needs_factor_transfer: Whether the stage applies only to the
            methods that pre-train a paraphraser.
        function: `"module:function"` that runs it, given the running
            `Experiment` (imported only when the stage runs).
    """

    name: str
    function: str = None
    scope: str = None
    reads: tuple = ()
    writes: tuple = ()
    factor_transfer_only: tuple = ()
    needs_factor_transfer: bool = False

    @property
    def trains(self):
        """Whether the stage trains a network (it has a gin scope)."""
        return self.scope is not None

    def applies_to(self, method):
        """Whether the stage runs for `distillation.method` `method`."""
        return not self.needs_factor_transfer or methods.uses_factor_transfer(method)

    def reads_for(self, method):
        """`reads`, without what only Factor Transfer has unless `method`
        uses it."""
        return self._for(self.reads, method)

    def writes_for(self, method):
        """`writes`, likewise."""
        return self._for(self.writes, method)

    def _for(self, items, method):
        if methods.uses_factor_transfer(method):
            return items
        return tuple(i for i in items if i not in self.factor_transfer_only)


STAGES = (
    Stage("teacher", "ft_keras.stages.train:teacher", scope="teacher",
          writes=("model.keras",)),
    Stage(
        "paraphraser",
        "ft_keras.stages.train:paraphraser",
        scope="paraphraser",
        reads=(("teacher", "model.keras"),),
        writes=("paraphraser.keras",),
        needs_factor_transfer=True,
    ),
    Stage(
        "student",
        "ft_keras.stages.train:student",
        scope="student",
        reads=(("teacher", "model.keras"), ("paraphraser", "paraphraser.keras")),
        writes=("translator.keras", "model.keras"),
        factor_transfer_only=(
            ("paraphraser", "paraphraser.keras"),
            "translator.keras",
        ),
    ),
    Stage("baseline", "ft_keras.stages.train:baseline", scope="student",
          writes=("model.keras",)),
    Stage("evaluate", "ft_keras.stages.evaluate:run"),
    Stage("export", "ft_keras.stages.export:run", reads=(("student", "model.keras"),)),
    Stage("deployment", "ft_keras.stages.export:deployment",
          reads=(("student", "model.keras"),)),
)
NAMES = tuple(stage.name for stage in STAGES)
# Stage name -> the gin scope of its `training` and `network`.
SCOPES = {stage.name: stage.scope for stage in STAGES if stage.trains}
# Training stage name -> the artifacts it writes, the last marking it done.
ARTIFACTS = {stage.name: stage.writes for stage in STAGES if stage.trains}
# The networks the evaluate stage scores: each training stage's model.keras.
EVALUATED = ("teacher", "baseline", "student")


def network_names(method):
    """`{role: name}` of the evaluated networks, as results print them:
    `"teacher"`, `"student alone"` (the baseline) and the method's student,
    e.g. `"FT student"`."""
    return {
        "teacher": "teacher",
        "baseline": "student alone",
        "student": f"{methods.label(method)} student",
    }


def function(name):
    """The function that runs stage `name` (its module imported now)."""
    import importlib

    module, attribute = get(name).function.split(":")
    return getattr(importlib.import_module(module), attribute)


def get(name):
    """The `Stage` named `name`.

    Raises:
        ValueError: for a name not in the table, listing the names.
    """
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"No stage {name!r}: the stages are {NAMES}.")
