"""Every shell command in README.md and docs/*.md works as written.

Each ```bash block is cut into commands (continuation lines joined, comments dropped, `&&` chains split). Commands
that are cheap run for real: those on the shipped model (bllama/assets) and every `--help`. The others are checked
without running: `bllama ...` parses with the real command line parser (every subcommand and flag exists, every
value has the right type), files inside the repository that a command names exist (`bash tests/run_all.sh`,
`python bench/x.py`), pip extras and CMake `-D` options exist.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bllama" / "assets" / "MODEL_CARD.md"]
# Top-level folders of the repository: an argument starting with one of them names a file that must exist.
REPO_DIRS = ("bench/", "tests/", "bllama/", "docs/", "csrc/", "python/", "cmake/", ".ci/")


def shell_blocks(path: Path):
    """(line number, text) of each ```bash / ```sh / ```shell block."""
    text = path.read_text(encoding="utf-8")
    for m in re.finditer(r"^```(?:bash|sh|shell)\n(.*?)^```", text, re.S | re.M):
        yield text[:m.start()].count("\n") + 2, m.group(1)


def commands(block: str):
    """The block's commands as argv lists: continuations joined, comments dropped, `&&` / `;` / `|` split."""
    for line in block.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise AssertionError(f"unparseable shell line {line!r}: {e}") from None
        cmd = []
        for w in words + ["&&"]:
            if w in ("&&", ";", "|", "||"):
                if cmd:
                    yield cmd
                cmd = []
            else:
                cmd.append(w)


def inline_commands(path: Path):
    """(line number, argv) of the `code spans` in prose that are whole commands: `python bench/x.py --flag`,
    `bash tests/x.sh`, `bllama SUB ARG...` (a bare `bllama train` names the subcommand, not a command line, and
    spans with `|` or `...` are patterns)."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)
    for m in re.finditer(r"(?<!`)`((?:bllama|python|bash) [^`]+)`(?!`)", text):
        span = " ".join(m.group(1).split())
        if "|" in span or "..." in span or span.startswith("python -c"):
            continue
        argv = shlex.split(span)
        if argv[0] == "bllama" and len(argv) < 3:
            continue
        yield text[:m.start()].count("\n") + 1, ["#inline", *argv]


def all_commands():
    for path in DOCS:
        for lineno, block in shell_blocks(path):
            for argv in commands(block):
                yield pytest.param(argv, id=f"{path.name}:{lineno}:{' '.join(argv)[:60]}")
        for lineno, argv in inline_commands(path):
            yield pytest.param(argv, id=f"{path.name}:{lineno}:`{' '.join(argv)[:60]}`")


def _subparser(argv):
    """The parser of `bllama SUB [SUBSUB]` in argv, and the words after it."""
    from bllama.cli import build_parser

    parser, rest = build_parser(), argv[1:]
    while rest:
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs or rest[0] not in subs[0].choices:
            break
        parser, rest = subs[0].choices[rest[0]], rest[1:]
    return parser, rest


def check_span(argv):
    """An inline `bllama SUB ...` span names a real subcommand and only flags it has (placeholders such as FILE
    and missing required arguments are allowed in prose)."""
    parser, rest = _subparser(argv)
    assert parser.prog != "bllama" or not rest or rest[0].startswith("-"), f"`{' '.join(argv)}`: no such subcommand"
    known = {o for a in parser._actions for o in a.option_strings}
    for w in rest:
        if w.startswith("-") and w.split("=")[0] not in known:
            pytest.fail(f"`{' '.join(argv)}`: {parser.prog} has no flag {w}")


def _strip_env(argv):
    """Drop leading VAR=value assignments (`CI=true bash .ci/run`)."""
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        argv = argv[1:]
    return argv


def _repo_paths(argv):
    return [a for a in argv if a.startswith(REPO_DIRS) and "*" not in a]


def _runs_cheaply(argv) -> bool:
    """--help, and the shipped model's generate / eval where every file they name is here: seconds each."""
    files_here = all((ROOT / a).exists() for a in argv[2:] if "/" in a and not a.startswith("-"))
    return argv[0] == "bllama" and ("--help" in argv or "-h" in argv
                                    or any(a.startswith("bllama/assets/") for a in argv)
                                    and argv[1] in ("generate", "eval") and files_here)


def test_the_docs_have_commands():
    found = list(all_commands())
    assert len(found) > 30
    assert any(p.values[0][:2] == ["bllama", "demo"] for p in found)  # the README's first command


@pytest.mark.parametrize("argv", list(all_commands()))
def test_command_works_as_written(argv):
    from bllama.cli import build_parser

    argv = _strip_env(list(argv))
    if not argv:
        return
    inline = argv[0] == "#inline"
    if inline:
        argv = argv[1:]
        if argv[0] == "bllama":
            return check_span(argv)
    for p in _repo_paths(argv):
        assert (ROOT / p.rstrip("/")).exists(), f"{' '.join(argv)}: {p} is not in the repository"
    tool = argv[0]
    if tool == "bllama":
        if _runs_cheaply(argv):
            r = subprocess.run([sys.executable, "-m", "bllama.cli", *argv[1:]], cwd=ROOT, capture_output=True,
                               text=True, timeout=600)
            assert r.returncode == 0, f"{' '.join(argv)} failed:\n{r.stderr[-3000:]}"
            return
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as e:
            pytest.fail(f"`{' '.join(argv)}` does not parse (exit {e.code}): a subcommand or flag that bllama lacks")
    elif tool in ("bash", "python", "python3", "sh") and len(argv) > 1 and not argv[1].startswith("-"):
        target = argv[1]
        assert (ROOT / target).is_file(), f"{' '.join(argv)}: {target} is not in the repository"
        flags = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
        if target.endswith(".py") and flags:  # the script's own --help names every flag it takes
            r = subprocess.run([sys.executable, target, "--help"], cwd=ROOT, capture_output=True, text=True,
                               timeout=300)
            assert r.returncode == 0, f"{target} --help failed:\n{r.stderr[-2000:]}"
            for f in flags:
                assert f in r.stdout, f"`{' '.join(argv)}`: {target} has no flag {f}"
    elif tool == "python" and argv[1:3] == ["-m", "bllama.cli"]:
        build_parser().parse_args(argv[3:])
    elif tool == "pip":
        for spec in argv[2:]:
            extras = re.fullmatch(r"\.\[([\w,-]+)\]", spec)
            if extras:
                setup = (ROOT / "setup.py").read_text(encoding="utf-8")
                for name in extras.group(1).split(","):
                    assert f'"{name}":' in setup, f"{' '.join(argv)}: setup.py has no extra {name!r}"
    elif tool == "cmake":
        cmake_lists = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
        for a in argv:
            m = re.match(r"-D(BLLAMA_\w+)=", a)
            if m:
                assert m.group(1) in cmake_lists, f"{' '.join(argv)}: CMakeLists.txt has no option {m.group(1)}"


def test_every_subcommand_help_runs():
    """`bllama --help` and `bllama SUB --help` for every subcommand, as a user types them."""
    from bllama.cli import build_parser

    subs = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for argv in [["--help"]] + [[s, "--help"] for s in subs]:
        r = subprocess.run([sys.executable, "-m", "bllama.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and "usage:" in r.stdout, (argv, r.stderr[-2000:])
