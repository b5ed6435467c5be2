"""The runner's stages, described once.

Each stage of `python -m ft_keras.train` is one row: its name, the gin
scope whose `training` and `network` it uses, the artifacts it reads from
earlier stages, the artifacts it writes into `<workdir>/<name>/`, and
whether it applies to the chosen terms. Config validation, the dry run,
the runner, the report, evaluation, export and the benchmarks read this
table; it is plain data and imports nothing.

    stage        scope        reads                          writes
    teacher      teacher      -                              model.keras
    paraphraser  paraphraser  teacher/model.keras            the terms' pre-trained files
    student      student      teacher/model.keras,           the terms' trained files,
                              the terms' pre-trained files   model.keras
    baseline     student      -                              model.keras
    evaluate     -            the trained model.keras files  results.json "evaluation"
    export       -            student/model.keras            export/
    deployment   -            the trained model.keras files  deployment/, results.json "deployment"

The `paraphraser` stage runs only when a term pre-trains connectors (Factor
Transfer's paraphraser: `paraphraser.keras`); the files a term adds are its
config's `pretrained_files` and `trained_files` (`ft_keras.term_configs`):

```python
from ft_keras import stages

stages.get("student").writes_for([])  # ('model.keras',)
[s.name for s in stages.STAGES if s.trains]
# ['teacher', 'paraphraser', 'student', 'baseline']
```
"""

import dataclasses


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
        pretraining: Whether the stage pre-trains the terms' connectors:
            it runs only for terms that do, and writes their
            `pretrained_files`.
        distills: Whether the stage trains the student with the terms: it
            also reads their `pretrained_files` and writes their
            `trained_files`.
        function: `"module:function"` that runs it, given the running
            `Experiment` (imported only when the stage runs).
    """

    name: str
    function: str = None
    scope: str = None
    reads: tuple = ()
    writes: tuple = ()
    pretraining: bool = False
    distills: bool = False

    @property
    def trains(self):
        """Whether the stage trains a network (it has a gin scope)."""
        return self.scope is not None

    def applies_to(self, terms):
        """Whether the stage runs for the term configs `terms`."""
        return not self.pretraining or any(t.pretrains for t in terms)

    def reads_for(self, terms):
        """`(stage, artifact)` pairs the stage reads with `terms`."""
        if not self.distills:
            return self.reads
        return self.reads + tuple(
            (PRETRAINING, name) for t in terms for name in t.pretrained_files)

    def writes_for(self, terms):
        """The artifacts the stage writes with `terms`, the last marking
        it finished."""
        if self.pretraining:
            return tuple(name for t in terms for name in t.pretrained_files)
        if self.distills:
            return tuple(name for t in terms for name in t.trained_files) + self.writes
        return self.writes


# The stage that pre-trains the terms' connectors.
PRETRAINING = "paraphraser"
STAGES = (
    Stage("teacher", "ft_keras.stages.training:teacher", scope="teacher",
          writes=("model.keras",)),
    Stage(
        "paraphraser",
        "ft_keras.stages.training:paraphraser",
        scope="paraphraser",
        reads=(("teacher", "model.keras"),),
        pretraining=True,
    ),
    Stage(
        "student",
        "ft_keras.stages.training:student",
        scope="student",
        reads=(("teacher", "model.keras"),),
        writes=("model.keras",),
        distills=True,
    ),
    Stage("baseline", "ft_keras.stages.training:baseline", scope="student",
          writes=("model.keras",)),
    Stage("evaluate", "ft_keras.stages.evaluation:run"),
    Stage("export", "ft_keras.stages.exporting:run", reads=(("student", "model.keras"),)),
    Stage("deployment", "ft_keras.stages.exporting:deployment",
          reads=(("student", "model.keras"),)),
)
NAMES = tuple(stage.name for stage in STAGES)
# Stage name -> the gin scope of its `training` and `network`.
SCOPES = {stage.name: stage.scope for stage in STAGES if stage.trains}
def artifacts(terms):
    """`{training stage: the artifacts it writes with terms}`, the last
    of each marking it done."""
    return {stage.name: stage.writes_for(terms) for stage in STAGES if stage.trains}


# The training stages' names, in order.
TRAINING = tuple(stage.name for stage in STAGES if stage.trains)
# The networks the evaluate stage scores: each training stage's model.keras.
EVALUATED = ("teacher", "baseline", "student")


def network_names(label):
    """`{role: name}` of the evaluated networks, as results print them:
    `"teacher"`, `"student alone"` (the baseline) and the distilled
    student, named by `label` (`DistillationConfig.label`), e.g.
    `"FT student"`."""
    return {
        "teacher": "teacher",
        "baseline": "student alone",
        "student": f"{label} student",
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
