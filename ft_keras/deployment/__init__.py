"""What distillation bought, deployed: every trained network of a workdir,
exported and measured side by side.

    python -m ft_keras.deployment --workdir=runs/quickstart [--latency_runs 50]
        [--threads 4] [--full_integer]

For a finished workdir, each trained network (the teacher, `teacher/
model.keras`; the student of the distillation method, `student/model.keras`;
the student trained alone, `baseline/model.keras`, when that stage ran) is
exported with `ft_keras.export.export_for_dataset` into
`<workdir>/deployment/<role>/` (the student's `<workdir>/export/` of the
export stage is used as it is when it holds every file asked for, and so
is an earlier report's export of an unchanged `model.keras`), and
measured with `ft_keras.export.measure_export` on the full test split, each
file in its own runtime. The files are named `student_*` for every network:
the names `export_student` writes.

The runner does the same as its last stage, `deployment`
(`experiment.stages = [..., 'export', 'deployment']`), with the options of
gin's `deployment.*` (`ft_keras.config.DeploymentConfig`: `latency_runs`,
`batch`, `threads`, `full_integer`); the flags here override the workdir's
for one report.

Written into `<workdir>/deployment/`: `deployment.md` (the table),
`deployment.json` (the same as a dict, `deployment()`'s return value, also
under the key `"deployment"` of `<workdir>/results.json`) and
`deployment.png` (top-1 against latency and file size, with matplotlib).
The top-1 change of a file is against its network's float Keras top-1
(`ft_keras.deployment.rows` says which).

The dataset, its test options, the int8 calibration images (the export
stage's: `experiment.representative_batches` batches of the training split)
and the method's name come from the workdir's own `config.gin`, unless
`settings` are given.

One module per step: `trained` (the workdir's networks and settings),
`exports` (their exported files), `rows` (the report as data), `table`
(`deployment.md`), `figure` (`deployment.png`), `deploy` (the steps in
order, and the written report) and `command` (the command line).

Example:

```python
from ft_keras import deployment
report = deployment.deployment("runs/quickstart", latency_runs=20)
print(open("runs/quickstart/deployment/deployment.md").read())
```
"""

from ft_keras.deployment.command import main
from ft_keras.deployment.deploy import deployment
from ft_keras.deployment.deploy import measure
from ft_keras.deployment.deploy import write_report
from ft_keras.deployment.exports import SOURCE_FILE
from ft_keras.deployment.exports import export_models
from ft_keras.deployment.figure import NO_PLOT
from ft_keras.deployment.figure import plot
from ft_keras.deployment.rows import FORMATS
from ft_keras.deployment.rows import build_rows
from ft_keras.deployment.table import header_line
from ft_keras.deployment.table import markdown
from ft_keras.deployment.trained import OUT_DIR
from ft_keras.deployment.trained import ROLES
from ft_keras.deployment.trained import DeploymentError
from ft_keras.deployment.trained import load_settings
from ft_keras.deployment.trained import trained_models
