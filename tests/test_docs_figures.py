"""Every figure the docs quote is the one its committed result file holds.

The docs mark what they quote with HTML comments, invisible on the page:

- `<!-- table: benchmarks/results/X/summary.json -->` before a markdown
  table: the table is exactly what `benchmarks/reproduce.py` writes from
  that summary (`reproduce.table`).
- `NUMBER <!-- figure: FILE EXPRESSION -->` after a number in the text: the
  number is EXPRESSION rounded to the digits the text shows. In EXPRESSION,
  `{a/b/c}` is a value of the JSON FILE (`*` for every item of a list or
  mapping, which gives a list, without the items that are null), or of a
  `# key: value` header line of a command's output (its first number);
  `{other/file.json#a/b}` reads another file. Values combine with
  + - * / ( ) and min, max, len, sum, abs.
- `<!-- output: FILE -->` before a fenced block: every line of the block is
  a line of FILE (a command's output kept by `benchmarks/results/record.py`),
  in the same order; `...` stands for any text, a line of only `...` for
  any lines.

A measurement table (one whose header names top-1, images/s, steps/s or a
wall time) without a `table:` mark fails too.
"""

import importlib.util
import json
import math
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def documents(root=REPO):
    paths = [root / "README.md", root / "benchmarks" / "README.md"]
    paths += sorted((root / "docs").glob("*.md"))
    return [p for p in paths if p.exists()]


