"""SQL `query:` templates whose values are bound, never pasted.

A pipeline's query is a Jinja2 template (`WHERE created_at > {{ params.since }}`). Rendering it
the usual way would paste a parameter's text into SQL, which is SQL injection. Here every
`{{ expression }}` renders to a placeholder and its value goes to the parameter list, so the
database driver binds it: `'; DROP TABLE x; --` stays a string. Statements (`{% if %}`,
`{% for %}`) still shape the query, so optional filters and `IN ({{ a }}, {{ b }})` lists work.

Identifiers (table and column names) cannot be bound; they belong in the template text itself.
"""

from __future__ import annotations

import contextvars
import re
from typing import Any, Literal

import jinja2
from jinja2 import StrictUndefined, pass_context
from jinja2.exceptions import SecurityError as JinjaSecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from core.errors import SecurityError, TemplateError

PlaceholderStyle = Literal["qmark", "numeric_dollar"]

# The values bound by the render in progress. A context variable rather than state on the
# environment, so one shared environment serves concurrent renders in threads and tasks.
_bound: contextvars.ContextVar[list[Any]] = contextvars.ContextVar("loom_sql_bound")

# What `{{ ... }}` renders to first: NUL never occurs in a template's own text, so the final
# pass can tell a bound value from user text and see what surrounds it.
_SENTINEL = re.compile("\x00(\\d+)\x00")
_QUOTED_SENTINEL = re.compile("['\"]\x00\\d+\x00|\x00\\d+\x00['\"]")


@pass_context  # passing the context stops Jinja folding constants at compile time, which
def _bind(context: Context, value: Any) -> str:  # would record them out of order
    if isinstance(value, jinja2.Undefined):
        # A missing variable (StrictUndefined) raises here, naming it; the plain Undefined of
        # an inline `if` without `else` renders as nothing, as it would in any template.
        return str(value)
    values = _bound.get()
    values.append(value)
    return f"\x00{len(values)}\x00"


_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_bind)


def render_sql(template: str, params: dict[str, Any], style: PlaceholderStyle = "qmark", *,
               file: str | None = None, key: str = "extract.query") -> tuple[str, list[Any]]:
    """Render `template` with `params` (as `params.*`) into (sql, bound values).

    `style` picks the driver's placeholders: `?` for sqlite3, `$1, $2, ...` for asyncpg.
    Raises TemplateError (one line naming `file` and `key`) for a template that does not parse,
    names a parameter that is not defined, puts a placeholder inside quotes, or reaches for
    something the sandbox forbids.
    """
    if "\x00" in template:
        raise TemplateError("the query contains a NUL character", file=file, key=key)
    try:
        tree = _ENV.parse(template)
        compiled = _ENV.from_string(tree)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"line {exc.lineno}: template syntax error: {exc.message}",
                            file=file, key=key) from None
    _refuse_text_blocks(tree, file=file, key=key)

    values: list[Any] = []
    token = _bound.set(values)
    try:
        text = compiled.render(params=params)
    except JinjaSecurityError as exc:
        raise SecurityError(f"not allowed in a query template: {exc}", file=file, key=key) from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{exc.message} (defined params: {_names(params)})",
                            file=file, key=key) from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"cannot render the query: {exc}", file=file, key=key) from None
    finally:
        _bound.reset(token)

    if _QUOTED_SENTINEL.search(text):
        raise TemplateError("write {{ ... }} without quotes around it: values are bound as "
                            "parameters, not pasted into the SQL text", file=file, key=key)

    if style == "qmark":
        sql = _SENTINEL.sub("?", text)
    elif style == "numeric_dollar":
        sql = _SENTINEL.sub(lambda match: f"${match.group(1)}", text)
    else:  # pragma: no cover - guarded by the Literal type
        raise ValueError(f"unknown placeholder style {style!r}")
    return sql, values


# Blocks whose output is text made inside the template and used as a value or pasted, not a
# `{{ expression }}` the driver binds: `{% filter replace('Q', params.x) %}` would paste a
# parameter into the SQL. A query template shapes SQL with `{% if %}`/`{% for %}` only.
_TEXT_BLOCKS = {jinja2.nodes.FilterBlock: "{% filter %}", jinja2.nodes.Macro: "{% macro %}",
                jinja2.nodes.CallBlock: "{% call %}", jinja2.nodes.AssignBlock: "{% set %}…{% endset %}"}


def check_query_template(template: str, *, file: str | None = None,
                         key: str = "extract.query") -> None:
    """What can be checked without params: the syntax, and no block that would paste text."""
    try:
        tree = _ENV.parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"line {exc.lineno}: template syntax error: {exc.message}",
                            file=file, key=key) from None
    _refuse_text_blocks(tree, file=file, key=key)


def _refuse_text_blocks(tree: jinja2.nodes.Template, *, file: str | None, key: str) -> None:
    for kind, shown in _TEXT_BLOCKS.items():
        node = tree.find(kind)
        if node is not None:
            raise TemplateError(f"line {node.lineno}: {shown} blocks are not allowed in a query "
                                f"template (their text would be pasted into the SQL, not bound); "
                                f"use {{{{ params.name }}}} and {{% if %}}", file=file, key=key)


def _names(params: dict[str, Any]) -> str:
    return ", ".join(sorted(map(str, params))) or "none"
