"""A Jinja2 sandbox whose renders are bounded in time and size, for chat templates read from model files.

Jinja's own sandbox stops attribute walks to Python internals but not a template that runs for hours or builds a
gigabyte string ({{ 'a' * 10**9 }}, nested range(100000) loops, a string doubled in a chain of sets). Every way a
template makes a string much larger than its inputs is checked before the string is built (repetition, powers,
padding widths, joins, replacements); additive growth (concatenation) is checked on each result; the render runs
under a deadline checked on every line of the compiled template (sys.settrace, only while rendering, only in this
thread); and the output is cut off at MAX_CHARS. A template that breaks a bound raises TemplateLimitError.
"""
from __future__ import annotations

import re
import sys
import time
from typing import Any

from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_CHARS = 1 << 22  # 4 Mi characters: more than any context window holds
MAX_SECONDS = 2.0  # a real chat template renders in milliseconds
_WIDE_FORMAT = re.compile(r"\d{6,}")  # a field width of 100000 or more: '%999999999s', '{:999999999}'


class TemplateLimitError(ValueError):
    """The chat template exceeded a bound (time, output or string size)."""


def _refuse(what: str):
    raise TemplateLimitError(f"the chat template {what}; model files' templates are limited to {MAX_CHARS:,} "
                             f"characters and {MAX_SECONDS:g} s per render")


def _size(x: Any) -> int:
    return len(x) if isinstance(x, (str, bytes, list, tuple)) else 0


def _check_result(x: Any) -> Any:
    if _size(x) > MAX_CHARS:
        _refuse(f"built a value of {_size(x):,} items")
    return x


def _check_args(name: str, args, kwargs) -> None:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_CHARS:
            _refuse(f"passed {a} to {name}")
        if isinstance(a, str) and name in ("format", "%") and _WIDE_FORMAT.search(a):
            _refuse(f"used a format width too large in {name}")


def _guard_filter(name: str, f):
    def guarded(*args, **kwargs):
        _check_args(name, args, kwargs)
        if name in ("join", "replace"):
            _check_growth(name, args, kwargs)
        return _check_result(f(*args, **kwargs))

    guarded.__dict__.update(getattr(f, "__dict__", {}))  # keeps pass_context / pass_environment markers
    return guarded


def _check_growth(name: str, args, kwargs) -> None:
    """The join and replace filters multiply sizes: len(sep) * items, occurrences * len(new). Their arguments
    follow the eval context: join(value, d=''), replace(s, old, new, count=None)."""
    args = list(args[1:])
    if name == "join" and args:
        seq, sep = args[0], args[1] if len(args) > 1 else kwargs.get("d", "")
        if hasattr(seq, "__len__") and isinstance(sep, str) and len(sep) * len(seq) > MAX_CHARS:
            _refuse("joined too much")
    if name == "replace" and len(args) >= 3:
        s, old, new = args[:3]
        if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
            n = s.count(old) if old else len(s) + 1
            if len(s) + n * len(new) > MAX_CHARS:
                _refuse("replaced into too long a string")


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` through environment.bounded_concat, which checks each result's size."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**", "%", "+", "//"])
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **options):
        super().__init__(**options)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}

    def bounded_concat(self, parts) -> str:
        parts = [str(p) for p in parts]
        if sum(map(len, parts)) > MAX_CHARS:
            _refuse("concatenated too long a string")
        return "".join(parts)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if _size(seq) and isinstance(n, int) and _size(seq) * n > MAX_CHARS:
                    _refuse(f"repeated a value {n} times")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and \
                    right * max(1, abs(left).bit_length()) > 1 << 16:
                _refuse(f"raised {left} to the power {right}")
        elif operator == "%" and isinstance(left, str):
            _check_args("%", [left], {})
        elif operator == "+" and _size(left) + _size(right) > MAX_CHARS:
            _refuse("concatenated too long a value")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's own signature
        _check_args(getattr(__obj, "__name__", "a function"), args, kwargs)
        name = getattr(__obj, "__name__", "")
        if isinstance(getattr(__obj, "__self__", None), str) and name in ("join", "replace"):
            s = __obj.__self__
            if name == "join" and args and hasattr(args[0], "__len__"):
                if len(s) * len(args[0]) > MAX_CHARS:
                    _refuse("joined too much")
            if name == "replace" and len(args) >= 2:
                _check_growth("replace", [None, s, args[0], args[1]], {})
        return _check_result(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any):
        if isinstance(getattr(value, "__self__", None), str) and getattr(value, "__name__", "") in \
                ("format", "format_map") and _WIDE_FORMAT.search(value.__self__):
            return lambda *a, **k: _refuse("used a format width too large")
        return super().wrap_str_format(value)

    def render_bounded(self, template: str, **variables) -> str:
        """template rendered with `variables`, within MAX_CHARS of output and MAX_SECONDS."""
        if len(template) > MAX_CHARS:
            _refuse(f"is {len(template):,} characters long")
        deadline = time.monotonic() + MAX_SECONDS

        def on_line(frame, event, arg):
            if time.monotonic() > deadline:
                _refuse(f"ran longer than {MAX_SECONDS:g} s")
            return on_line

        def on_call(frame, event, arg):
            if time.monotonic() > deadline:
                _refuse(f"ran longer than {MAX_SECONDS:g} s")
            return on_line if frame.f_code.co_filename == "<template>" else None

        compiled = self.from_string(template)
        out, n = [], 0
        previous = sys.gettrace()
        sys.settrace(on_call)
        try:
            for chunk in compiled.generate(**variables):
                n += len(chunk)
                if n > MAX_CHARS:
                    _refuse(f"wrote more than {MAX_CHARS:,} characters")
                out.append(chunk)
        finally:
            sys.settrace(previous)
        return "".join(out)
