"""`loom validate`'s data check: the prompt rendered against the source's first records.

A pipeline can be valid YAML with every file in place and still send nothing useful: a typo'd
variable (`{{ input.prodcut }}`) is only found when a record renders, and at run time every
record would be quarantined for it. So validate reads a few records from the real source (no
model call, nothing written) and renders the prompt and system prompt for each, in the same
sandbox the engine uses. Each distinct problem is one line naming the template file and line,
the variable, and the first record it failed for with that record's fields:

    prompts/classify.j2:5: input.prodcut is undefined for record R001 (fields: review_id, product, rating, text, expected)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import LoomConfig
from core.connectors.registry import open_source
from core.credentials import SecretResolver
from core.errors import LoomError, SecurityError, TemplateError, UsageError
from core.prompts import load_prompts
from core.spec import LoadedSpec

DEFAULT_SAMPLE = 5
_NO_ATTRIBUTE = re.compile(r"^'[^']*' has no attribute '(?P<name>[^']*)'$")
_UNDEFINED = re.compile(r"^'(?P<name>[^']*)' is undefined$")
_NO_KEY = re.compile(r"^'[^']*' object has no attribute '(?P<name>[^']*)'$")
_FIELDS_SHOWN = 8


@dataclass(frozen=True)
class RenderProblem:
    file: str  # the template, relative to the pipeline's folder when it is under it
    line: int | None
    what: str  # "input.prodcut is undefined", or the template's own words
    record_id: str
    fields: tuple[str, ...]

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        shown = ", ".join(self.fields[:_FIELDS_SHOWN])
        if len(self.fields) > _FIELDS_SHOWN:
            shown += ", …"
        return f"{where}: {self.what} for record {self.record_id} (fields: {shown or 'none'})"


async def render_problems(loaded: LoadedSpec, config: LoomConfig, *,
                          sample: int = DEFAULT_SAMPLE) -> tuple[int, list[RenderProblem]]:
    """Render the pipeline's prompts for its first `sample` records: how many rendered, and
    each distinct problem once, with the first record it happened for. Raises UsageError (one
    line) when the source cannot be read."""
    from core.processing import resolve_secrets

    prompts = load_prompts(loaded)
    texts = {"prompt": prompts.prompt_text, "system": prompts.system_text or ""}
    problems: dict[tuple[str, int | None, str], RenderProblem] = {}
    rendered = 0
    try:
        resolved = resolve_secrets(loaded, SecretResolver(credentials=config.credentials))
        source = open_source(resolved)
        try:
            async for batch in source.batches(limit=sample):
                for record in batch:
                    if record.extract_error is not None:
                        continue  # quarantined at extract: the run says so, not validate
                    try:
                        prompts.render(record.data)
                        rendered += 1
                    except TemplateError as exc:
                        problem = _problem(exc, record.id, record.data, loaded, prompts, texts)
                        problems.setdefault((problem.file, problem.line, problem.what), problem)
        finally:
            await source.aclose()
    except (SecurityError, TemplateError):
        raise
    except LoomError as exc:
        raise UsageError(f"cannot read records to render the prompt with: {exc} (--no-data "
                         f"skips this check)") from None
    return rendered, list(problems.values())


def _problem(exc: TemplateError, record_id: str, data: dict[str, Any], loaded: LoadedSpec,
             prompts: Any, texts: dict[str, str]) -> RenderProblem:
    which = "system" if prompts.system_path is not None and exc.file == str(prompts.system_path) \
        else "prompt"
    path = Path(exc.file) if exc.file else prompts.prompt_path
    detail = exc.detail
    line: int | None = None
    match = re.match(r"^line (\d+): (.*)$", detail)
    if match:
        line, detail = int(match.group(1)), match.group(2)
    return RenderProblem(file=_shown_path(path, loaded), line=line,
                         what=_what(detail, texts[which], line), record_id=record_id,
                         fields=tuple(str(key) for key in data))


def _what(detail: str, text: str, line: int | None) -> str:
    """The template's complaint in a person's words: `input.prodcut is undefined` where the
    template line says which expression it was."""
    for pattern in (_NO_ATTRIBUTE, _NO_KEY):
        found = pattern.match(detail)
        if found:
            name = found.group("name")
            source_line = text.splitlines()[line - 1] if line and line <= len(text.splitlines()) \
                else text
            expression = re.search(
                r"([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*|\[['\"][^'\"]*['\"]\])*)"
                r"(?:\." + re.escape(name) + r"\b|\[['\"]" + re.escape(name) + r"['\"]\])",
                source_line)
            if expression:
                return f"{expression.group(1)}.{name} is undefined"
            return f"{name} is undefined"
    found = _UNDEFINED.match(detail)
    if found:
        return f"{found.group('name')} is undefined"
    return detail


def _shown_path(path: Path, loaded: LoadedSpec) -> str:
    """The template as the pipeline names it: relative to the pipeline's folder."""
    folder = loaded.path.parent
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)
