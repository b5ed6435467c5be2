"""Every Python and shell block of the docs is run, or says why not.

Each ```python / ```bash block of README.md, docs/*.md and
benchmarks/README.md follows one mark (an HTML comment, invisible on the
page):

- `<!-- run: tests/test_readme.py -->`: that test executes the block (it
  selects its blocks by this mark, and checks it ran every one);
- `<!-- run: .ci/run -->`: CI runs this very line (`tests/test_readme.py`
  checks that the two are identical);
- `<!-- not run: REASON -->`: too long for the test suite, or it needs a
  GPU, a cluster, internet or files a user has; the reason says which.

Blocks that are not run are still checked here, without running anything:
Python compiles; each shell command names a module, script or file that
exists, only flags that its program defines, only gin files that exist and
gin bindings of configurables and fields that exist.
"""

import ast
import functools
import pathlib
import re
import shlex

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
MARK = re.compile(r"^<!-- (run|not run): (.+?) -->$")
LANGUAGES = ("python", "bash", "sh", "shell", "console")
ABSL_FLAGS = {"verbosity", "v", "logtostderr", "alsologtostderr", "helpfull",
              "help", "flagfile"}
SEPARATORS = {"&&", ";", "||", "|", "do", "done", "then", "fi", "(", ")"}
PATH_PREFIXES = ("gin/", "launch/", "benchmarks/", "tests/", "ft_keras/")
# Programs that run the rest of the command, and shell tools taken as they are.
WRAPPERS = {"time", "/usr/bin/time", "env", "sudo", "nice", "timeout"}
SHELL_TOOLS = {".", "source", "export", "for", "apt-get", "cd", "git", "cat",
               "cp", "mv", "mkdir", "ls", "echo", "diff", "cmp", "sha256sum",
               "rm", "tar", "head", "tail", "grep", "wc", "sort"}


def documents():
    paths = [REPO / "README.md", REPO / "benchmarks" / "README.md"]
    return [p for p in paths if p.exists()] + sorted((REPO / "docs").glob("*.md"))


