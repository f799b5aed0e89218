"""The commands in README.md and docs/*.md name modules and flags that exist.

Every `python -m infoprompt_jax...` command of the documentation, in a code block or inline, must
name an importable module, and each `--flag` it passes must be one that module defines (an absl
flag, or a field of the config file given with `--config=` for `--config.a.b`). Flags are read
from the modules' source, with the package modules they import, rather than by importing them:
absl refuses one flag name defined by two modules in one process (`--workdir` is in several), and
a subprocess per module would spend seconds importing jax for each. Paths the documentation
names (docs pages, configs, scripts, modules, figures) must exist too.
"""

import ast
import functools
import importlib.util
import pathlib
import re
import subprocess
import sys

import commands
import pytest

REPO = commands.REPO
DOC_FILES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
PACKAGE = "infoprompt_jax"

# Flags absl itself defines for every program (logging, --help and friends).
ABSL_FLAGS = {
    "alsologtostderr",
    "flagfile",
    "help",
    "helpfull",
    "helpshort",
    "log_dir",
    "logtostderr",
    "only_check_args",
    "stderrthreshold",
    "undefok",
    "v",
    "verbosity",
}
_DEFINE_CALL = re.compile(r"^DEFINE_")


def documented_commands(text: str) -> list[str]:
    """`python -m infoprompt_jax...` commands in `text`: fenced bash lines and inline code."""
    commands = []
    fenced = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    for block in fenced:
        joined = re.sub(r"\\\n\s*", " ", block)  # Continuation lines.
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith(f"python -m {PACKAGE}"):
                commands.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`(python -m " + PACKAGE + r"[^`]*)`", prose):
        commands.append(" ".join(span.split()))
    return commands


def _all_commands() -> list[tuple[str, str]]:
    return [
        (path.relative_to(REPO).as_posix(), command)
        for path in DOC_FILES
        for command in documented_commands(path.read_text(encoding="utf-8"))
    ]


def _module_path(module: str) -> pathlib.Path | None:
    """The source file of a package module, or None when there is none."""
    relative = pathlib.Path(*module.split("."))
    for candidate in (REPO / relative.with_suffix(".py"), REPO / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_imports(tree: ast.AST) -> set[str]:
    """The infoprompt_jax modules a module imports (`from infoprompt_jax import x`, ...)."""
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names if a.name.startswith(PACKAGE))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
            imported.add(node.module)
            imported.update(f"{node.module}.{a.name}" for a in node.names)
    return imported


def _is_define(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute | ast.Name) and bool(
        _DEFINE_CALL.match(getattr(node, "attr", None) or getattr(node, "id", ""))
    )


def _flag_names(tree: ast.AST) -> set[str]:
    """Names of the flags a module's source defines.

    An absl flag is the first string argument of a `DEFINE_*(...)` call, or of a helper call
    that is handed a `DEFINE_*` function (predict.py's `define(flags.DEFINE_string, "input",
    ...)`); an argparse flag is a `--name` argument of `add_argument`.
    """
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":  # argparse
            options = [a.value for a in node.args if isinstance(a, ast.Constant)]
            names.update(o[2:] for o in options if isinstance(o, str) and o.startswith("--"))
            continue
        if not (_is_define(node.func) or any(_is_define(arg) for arg in node.args)):
            continue
        strings = [a.value for a in node.args if isinstance(a, ast.Constant)]
        strings += [k.value.value for k in node.keywords if k.arg == "name"]
        if strings and isinstance(strings[0], str):
            names.add(strings[0])
    return names


@functools.cache
def defined_flags(module: str) -> frozenset[str]:
    """Flag names that `module` and the package modules it imports define."""
    seen, todo, names = set(), [module], set()
    while todo:
        name = todo.pop()
        path = _module_path(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names.update(_flag_names(tree))
        todo.extend(_package_imports(tree))
    return frozenset(names)


@functools.cache
def config_fields(config_file: str) -> frozenset[str]:
    """Dotted field names of a config file's `get_config()` (e.g. `optim.lr`)."""
    path = REPO / config_file.split(":")[0]
    spec = importlib.util.spec_from_file_location(f"_docs_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def walk(config, prefix=""):
        for key, value in config.items():
            yield prefix + key
            if hasattr(value, "items"):
                yield from walk(value, f"{prefix}{key}.")

    return frozenset(walk(module.get_config()))


def test_the_documentation_has_commands():
    commands = _all_commands()
    files = {path for path, _ in commands}
    assert len(commands) >= 20, commands
    assert {"README.md", "docs/training.md", "docs/export.md", "docs/analysis.md"} <= files


@pytest.mark.parametrize("where,command", _all_commands())
def test_documented_command_names_a_module_and_its_flags(where, command):
    module = command.split()[2]
    assert _module_path(module) is not None, f"{where}: `{command}` names no module {module}"
    flags = set(re.findall(r"(?<![\w-])--([A-Za-z_][\w.-]*)", command))
    known = defined_flags(module) | ABSL_FLAGS
    unknown = sorted(
        flag
        for flag in flags
        if "." not in flag and flag not in known and not (flag[:2] == "no" and flag[2:] in known)
    )
    assert not unknown, f"{where}: `{command}` passes flags {module} does not define: {unknown}"
    dotted = sorted(flag for flag in flags if "." in flag)
    if dotted and "<" not in command:  # `--config=<task config> --config.k=v` is a pattern.
        assert "config" in defined_flags(module), f"{where}: {module} has no --config"
        config_file = re.search(r"--config=(\S+)", command)
        fields = config_fields(config_file.group(1) if config_file else "configs/default.py")
        missing = [f for f in dotted if f.removeprefix("config.") not in fields]
        assert not missing, f"{where}: `{command}` sets config fields that do not exist: {missing}"


def _documented_paths() -> list[tuple[str, str]]:
    pattern = re.compile(
        r"(?<![\w/.$-])((?:docs|configs|launch|scripts|tests|infoprompt_jax)/[\w./-]*\w"
        r"\.(?:md|py|png))"
    )
    return sorted(
        {
            (path.relative_to(REPO).as_posix(), found)
            for path in DOC_FILES
            for found in pattern.findall(path.read_text(encoding="utf-8"))
            if not re.search(r"\b[A-Z]{2,}\b", found)  # A placeholder: configs/grids/NAME.py.
        }
    )


@pytest.mark.parametrize("where,path", _documented_paths())
def test_documented_path_exists(where, path):
    # Inside docs/, a figure is named relative to the page (`![...](cmi.png)` is not matched).
    assert (REPO / path).exists(), f"{where} names {path}, which does not exist"


def test_flags_read_from_source_match_the_program():
    """The source reading above agrees with what a program's --helpfull lists (report.py)."""
    result = subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.report", "--helpfull"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    listed = result.stdout + result.stderr
    # absl lists a program's own flags under its file name (`.../report.py:`).
    section = listed.split("report.py:\n", 1)[-1].split("\n\n", 1)[0]
    own = set(re.findall(r"^  --(?:\[no\])?(\w+)", section, re.M))
    assert own and own == set(defined_flags(f"{PACKAGE}.report")), listed[-2000:]
