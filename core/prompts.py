"""Prompt and context loading, sandboxed rendering and content hashing.

Templates are user files, so they render in Jinja2's immutable sandbox with StrictUndefined:
a template cannot reach Python internals, and a missing variable is an error rather than an
empty string. Record values are passed in as data; Jinja never renders a value as a template,
so `{{ 7*7 }}` inside a review reaches the model literally.

Record fields win over dict methods: `{{ input.items }}` is the record's `items` column, not
`dict.items` (and `input.pop` is a column, not a sandbox violation).

Every render has a budget (RENDER_TIMEOUT_S, RENDER_MAX_CHARS): a template that runs longer,
renders more, recurses without end or asks for a giant value (`'x' * 3000000000`,
`10 ** 10 ** 10`) stops with one line, and the run ends with exit 2 (the prompt's own fault).
The checks sit where a template can spend: each call, each step of `range`, each output chunk,
and `*`, `**` and `%` before they compute. `render_async` renders in a worker thread that a
cancelled run stops at the next check, so the event loop (and SIGTERM) never waits on a render.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import StrictUndefined
from jinja2.utils import _PassArg
from jinja2.exceptions import SecurityError as JinjaSecurityError
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment

from core.errors import LoomError, PipelineError, RenderLimitError, SecurityError, TemplateError
from core.spec import LoadedSpec


def content_hash(text: str) -> str:
    """The version id of a prompt or context: sha256 of its UTF-8 text, 16 hex digits shown."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# The render budget of one template render (documented in the README).
RENDER_TIMEOUT_S = 10.0
RENDER_MAX_CHARS = 16 << 20  # 16 Mi characters rendered
_CHECK_EVERY = 1024  # range() steps between two clock checks


class RenderStopped(LoomError):
    """A render ended by the run's stop (ctrl+c, SIGTERM, the workbench, a budget)."""


class _Budget:
    """The running render's limits (one per thread: renders run in worker threads)."""

    def __init__(self, timeout_s: float, max_chars: int) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self.cancelled = threading.Event()
        self.stopped = False  # cancelled by the run's stop, not by the template's own fault

    def check(self) -> None:
        if self.cancelled.is_set():
            raise RenderLimitError("the render was cancelled")
        if time.monotonic() > self.deadline:
            raise RenderLimitError(f"the template ran past its render budget of "
                                   f"{self.timeout_s:g} s")

    def size(self, chars: int, what: str = "the template") -> None:
        if chars > self.max_chars:
            raise RenderLimitError(f"{what} would render more than {self.max_chars:,} characters "
                                   f"(the render budget)")


_current = threading.local()


class _RenderPool:
    """Daemon worker threads for renders: started as needed (one more whenever every worker is
    busy), reused after. Daemons, so that a render stuck where no check reaches it never keeps
    the process from exiting."""

    def __init__(self) -> None:
        self._work: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, work: Any) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                threading.Thread(target=self._serve, name="loom-render", daemon=True).start()
        self._work.put(work)

    def _serve(self) -> None:
        while True:
            work = self._work.get()
            try:
                work()
            except BaseException:  # noqa: BLE001 - `work` reports its own outcome
                pass
            with self._lock:
                self._idle += 1


_POOL = _RenderPool()


def _budget() -> _Budget | None:
    return getattr(_current, "budget", None)


def _checked_range(*args: int) -> Iterator[int]:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise OverflowError(f"range too big, maximum size for range is {MAX_RANGE}")
    budget = _budget()
    if budget is None:
        yield from numbers
        return
    for index, number in enumerate(numbers):
        if not index % _CHECK_EVERY:
            budget.check()
        yield number


# Calls and filters whose integer arguments are sizes of what they make ('x'.center(3000000000)).
_SIZED = frozenset(["center", "ljust", "rjust", "zfill", "expandtabs", "generate_lorem_ipsum"])
_SIZED_FILTERS = frozenset(["center", "indent", "wordwrap", "truncate", "batch", "slice",
                            "format"])


