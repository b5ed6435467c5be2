"""Rendering for the reports: Markdown tables and matplotlib figures saved
as PNG files, the one home of both for `ft_keras.report` and
`ft_keras.deployment`.

Example:

```python
from ft_keras import rendering
print(rendering.markdown_lines(["a", "b"], [["1", "2"]]))
# ['| a | b |', '| --- | --- |', '| 1 | 2 |']
if rendering.can_plot():
    with rendering.figure("plot.png", size=(4, 3)) as (figure, axis):
        axis.plot([1, 2, 3])
```
"""

import contextlib
import importlib.util

# Every figure's resolution, in dots per inch.
DPI = 110


def markdown_row(cells):
    """One row of a Markdown table: `| a | b |`."""
    return "| " + " | ".join(cells) + " |"


def markdown_lines(header, rows):
    """A Markdown table's lines: the `header` cells, the rule under them,
    then one line per row of cells."""
    return [markdown_row(header), markdown_row(["---"] * len(header))] + [
        markdown_row(cells) for cells in rows
    ]


def can_plot():
    """Whether matplotlib is installed (the `report` extra)."""
    return importlib.util.find_spec("matplotlib") is not None


@contextlib.contextmanager
def figure(path, columns=1, size=(7, 4.5)):
    """Yields `(figure, axes)`: a matplotlib figure of one row of `columns`
    panels (`axes` is one axis for one column), `size` inches at `DPI`,
    drawn without a display; on leaving, lays it out and saves it as the
    PNG `path`. The figure is closed either way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn, axes = plt.subplots(1, columns, figsize=size, dpi=DPI)
    try:
        yield drawn, axes
        drawn.tight_layout()
        drawn.savefig(path)
    finally:
        plt.close(drawn)