def _reproduce():
    spec = importlib.util.spec_from_file_location(
        "_reproduce_for_docs", REPO / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TABLE = re.compile(r"<!-- table: (\S+) -->")
FIGURE = re.compile(
    r"(?P<number>-?\d[\d,]*(?:\.\d+)?)(?:%|x| s| points)?\s*"
    r"<!-- figure: (?P<file>\S+) (?P<expression>.+?) -->")
OUTPUT = re.compile(r"<!-- output: (\S+) -->")
MEASURED = re.compile(r"top-1|images/s|img/s|steps/s|wall time", re.I)
SAFE = re.compile(r"^[\d\s.+\-*/(),\[\]e]*$")
FUNCTIONS = {"min": min, "max": max, "len": len, "sum": sum, "abs": abs}


def lookup(data, path):
    """`a/b/*/c` in nested JSON: a value, or a list where `*` appears."""
    values = [data]
    spread = False
    for key in path.split("/"):
        if key == "*":
            spread = True
            values = [v for value in values for v in (
                value.values() if isinstance(value, dict) else value)]
        else:
            values = [value[int(key)] if isinstance(value, list) else value[key]
                      for value in values]
    return values if spread else values[0]


def load(path):
    """A JSON file, or the `# key: value` header of a recorded output."""
    text = pathlib.Path(path).read_text()
    if str(path).endswith(".json"):
        return json.loads(text)
    return dict(line[2:].split(": ", 1) for line in text.splitlines()
                if line.startswith("# ") and ": " in line)


def number_in(value):
    if isinstance(value, str):
        return float(re.match(r"\s*(-?[\d.]+)", value).group(1))
    return value


def evaluate(data, expression, root=REPO):
    names = {}

    def substitute(match):
        name = f"_v{len(names)}"
        source, path = data, match.group(1)
        if "#" in path:
            other, path = path.split("#", 1)
            source = load(root / other)
        value = lookup(source, path)
        names[name] = ([number_in(v) for v in value if v is not None]
                       if isinstance(value, list) else number_in(value))
        return name

    code = re.sub(r"\{([^}]+)\}", substitute, expression)
    bare = re.sub(r"\b(_v\d+|min|max|len|sum|abs)\b", "", code)
    if not SAFE.match(bare):
        raise ValueError(f"not an arithmetic expression: {expression!r}")
    return eval(code, {"__builtins__": {}}, {**FUNCTIONS, **names})


def shown_as(value, number):
    """`value` as the text shows `number`: the same digits after the point."""
    text = number.replace(",", "")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{value:.{decimals}f}" == f"{float(text):.{decimals}f}"


def table_after(lines, start):
    """The markdown table that begins within a few lines after `start`."""
    for i in range(start + 1, min(start + 4, len(lines))):
        if lines[i].startswith("|"):
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            return i, "\n".join(lines[i:end])
    return None, None


def fenced_after(lines, start):
    """The fenced block that begins right after the mark at `start`."""
    i = start + 1
    if i < len(lines) and lines[i].startswith("```"):
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        return lines[i + 1:end]
    return None


def line_pattern(line):
    return re.compile(".*".join(re.escape(part) for part in line.split("...")))


def output_errors(block, recorded):
    """Lines of `block` not found, in order, among `recorded`'s lines."""
    errors, position, gap = [], 0, False
    for line in block:
        if line.strip() == "...":
            gap = True
            continue
        pattern = line_pattern(line.rstrip())
        for i in range(position, len(recorded)):
            if pattern.fullmatch(recorded[i].rstrip()):
                if i > position and not gap and position > 0:
                    errors.append(f"lines missing before {line!r}")
                position, gap = i + 1, False
                break
        else:
            errors.append(f"not in the recorded output (in order): {line!r}")
            gap = True
    return errors


def check(path, root=REPO, reproduce=None):
    """Every error of the marked figures of the document at `path`."""
    text = pathlib.Path(path).read_text()
    lines = text.splitlines()
    name = pathlib.Path(path).name
    errors, marked_tables = [], set()
    for number, line in enumerate(lines):
        for match in TABLE.finditer(line):
            source = root / match.group(1)
            start, table = table_after(lines, number)
            if table is None:
                errors.append(f"{name}:{number + 1}: no table after the mark")
                continue
            marked_tables.add(start)
            reproduce = reproduce or _reproduce()
            expected = reproduce.table(json.loads(source.read_text()))
            if table != expected:
                errors.append(f"{name}:{start + 1}: the table is not what "
                              f"{match.group(1)} gives:\n{expected}")
        if line.count("<!-- figure:") != len(FIGURE.findall(line)):
            errors.append(f"{name}:{number + 1}: a figure mark without its "
                          "number right before it")
        for match in FIGURE.finditer(line):
            data = load(root / match.group("file"))
            value = evaluate(data, match.group("expression"), root)
            if not shown_as(value, match.group("number")):
                errors.append(f"{name}:{number + 1}: {match.group('number')} "
                              f"is {value!r} in {match.group('file')} "
                              f"({match.group('expression')})")
        for match in OUTPUT.finditer(line):
            block = fenced_after(lines, number)
            if block is None:
                errors.append(f"{name}:{number + 1}: no fenced block after "
                              "the mark")
                continue
            recorded = [l for l in (root / match.group(1)).read_text()
                        .splitlines() if not l.startswith("# ")]
            errors += [f"{name}:{number + 2}: {e}"
                       for e in output_errors(block, recorded)]
    in_fence = False
    for number, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
        if (not in_fence and line.startswith("|")
                and (number == 0 or not lines[number - 1].startswith("|"))
                and MEASURED.search(line) and number not in marked_tables):
            errors.append(f"{name}:{number + 1}: a table of measurements "
                          "without a `<!-- table: FILE -->` mark")
    return errors


def marks(path):
    text = pathlib.Path(path).read_text()
    return (len(TABLE.findall(text)), len(FIGURE.findall(text)),
            len(OUTPUT.findall(text)))


@pytest.fixture(scope="module")
def reproduce():
    return _reproduce()


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_marked_figure_is_its_result_files(path, reproduce):
    assert check(path, reproduce=reproduce) == []


def test_the_docs_quote_their_results_through_marks():
    """The marks exist: the README's results table, the quickstart's output,
    and figures in the benchmarks page."""
    tables, figures, outputs = map(sum, zip(*(marks(p) for p in documents())))
    assert marks(REPO / "README.md")[0] >= 1 and marks(REPO / "README.md")[2] >= 1
    assert tables >= 5 and figures >= 10 and outputs >= 3


def every_marked_file(root=REPO):
    for path in documents(root):
        text = path.read_text()
        for pattern in (TABLE, OUTPUT):
            yield from pattern.findall(text)
        for match in FIGURE.finditer(text):
            yield match.group("file")
            yield from re.findall(r"\{([^}#]+)#", match.group("expression"))


def test_every_quoted_result_file_holds_machine_versions_and_date():
    """Command outputs are kept with their header; summaries name their
    command."""
    for name in set(every_marked_file()):
        text = (REPO / name).read_text()
        if name.endswith(".json"):
            data = json.loads(text)
            if "header" in data:
                # A cost curve: record.py's header, and every row measured.
                assert data["header"]["command"].startswith(
                    "python benchmarks/cost_curve.py "), name
                assert {"date", "machine", "cpu flags", "oneDNN and threads",
                        "versions"} <= set(data["header"]), name
                assert data["complete"], name
            elif "benchmarks/reproduce.py" not in data["command"]:
                # A deployment report: its command, date and machine.
                assert data["command"].startswith(
                    "python -m ft_keras.deployment "), name
                assert {"date", "machine", "runtimes"} <= set(data), name
        else:
            header = [l for l in text.splitlines() if l.startswith("# ")]
            keys = {l[2:].split(":", 1)[0] for l in header}
            assert {"command", "date", "machine", "versions"} <= keys, name


def copy_docs(tmp_path):
    for path in documents():
        target = tmp_path / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (tmp_path / "benchmarks").mkdir(exist_ok=True)
    for name in set(every_marked_file()):
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((REPO / name).read_text())


def first_mark(pattern):
    for path in documents():
        match = pattern.search(path.read_text())
        if match:
            return path, match
    raise AssertionError(f"no {pattern.pattern} mark in the docs")


def changed_digit(text):
    """`text` with its last digit changed."""
    i = max(i for i, c in enumerate(text) if c.isdigit())
    return text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]