def blocks(path):
    """(language, mark or None, code, line number) of each fenced block."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        match = re.match(r"^```(\w*)$", lines[i])
        if not match:
            i += 1
            continue
        end = i + 1
        while not lines[end].startswith("```"):
            end += 1
        before = [l for l in lines[max(0, i - 3):i] if l.strip()]
        mark = MARK.match(before[-1]) if before else None
        found.append((match.group(1), mark, "\n".join(lines[i + 1:end]) + "\n",
                      i + 1))
        i = end + 1
    return found


def code_blocks():
    for path in documents():
        for language, mark, code, line in blocks(path):
            if language in LANGUAGES:
                yield path, language, mark, code, line


def block_id(value):
    if isinstance(value, pathlib.Path) and value.is_relative_to(REPO):
        return str(value.relative_to(REPO))
    return str(value)


# --- What the commands may name -----------------------------------------

def module_file(module):
    parts = module.split(".")
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.exists():
            return candidate
    return None


def sources_of(path, seen=None):
    """`path` and the ft_keras modules it imports, recursively (the flags of
    `python -m ft_keras.train` are defined in ft_keras/cli.py)."""
    seen = set() if seen is None else seen
    if path in seen:
        return seen
    seen.add(path)
    text = path.read_text()
    for package, names in re.findall(r"from (ft_keras[\w.]*) import ([\w, ]+)",
                                     text):
        for name in [n.strip() for n in names.split(",")]:
            for candidate in (module_file(f"{package}.{name}"),
                              module_file(package)):
                if candidate is not None and candidate.suffix == ".py":
                    sources_of(candidate, seen)
    return seen


def defines_flag(files, name):
    text = "\n".join(f.read_text() for f in files)
    return f'"--{name}"' in text or f'"{name}"' in text


@functools.lru_cache(maxsize=None)
def configurables():
    """The gin names of ft_keras, and every dataclass field of its modules
    (the settings gin binds are frozen dataclasses)."""
    names, fields = set(), set()
    for path in (REPO / "ft_keras").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(
            r'gin\.(?:external_)?configurable\([^)]*?"(\w+)"', text, flags=re.S))
        names |= set(re.findall(r'@gin\.configurable\("(\w+)"', text))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                fields |= {item.target.id for item in node.body
                           if isinstance(item, ast.AnnAssign)
                           and isinstance(item.target, ast.Name)}
    return names, fields


def macros():
    text = "\n".join(p.read_text() for p in (REPO / "gin").rglob("*.gin"))
    return set(re.findall(r"%(\w+)", text)) | set(
        re.findall(r"^(\w+)\s*=", text, flags=re.M))


def binding_errors(binding):
    names, fields = configurables()
    for line in binding.splitlines():
        target = line.split("=", 1)[0].strip()
        if not target:
            continue
        if "." not in target:
            if target not in macros():
                return [f"gin macro {target!r} is not used by any gin file"]
            continue
        configurable, field = target.split("/")[-1].rsplit(".", 1)
        if configurable not in names:
            return [f"{configurable!r} is not a gin configurable of ft_keras"]
        if configurable != "network" and field not in fields:
            return [f"{configurable}.{field}: no such field in ft_keras"]
    return []


def file_errors(token):
    value = token.split("=", 1)[-1]
    errors = []
    for path in re.findall(r"(?:^|[\s=,])((?:%s)[\w./*-]+)" %
                           "|".join(PATH_PREFIXES), " " + value):
        if path.endswith((".gin", ".py", ".sh", ".yaml", ".json", ".txt")) \
                and not list(REPO.glob(path)):
            errors.append(f"{path} does not exist")
    return errors


def flag_errors(files, arguments):
    errors = []
    for token in arguments:
        if token.startswith("--") and len(token) > 2:
            name = token[2:].split("=", 1)[0]
            if name not in ABSL_FLAGS and not defines_flag(files, name):
                errors.append(f"--{name} is not a flag of "
                              f"{', '.join(sorted(f.name for f in files))}")
    for flag, value in zip(arguments, arguments[1:] + [""]):
        if flag.startswith("--gin_bindings"):
            errors += binding_errors(flag.split("=", 1)[1] if "=" in flag
                                     else value)
    return errors


def command_errors(words):
    """What is wrong with one simple command (a list of words)."""
    while words and (re.match(r"^[A-Z_]+=", words[0])  # VAR=value command
                     or words[0] in WRAPPERS):
        words = words[1:]
        while words and re.match(r"^(-\S*|\d+[smh]?)$", words[0]):  # time -v
            words = words[1:]
    if not words:
        return []
    program, arguments = words[0], words[1:]
    errors = [e for word in words for e in file_errors(word)]
    if program in ("python", "python3") and arguments[:1] == ["-m"]:
        module = arguments[1]
        if module in ("venv", "pytest", "pip"):
            return errors
        path = module_file(module)
        if path is None:
            return errors + [f"no module {module}"]
        return errors + flag_errors(sources_of(path), arguments[2:])
    if program in ("python", "python3") and arguments[:1] == ["-c"]:
        compile(arguments[1], "<docs -c>", "exec")
        return errors
    if program in ("python", "python3", "bash"):
        script, rest = arguments[0], arguments[1:]
    elif program.startswith(PATH_PREFIXES):
        script, rest = program, arguments
    else:
        script = None
    if script is not None:
        if not (REPO / script).exists():
            return [f"{script} does not exist"]
        if script.endswith("record.py") and "--" in rest:
            return errors + command_errors(rest[rest.index("--") + 1:])
        if script.endswith(".py"):
            files = {REPO / script} | set(
                (REPO / "benchmarks").glob("_*.py"))
            return errors + flag_errors(files, rest)
        return errors
    if program == "pip":
        extras = re.findall(r"\[([\w,]+)\]", " ".join(arguments))
        setup = (REPO / "setup.py").read_text()
        return errors + [f"no extra {e!r} in setup.py"
                         for group in extras for e in group.split(",")
                         if f'"{e}":' not in setup]
    if program in SHELL_TOOLS:
        return errors
    return errors + [f"unknown program {program!r}: the docs test does not "
                     "know how to check it"]


def shell_errors(code):
    code = re.sub(r"\\\n", " ", code)
    code = re.sub(r"\[(--[^\]]*)\]", r"\1", code)  # [--optional flags]
    errors = []
    for line in code.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
        command = []
        for word in words + [";"]:
            if word in SEPARATORS:
                errors += command_errors(command)
                command = []
            else:
                command.append(word)
    return errors


# --- The tests ----------------------------------------------------------

CODE = list(code_blocks())


@pytest.mark.parametrize("path, language, mark, code, line", CODE,
                         ids=[f"{block_id(c[0])}:{c[4]}" for c in CODE])
def test_every_block_is_run_or_says_why_not(path, language, mark, code, line):
    assert mark is not None, (
        f"{block_id(path)}:{line}: a {language} block without "
        "<!-- run: ... --> or <!-- not run: REASON -->")
    kind, what = mark.groups()
    if kind == "run":
        if what == ".ci/run":
            (pytest_line,) = [l for l in (REPO / ".ci" / "run").read_text()
                              .splitlines() if "pytest" in l]
            assert pytest_line in code
        else:
            runner = REPO / what
            assert runner.exists() and f"<!-- run: {what} -->" in \
                runner.read_text(), f"{what} does not run marked blocks"
    else:
        assert len(what.split()) >= 3, f"give a reason, not {what!r}"
    if language == "python":
        compile(code, f"{block_id(path)}:{line}", "exec")
    else:
        assert shell_errors(code) == []


def test_the_docs_have_blocks_of_every_kind():
    kinds = {(language, mark.group(1) if mark else None)
             for _, language, mark, _, _ in CODE}
    assert {("python", "run"), ("bash", "run"), ("bash", "not run")} <= kinds


@pytest.mark.parametrize("command, error", [
    ("python -m ft_keras.train --gin_file=gin/quickstart.gin --workdr=x",
     "--workdr is not a flag"),
    ("python -m ft_keras.train --gin_file=gin/quickstart2.gin", "does not exist"),
    ("python -m ft_keras.trian --workdir=x", "no module ft_keras.trian"),
    ('python -m ft_keras.train --gin_bindings="student/trainin.epochs = 3"',
     "'trainin' is not a gin configurable"),
    ('python -m ft_keras.train --gin_bindings="training.epoch = 3"',
     "training.epoch: no such field"),
    ("python benchmarks/throughput.py --pairz resnet56:resnet20",
     "--pairz is not a flag"),
    ("launch/slurm_train2.sh gpu job gin/distill.gin /runs", "does not exist"),
    ('pip install -e ".[tests]"', "no extra 'tests'"),
    ("curl https://example.com", "unknown program 'curl'"),
])
def test_the_static_check_finds_what_would_fail(command, error):
    errors = shell_errors(command + "\n")
    assert len(errors) == 1 and error in errors[0], errors


def test_the_static_check_passes_good_commands():
    assert shell_errors(
        "timeout 60 python -m ft_keras.taps --network resnet20 | head -3\n"
        "python -m ft_keras.train --gin_file=gin/quickstart.gin \\\n"
        '    --gin_bindings="student/training.epochs = 3" [--overwrite]\n'
        "python -m ft_keras.taps --teacher wrn16_2 --student_args alpha=0.5\n"
        "NODES=2 launch/slurm_train.sh gpu job gin/distill.gin /runs\n") == []


# --- Links --------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path):
    """GitHub's anchors of the headings of a markdown file."""
    slugs = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


def link_errors(path):
    errors = []
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            errors.append(f"{block_id(path)}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            errors.append(f"{block_id(path)}: {target}: no such heading")
    return errors


@pytest.mark.parametrize("path", documents(), ids=block_id)
def test_every_link_of_the_docs_leads_somewhere(path):
    assert link_errors(path) == []


def test_a_broken_link_or_anchor_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n[ok](#a-title) [gone](#results) "
                    "[missing](docs/none.md) [web](https://example.com)\n")
    errors = link_errors(page)
    assert len(errors) == 2
    assert "#results: no such heading" in errors[0]
    assert "docs/none.md: no such file" in errors[1]