def _budgeted(name: str, func: Any) -> Any:
    """A filter that checks the budget first. Being `pass_context`, it is also never
    constant-folded while the template compiles (Jinja would compute `'x'|center(3000000000)`
    then, outside any budget)."""
    passed = _PassArg.from_obj(func)
    sized = name in _SIZED_FILTERS

    @jinja2.pass_context
    def checked(context: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        if budget is not None:
            budget.check()
            if sized:
                for value in (*args, *kwargs.values()):
                    if type(value) is int and value > budget.max_chars:
                        budget.size(value, f"{name}({value})")
        if passed is _PassArg.context:
            return func(context, *args, **kwargs)
        if passed is _PassArg.eval_context:
            return func(context.eval_ctx, *args, **kwargs)
        if passed is _PassArg.environment:
            return func(context.environment, *args, **kwargs)
        return func(*args, **kwargs)

    return checked
_FORMAT_WIDTH = re.compile(r"%[-+ #0]*(\d+)")


class LoomSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, plus: record fields before dict methods, and the budget."""

    intercepted_binops = frozenset(["*", "**", "%"])

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `input.items` is the record's `items` field when it has one (a column of that name),
        # never `dict.items`; the sandbox decides only about what is not a field.
        if isinstance(obj, dict):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _budget()
        if budget is not None:
            budget.check()
            name = getattr(__obj, "__name__", None)
            if name in _SIZED:
                # lipsum(n) makes n paragraphs of up to 100 words: count them as 1,000 chars
                scale = 1000 if name == "generate_lorem_ipsum" else 1
                for value in (*args, *kwargs.values()):
                    if type(value) is int and value * scale > budget.max_chars:
                        budget.size(value * scale, f"{name}({value})")
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget() or _Budget(RENDER_TIMEOUT_S, RENDER_MAX_CHARS)
        budget.check()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and type(times) is int:
                    budget.size(len(seq) * times, f"{_short(seq)} * {times}")
        elif operator == "**":
            if type(left) is int and type(right) is int and abs(left) > 1 and right > 0:
                if right * math.log2(abs(left)) > 65_536:
                    raise RenderLimitError(f"{left} ** {right} is too big a number to render")
        elif operator == "%" and isinstance(left, str):
            for width in _FORMAT_WIDTH.findall(left):
                budget.size(int(width), f"the format {_short(left)}")
        return super().call_binop(context, operator, left, right)


def _data_size(value: Any) -> int:
    """About how many characters of data a render was given (records, context, params)."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            total += 8
    return total


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."


def make_environment() -> ImmutableSandboxedEnvironment:
    env = LoomSandbox(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tojson"] = _tojson
    for name, func in list(env.filters.items()):
        env.filters[name] = _budgeted(name, func)
    env.globals["range"] = _checked_range
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
    # The budgets of the renders under way, so that a stop reaches them at once (a render's
    # own cancel is set only when its awaiting task ends, which a graceful stop waits for).
    _active: set[_Budget] = field(default_factory=set, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        """The run is stopping: every render under way stops at its next check, and no new
        one starts; each raises RenderStopped (its record is skipped, not the prompt's
        fault). Called from the event loop's thread."""
        self._stopped = True
        for budget in list(self._active):
            budget.stopped = True
            budget.cancelled.set()

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

    async def render_async(self, data: dict[str, Any], *,
                           timeout_s: float = RENDER_TIMEOUT_S,
                           max_chars: int = RENDER_MAX_CHARS) -> list[dict[str, str]]:
        """`render` in a worker thread (a daemon: a render never holds the process up), within
        the budget; a cancel stops it at its next check."""
        self._template("prompt", self.prompt_text)
        if self.system_text is not None:
            self._template("system", self.system_text)
        if self._stopped:
            raise RenderStopped("not processed: the run was stopping before its prompt rendered")
        budget = _Budget(timeout_s, max_chars)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[dict[str, str]]] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def work() -> None:
            _current.budget = budget
            try:
                result, error = self.render(data), None
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                result, error = None, exc
            finally:
                _current.budget = None
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:
                pass  # the loop is gone: nobody waits for this render any more

        self._active.add(budget)
        _POOL.submit(work)
        try:
            return await future
        except RenderLimitError:
            if budget.stopped:
                raise RenderStopped("not processed: the run stopped while its prompt "
                                    "rendered") from None
            raise
        finally:
            self._active.discard(budget)
            budget.cancelled.set()  # done, failed or cancelled: a render left running stops

    def _render_one(self, which: str, text: str, variables: dict[str, Any]) -> str:
        template = self._template(which, text)
        path = self.prompt_path if which == "prompt" else self.system_path
        try:
            return budgeted_render(template, variables, file=str(path))
        except TemplateError:
            raise
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


def budgeted_render(template: jinja2.Template, variables: dict[str, Any], *,
                    file: str | None = None, prefix: list[str] | None = None,
                    timeout_s: float | None = None) -> str:
    """`template.render(variables)` within the render budget (the running render_async's, else
    the defaults). Raises RenderLimitError when the template is past it (recursion, time, a
    giant value, output the data cannot explain) and TemplateError when the record's own data
    makes the prompt too big; the template's other errors pass through. `prefix`, when given,
    receives the text as it is made, so that a caller who stops the render (core.prompt_cache)
    keeps what came before; `timeout_s` a shorter time budget for such a probe."""
    owned = _budget() is None
    if owned:  # a render outside render_async (the workbench's preview, a judge) has one too
        _current.budget = _Budget(timeout_s or RENDER_TIMEOUT_S, RENDER_MAX_CHARS)
    budget = _budget()
    assert budget is not None
    try:
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(variables):
            if prefix is not None:
                prefix.append(chunk)
            size += len(chunk)
            if size > budget.max_chars:
                message = (f"the prompt would be more than {budget.max_chars:,} characters "
                           f"(the render budget)")
                if _data_size(variables) * 2 < budget.max_chars:
                    # Not the record's size: the template itself makes that much.
                    raise RenderLimitError(message, file=file)
                raise TemplateError(message, file=file)  # this record's: quarantined
            chunks.append(chunk)
            budget.check()
        return "".join(chunks)
    except RenderLimitError as exc:
        raise RenderLimitError(f"{_template_line(exc)}{exc.detail}", file=file) from None
    except RecursionError:
        raise RenderLimitError("the template recursed too deep (a macro that calls itself "
                               "without end?)", file=file) from None
    except MemoryError:
        raise RenderLimitError("the template ran out of memory (the render budget is "
                               f"{budget.max_chars:,} characters)", file=file) from None
    finally:
        if owned:
            _current.budget = None


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
