"""Prompt and context loading, sandboxed rendering and content hashing.

Templates are user files, so they render in Jinja2's immutable sandbox with StrictUndefined:
a template cannot reach Python internals, and a missing variable is an error rather than an
empty string. Record values are passed in as data; Jinja never renders a value as a template,
so `{{ 7*7 }}` inside a review reaches the model literally.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError as JinjaSecurityError

from core.errors import PipelineError, SecurityError, TemplateError
from core.spec import LoadedSpec


def content_hash(text: str) -> str:
    """The version id of a prompt or context: sha256 of its UTF-8 text, 16 hex digits shown."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tojson"] = _tojson
    return env


def _tojson(value: Any, indent: int | None = None) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


_ENV = make_environment()


def check_template_syntax(path: Path, *, file: str, line: int | None, key: str) -> None:
    """Raise a one-line PipelineError when a template file does not parse."""
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read {path.name}: {exc}", file=file, line=line, key=key) from None
    error = template_syntax_error(source)
    if error is not None:
        lineno, message = error
        raise TemplateError(f"{path.name} line {lineno}: template syntax error: {message}",
                            file=file, line=line, key=key)


def template_syntax_error(source: str) -> tuple[int, str] | None:
    """(line, message) of the first syntax error in a template, or None."""
    try:
        _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return exc.lineno, exc.message or str(exc)
    return None


@dataclass(frozen=True)
class ContextDoc:
    name: str
    path: Path
    text: str
    hash: str


@dataclass
class PromptSet:
    """The templates and context of one pipeline, loaded and hashed."""

    prompt_path: Path
    prompt_text: str
    system_path: Path | None
    system_text: str | None
    contexts: dict[str, ContextDoc]
    params: dict[str, Any] = field(default_factory=dict)
    _compiled: dict[str, jinja2.Template] = field(default_factory=dict, repr=False)

    @property
    def prompt_hash(self) -> str:
        return content_hash(self.prompt_text)

    @property
    def system_hash(self) -> str | None:
        return content_hash(self.system_text) if self.system_text is not None else None

    @property
    def context_hashes(self) -> dict[str, str]:
        return {name: doc.hash for name, doc in self.contexts.items()}

    def with_prompt(self, text: str) -> "PromptSet":
        """The same pipeline with an edited prompt (the workbench's unsaved buffer)."""
        return PromptSet(self.prompt_path, text, self.system_path, self.system_text,
                         self.contexts, self.params)

    def _template(self, which: str, text: str) -> jinja2.Template:
        template = self._compiled.get(which)
        if template is None:
            try:
                template = _ENV.from_string(text)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"line {exc.lineno}: template syntax error: {exc.message}",
                                    file=str(self.prompt_path if which == "prompt" else self.system_path)) from None
            self._compiled[which] = template
        return template

    def render(self, data: dict[str, Any]) -> list[dict[str, str]]:
        """The chat messages for one record. Raises TemplateError (or SecurityError)."""
        variables = {
            "input": data,
            "context": {name: doc.text for name, doc in self.contexts.items()},
            "params": self.params,
        }
        messages = []
        if self.system_text is not None:
            messages.append({"role": "system",
                             "content": self._render_one("system", self.system_text, variables)})
        messages.append({"role": "user",
                         "content": self._render_one("prompt", self.prompt_text, variables)})
        return messages

    def _render_one(self, which: str, text: str, variables: dict[str, Any]) -> str:
        template = self._template(which, text)
        path = self.prompt_path if which == "prompt" else self.system_path
        try:
            return template.render(variables)
        except JinjaSecurityError as exc:
            raise SecurityError(f"the template tried something the sandbox forbids: {exc}",
                                file=str(path)) from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"{_template_line(exc)}{exc.message}", file=str(path)) from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{_template_line(exc)}{exc}", file=str(path)) from None
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
            raise TemplateError(f"{_template_line(exc)}{type(exc).__name__}: {exc}",
                                file=str(path)) from None


def _template_line(exc: BaseException) -> str:
    """'line N: ' for the template line an error happened on. Jinja rewrites tracebacks so
    that a template's frames carry its own file name and line numbers."""
    tb = exc.__traceback__
    lineno = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            lineno = tb.tb_lineno
        tb = tb.tb_next
    return f"line {lineno}: " if lineno else ""


def load_prompts(loaded: LoadedSpec, params: dict[str, Any] | None = None) -> PromptSet:
    """Read the prompt, system prompt and context files a pipeline names."""
    spec = loaded.spec.transform
    prompt_path = loaded.resolve(spec.prompt)
    system_path = loaded.resolve(spec.system) if spec.system else None
    contexts = {}
    for name, relative in spec.context_files().items():
        path = loaded.resolve(relative)
        text = _read(path, f"transform.context.{name}", loaded)
        contexts[name] = ContextDoc(name=name, path=path, text=text, hash=content_hash(text))
    return PromptSet(
        prompt_path=prompt_path,
        prompt_text=_read(prompt_path, "transform.prompt", loaded),
        system_path=system_path,
        system_text=_read(system_path, "transform.system", loaded) if system_path else None,
        contexts=contexts,
        params=dict(loaded.spec.params if params is None else params),
    )


def _read(path: Path, key: str, loaded: LoadedSpec) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read {path}: {exc}", file=str(loaded.path), key=key) from None