def test_a_changed_figure_fails(tmp_path, reproduce):
    copy_docs(tmp_path)
    path, match = first_mark(FIGURE)
    copy = tmp_path / path.relative_to(REPO)
    text = copy.read_text()
    start, end = match.span("number")
    copy.write_text(text[:start] + changed_digit(match.group("number"))
                    + text[end:])
    errors = check(copy, root=tmp_path, reproduce=reproduce)
    assert len(errors) == 1 and match.group("expression") in errors[0]
    copy.write_text(text)
    assert check(copy, root=tmp_path, reproduce=reproduce) == []


def test_a_changed_table_cell_fails(tmp_path, reproduce):
    copy_docs(tmp_path)
    path, match = first_mark(TABLE)
    copy = tmp_path / path.relative_to(REPO)
    text = copy.read_text()
    after = text.index("\n| ", match.end()) + 1
    row_end = text.index("\n", text.index("\n", after) + 1)  # header + rule
    row_end = text.index("\n", row_end + 1)                  # first data row
    copy.write_text(text[:after] + changed_digit(text[after:row_end])
                    + text[row_end:])
    errors = check(copy, root=tmp_path, reproduce=reproduce)
    assert len(errors) == 1 and "is not what" in errors[0]


def test_a_changed_result_file_fails(tmp_path, reproduce):
    """The other way round: the file changes, the docs do not."""
    copy_docs(tmp_path)
    path, match = first_mark(TABLE)
    summary_path = tmp_path / match.group(1)
    summary = json.loads(summary_path.read_text())
    method = next(iter(summary["methods"].values()))
    method["top1_mean"] += 0.5
    summary_path.write_text(json.dumps(summary))
    errors = check(tmp_path / path.relative_to(REPO), root=tmp_path,
                   reproduce=reproduce)
    assert any("is not what" in e for e in errors)


def test_a_changed_output_line_fails(tmp_path, reproduce):
    copy_docs(tmp_path)
    path, match = first_mark(OUTPUT)
    copy = tmp_path / path.relative_to(REPO)
    text = copy.read_text()
    block_start = text.index("```", match.end())
    block_end = text.index("\n```", block_start + 3)
    block = text[block_start:block_end]
    copy.write_text(text[:block_start] + changed_digit(block) + text[block_end:])
    errors = check(copy, root=tmp_path, reproduce=reproduce)
    assert len(errors) == 1 and "not in the recorded output" in errors[0]


def test_a_figure_mark_away_from_its_number_fails(tmp_path, reproduce):
    page = tmp_path / "README.md"
    page.write_text("FT gains 1.66 points. <!-- figure: x.json {a} -->\n")
    (error,) = check(page, root=tmp_path, reproduce=reproduce)
    assert "without its number" in error


def test_an_unmarked_measurement_table_fails(tmp_path, reproduce):
    page = tmp_path / "README.md"
    page.write_text("| step | img/s |\n|---|---|\n| FT | 341.4 |\n")
    (error,) = check(page, root=tmp_path, reproduce=reproduce)
    assert "without a `<!-- table: FILE -->` mark" in error


@pytest.mark.parametrize("value, number, same", [
    (91.93333, "91.93", True), (91.935001, "91.93", False),
    (1.6956, "1.7", True), (1.64, "1.7", False), (3839.0098, "3,839", True),
    (0.06, "0.06", True)])
def test_a_figure_is_its_value_to_the_digits_shown(value, number, same):
    assert shown_as(value, number) is same


def test_expressions_read_json_paths_and_lists():
    data = {"methods": {"FT": {"runs": [{"top1": 91.9}, {"top1": 92.0}]},
                        "KD": {"top1_mean": 90.5}}}
    assert evaluate(data, "{methods/FT/runs/1/top1}") == 92.0
    assert evaluate(data, "min({methods/FT/runs/*/top1}) - "
                          "{methods/KD/top1_mean}") == pytest.approx(1.4)
    with pytest.raises(ValueError, match="not an arithmetic expression"):
        evaluate(data, "__import__('os')")
    assert math.isclose(evaluate(data, "len({methods/*})"), 2)
