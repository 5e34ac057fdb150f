"""The free evaluators: checks that need no model, run for every record.

They sit on the hot path (hundreds of records a second), so everything that depends only on
the spec (compiled patterns, folded value sets, schema validators, compiled expressions) is
prepared once in `__init__`, and `score` does only the per-record work.

A field the record does not have is a failed check (value 0, "output.sentiment is missing"),
not an error: the model simply did not produce it. `EvaluatorError` is kept for the cases where
the check itself cannot run (an expression that raises, a sandbox violation).
"""

from __future__ import annotations

import abc
import functools
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import jinja2
import jsonschema
import referencing
import referencing.exceptions
from jinja2 import meta as jinja_meta
from jinja2.exceptions import SecurityError as JinjaSecurityError
from jsonschema.exceptions import best_match
from referencing.jsonschema import DRAFT202012, specification_with

from core.errors import EvaluatorError, PipelineError
from core.evaluate.base import Evaluator
from core.prompts import make_environment
from core.records import Score, resolve_field
from core.safe_yaml import YamlError, load_yaml
from core.spec import (ContainsSpec, ExactMatchSpec, ExpressionSpec, JsonSchemaSpec, LengthSpec,
                       OneOfSpec, RangeSpec, RegexSpec)

if TYPE_CHECKING:
    from core.evaluate.registry import BuildContext

EXPLANATION_LIMIT = 200

# A number written as text ("42", "-3.5", "1e3"), as CSV cells and model answers carry them.
# Stricter than float(): no "nan", "inf" or "1_000", which are words to a reader.
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER_TEXT = re.compile(r"[+-]?\d+")


# ---------------------------------------------------------------- showing values


def clip(text: str, limit: int = EXPLANATION_LIMIT) -> str:
    """One line of at most `limit` characters."""
    if "\n" in text or "\r" in text:
        text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def show(value: Any, limit: int = 60) -> str:
    """A value as a reviewer reads it: strings quoted, JSON spelling for the rest, short."""
    if isinstance(value, str):
        # Slice before repr: a 20 kB answer must not cost a 20 kB repr per record.
        text = repr(value[:limit])
        return text if len(value) <= limit else text[:-1] + "…" + text[-1]
    return clip(as_text(value), limit)


def _plain_list(values: list[Any], limit: int = 120) -> str:
    """`positive, negative, neutral`: the allowed values, unquoted as the user wrote them."""
    return clip(", ".join(v if isinstance(v, str) else as_text(v) for v in values), limit)


def as_text(value: Any) -> str:
    """A non-string value as text, spelled the way JSON data spells it (true, null, [1, 2])."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # a circular structure: not JSON, so Python's spelling
        return str(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def parse_number(value: Any) -> int | float | None:
    """A number, or a string that spells one; None for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return None if isinstance(value, float) and math.isnan(value) else value
    if isinstance(value, str):
        text = value.strip()
        if text and _NUMBER_TEXT.fullmatch(text):
            return int(text) if _INTEGER_TEXT.fullmatch(text) else float(text)
    return None


# ---------------------------------------------------------------- comparing values
#
# Data arrives typed differently depending on where it came from: a CSV cell is the text "1"
# where a JSON answer has the number 1, and "true" where JSON has true. Each value gets one
# primary key (what it is) and alternates (what its text could also mean). Two values match
# when one's primary key is among the other's keys: "7" matches 7 and "true" matches true,
# but two strings still compare as strings, so the ids "007" and "7" stay different.

_Key = tuple[Any, ...]


def value_keys(value: Any, ignore_case: bool = False,
               normalize_whitespace: bool = False) -> tuple[_Key, tuple[_Key, ...]]:
    if isinstance(value, str):
        text = " ".join(value.split()) if normalize_whitespace else value
        if ignore_case:
            text = text.casefold()
        alternates: tuple[_Key, ...] = ()
        stripped = text.strip()
        number = parse_number(stripped) if stripped[:1] in "+-.0123456789" else None
        if number is not None:
            alternates = (("n", number),)
        elif stripped.lower() in ("true", "false"):
            alternates = (("b", stripped.lower() == "true"),)
        return ("s", text), alternates
    if isinstance(value, bool):
        return ("b", value), ()
    if isinstance(value, (int, float)):
        # ints and floats hash and compare equal by value (1 == 1.0), as JSON means them.
        return ("n", value), ()
    if value is None:
        return ("null",), ()
    return ("j", json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)), ()


def keys_match(a: tuple[_Key, tuple[_Key, ...]], b: tuple[_Key, tuple[_Key, ...]]) -> bool:
    return a[0] == b[0] or a[0] in b[1] or b[0] in a[1]


# ---------------------------------------------------------------- the base


class FieldEvaluator(Evaluator):
    """An evaluator that looks at one field (`spec.field`) of the record."""

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.field: str = spec.field

    @classmethod
    def from_spec(cls, spec: Any, context: "BuildContext") -> "FieldEvaluator":
        return cls(spec)

    async def score(self, input_data: dict[str, Any], output: Any) -> Score:
        try:
            value = resolve_field(self.field, input_data, output)
        except KeyError as exc:
            return self.make_score(0.0, clip(str(exc.args[0])))
        return self.check(value, input_data, output)

    @abc.abstractmethod
    def check(self, value: Any, input_data: dict[str, Any], output: Any) -> Score:
        """Score the field's value (present, possibly null)."""

    def _null(self) -> Score:
        return self.make_score(0.0, f"{self.field} is null")


def _check_rooted(path: str, key: str) -> None:
    if path.split(".")[0] not in ("input", "output"):
        raise PipelineError(f"{path!r} must start with input. or output.", key=key)


# ---------------------------------------------------------------- the evaluators


class ExactMatch(FieldEvaluator):
    type: ClassVar[str] = "exact_match"

    def __init__(self, spec: ExactMatchSpec) -> None:
        super().__init__(spec)
        self.ignore_case = spec.ignore_case
        self.normalize_whitespace = spec.normalize_whitespace
        self.reference_field = spec.reference_field
        if self.reference_field is not None:
            _check_rooted(self.reference_field, "reference_field")
        self._expected_keys = (None if spec.value is None else
                               value_keys(spec.value, self.ignore_case, self.normalize_whitespace))
        options = [o for o, on in (("ignoring case", self.ignore_case),
                                   ("whitespace normalised", self.normalize_whitespace)) if on]
        self._options = f" ({', '.join(options)})" if options else ""

    def check(self, value: Any, input_data: dict[str, Any], output: Any) -> Score:
        if self.reference_field is not None:
            try:
                expected = resolve_field(self.reference_field, input_data, output)
            except KeyError as exc:
                return self.make_score(0.0, clip(f"no reference: {exc.args[0]}"))
            expected_keys = value_keys(expected, self.ignore_case, self.normalize_whitespace)
        else:
            expected = self.spec.value
            # ExactMatchSpec has exactly one of reference_field and value.
            assert self._expected_keys is not None
            expected_keys = self._expected_keys
        found_keys = value_keys(value, self.ignore_case, self.normalize_whitespace)
        if keys_match(found_keys, expected_keys):
            return self.make_score(1.0, clip(f"{show(value)} matches {show(expected)}{self._options}"))
        return self.make_score(0.0, clip(f"expected {show(expected)}, found {show(value)}{self._options}"))


class OneOf(FieldEvaluator):
    type: ClassVar[str] = "one_of"

    def __init__(self, spec: OneOfSpec) -> None:
        super().__init__(spec)
        self.ignore_case = spec.ignore_case
        keys = [value_keys(v, self.ignore_case) for v in spec.values]
        self._primaries = frozenset(k[0] for k in keys)
        self._all = self._primaries | frozenset(alt for k in keys for alt in k[1])
        self._allowed = _plain_list(spec.values)

    def check(self, value: Any, input_data: dict[str, Any], output: Any) -> Score:
        primary, alternates = value_keys(value, self.ignore_case)
        if primary in self._all or any(alt in self._primaries for alt in alternates):
            return self.make_score(1.0, clip(f"{show(value)} is one of {self._allowed}"))
        return self.make_score(0.0, clip(f"{show(value)} is not one of {self._allowed}"))


class Regex(FieldEvaluator):
    type: ClassVar[str] = "regex"

    def __init__(self, spec: RegexSpec) -> None:
        super().__init__(spec)
        try:
            pattern = re.compile(spec.pattern, re.IGNORECASE if spec.ignore_case else 0)
        except re.error as exc:  # the spec checks this too; kept for evaluators built by hand
            raise PipelineError(f"invalid regular expression: {exc}", key="pattern") from None
        self._match: Callable[[str], re.Match[str] | None] = (
            pattern.fullmatch if spec.full_match else pattern.search)
        self._verbs = (("fully matches", "does not fully match") if spec.full_match
                       else ("matches", "does not match"))
        self._shown = show(spec.pattern, 80)

    def check(self, value: Any, input_data: dict[str, Any], output: Any) -> Score:
        if value is None:
            return self._null()
        note = ""
        if not isinstance(value, str):
            note = f" ({_kind(value)}, matched as its text)"
            value = as_text(value)
        if self._match(value) is not None:
            return self.make_score(1.0, clip(f"{show(value)}{note} {self._verbs[0]} {self._shown}"))
        return self.make_score(0.0, clip(f"{show(value)}{note} {self._verbs[1]} {self._shown}"))


class Contains(FieldEvaluator):
    """Substrings of a text, or items of a list ("output.tags contains urgent")."""

    type: ClassVar[str] = "contains"

    def __init__(self, spec: ContainsSpec) -> None:
        super().__init__(spec)
        self.mode = spec.mode
        self.ignore_case = spec.ignore_case
        self.values = list(spec.values)
        self._needles = [v.casefold() for v in self.values] if self.ignore_case else self.values

    def _fold(self, text: str) -> str:
        return text.casefold() if self.ignore_case else text

    def check(self, value: Any, input_data: dict[str, Any], output: Any) -> Score:
        if value is None:
            return self._null()
        if isinstance(value, list):
            items = {self._fold(as_text(item)) for item in value}
            present = [needle in items for needle in self._needles]
            where = "items"
        else:
            text = self._fold(value if isinstance(value, str) else as_text(value))
            present = [needle in text for needle in self._needles]
            where = "text"
        found = [v for v, hit in zip(self.values, present) if hit]
        missing = [v for v, hit in zip(self.values, present) if not hit]
        total = len(self.values)
        if self.mode == "all":
            share = len(found) / total
            if not missing:
                return self.make_score(1.0, clip(f"all {total} present in the {where}"))
            return self.make_score(share, clip(
                f"{len(found)} of {total} present; missing {_quoted(missing)}"))
        if self.mode == "any":
            if found:
                return self.make_score(1.0, clip(f"found {_quoted(found)}"))
            return self.make_score(0.0, clip(f"none of {_quoted(missing)} in the {where}"))
        if found:  # mode none
            return self.make_score(0.0, clip(f"found forbidden {_quoted(found)}"))
        return self.make_score(1.0, clip(f"none of {_quoted(missing)} in the {where}"))


def _quoted(values: list[str]) -> str:
    return ", ".join(show(v, 40) for v in values)


class JsonSchema(FieldEvaluator):
    type: ClassVar[str] = "json_schema"

    def __init__(self, spec: JsonSchemaSpec, base_dir: Path | None = None) -> None:
        super().__init__(spec)
        base_dir = Path.cwd() if base_dir is None else base_dir
        if isinstance(spec.schema_, str):
            schema_path = Path(spec.schema_).expanduser()
            schema_path = schema_path if schema_path.is_absolute() else base_dir / schema_path
            schema = read_schema_file(schema_path, "schema")
            ref_dir = schema_path.parent
        else:
            schema = spec.schema_
            ref_dir = base_dir
        self.validator = compile_schema(schema, ref_dir, "schema")

    @classmethod
    def from_spec(cls, spec: Any, context: "BuildContext") -> "JsonSchema":
        return cls(spec, base_dir=context.loaded.base_dir)

    def check(self, value: Any, input_data: dict[str, Any], output: Any) -> Score:
        try:
            errors = list(self.validator.iter_errors(value))
        except referencing.exceptions.Unresolvable as exc:
            raise EvaluatorError(clip(f"the schema has a $ref that cannot be resolved: {exc}")) from exc
        if not errors:
            return self.make_score(1.0, "matches the schema")
        error = best_match(errors)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return self.make_score(0.0, clip(f"{error.json_path}: {error.message}", EXPLANATION_LIMIT - len(more)) + more)


def read_schema_file(path: Path, key: str) -> Any:
    """A JSON Schema from a .json file, or from YAML for any other extension."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise PipelineError(f"cannot read schema file {path}: {reason}", key=key) from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return load_yaml(text)
    except json.JSONDecodeError as exc:
        raise PipelineError(f"schema file {path.name} is not valid JSON: {exc.msg} "
                            f"(line {exc.lineno}, column {exc.colno})", key=key) from None
    except RecursionError:  # json.loads recurses once per nesting level
        raise PipelineError(f"schema file {path.name} is nested too deep", key=key) from None
    except YamlError as exc:
        where = f" (line {exc.line})" if exc.line else ""
        problem = exc.message.removeprefix("YAML syntax error: ")
        raise PipelineError(f"schema file {path.name} is not valid YAML: {problem}{where}",
                            key=key) from None


def compile_schema(schema: Any, ref_dir: Path, key: str) -> jsonschema.protocols.Validator:
    """A validator for `schema`: the draft its `$schema` names (default 2020-12), formats
    checked (a user writing `format: date` means it), and `$ref`s to local files only."""
    if not isinstance(schema, (dict, bool)):
        raise PipelineError(f"a JSON schema is an object, got {_kind(schema)}", key=key)
    validator_class = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator)
    try:
        # types-jsonschema takes a dict only; a boolean schema is valid JSON Schema too.
        validator_class.check_schema(schema)  # type: ignore[arg-type]
    except jsonschema.SchemaError as exc:
        path = exc.json_path if exc.path else "$"
        raise PipelineError(clip(f"invalid JSON schema at {path}: {exc.message}"), key=key) from None
    retrieve = _local_retriever(ref_dir, validator_class)
    if isinstance(schema, dict):
        for ref in _external_refs(schema):
            try:
                retrieve(ref)
            except PipelineError as exc:
                raise PipelineError(clip(f"$ref {ref!r}: {exc.detail}"), key=key) from None
            except (ValueError, referencing.exceptions.CannotDetermineSpecification) as exc:
                raise PipelineError(clip(f"$ref {ref!r}: {exc}"), key=key) from None
    # referencing's attrs class takes `retrieve` (its private field's alias): the stubs miss it.
    registry: referencing.Registry[Any] = referencing.Registry(retrieve=retrieve)  # type: ignore[call-arg]
    return validator_class(schema, registry=registry,
                           format_checker=validator_class.FORMAT_CHECKER)


def _local_retriever(ref_dir: Path, validator_class: Any) -> Callable[[str], referencing.Resource[Any]]:
    # Validation would otherwise fetch a remote `$ref` over the network for every record;
    # only files next to the schema are followed, each read once.
    specification = specification_with(validator_class.META_SCHEMA.get("$schema", ""),
                                       default=DRAFT202012)

    @functools.lru_cache(maxsize=64)
    def retrieve(uri: str) -> referencing.Resource[Any]:
        if "://" in uri or uri.startswith("urn:"):
            raise ValueError(f"only local schema files are followed, not {uri}")
        path = Path(uri.removeprefix("file:"))
        path = path if path.is_absolute() else ref_dir / path
        contents = read_schema_file(path, "schema")
        return referencing.Resource.from_contents(contents, default_specification=specification)

    return retrieve


def _external_refs(node: Any) -> list[str]:
    """The `$ref`s of a schema that point outside it (their fragment removed)."""
    found: list[str] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            ref = current.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                target = ref.split("#", 1)[0]
                if target and target not in found:
                    found.append(target)
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    # A schema with its own $id resolves relative refs against it: those are checked when used.
    return [] if isinstance(node.get("$id"), str) and "://" in node["$id"] else found


class Range(FieldEvaluator):
    type: ClassVar[str] = "range"

    def __init__(self, spec: RangeSpec) -> None:
        super().__init__(spec)
        self.min = spec.min
        self.max = spec.max
        self._bounds = _bounds_text(spec.min, spec.max)

    def check(self, value: Any, input_data: dict[str, Any], output: Any) -> Score:
        number = parse_number(value)
        if number is None:
            return self.make_score(0.0, clip(f"{show(value)} is not a number"))
        if self.min is not None and number < self.min:
            return self.make_score(0.0, clip(f"{_number(number)} is below min {_number(self.min)}"))
        if self.max is not None and number > self.max:
            return self.make_score(0.0, clip(f"{_number(number)} is above max {_number(self.max)}"))
        return self.make_score(1.0, f"{_number(number)} is within {self._bounds}")


def _number(value: float | None) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 \
        else str(value)


def _bounds_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"[{_number(low)}, {_number(high)}]"
    return f">= {_number(low)}" if low is not None else f"<= {_number(high)}"


class Length(FieldEvaluator):
    type: ClassVar[str] = "length"

    def __init__(self, spec: LengthSpec) -> None:
        super().__init__(spec)
        self.unit = spec.unit
        self.min = spec.min
        self.max = spec.max
        self._bounds = _bounds_text(spec.min, spec.max)

    def check(self, value: Any, input_data: dict[str, Any], output: Any) -> Score:
        if value is None:
            return self._null()
        if self.unit == "items":
            if not isinstance(value, (list, dict)):
                return self.make_score(0.0, clip(f"{show(value)} is {_kind(value)}, not a list"))
            size = len(value)
        else:
            if isinstance(value, (list, dict)):
                return self.make_score(0.0, f"{self.field} is {_kind(value)}, not text")
            text = value if isinstance(value, str) else as_text(value)
            size = len(text) if self.unit == "chars" else len(text.split())
        unit = self.unit if size != 1 else self.unit[:-1]
        if self.min is not None and size < self.min:
            return self.make_score(0.0, f"{size} {unit}, below min {self.min}")
        if self.max is not None and size > self.max:
            return self.make_score(0.0, f"{size} {unit}, above max {self.max}")
        return self.make_score(1.0, f"{size} {unit}, within {self._bounds}")


class Expression(Evaluator):
    """A sandboxed Jinja2 expression over `input`, `output` and `params`: true/false, or a
    number in [0, 1] that is compared with the threshold."""

    type: ClassVar[str] = "expression"
    NAMES: ClassVar[frozenset[str]] = frozenset({"input", "output", "params"})

    def __init__(self, spec: ExpressionSpec, params: dict[str, Any] | None = None) -> None:
        super().__init__(spec)
        self.expr = spec.expr
        self.params = dict(params or {})
        self._shown = show(spec.expr, 80)
        env = make_environment()
        try:
            self._compiled = env.compile_expression(spec.expr, undefined_to_none=False)
            # A misspelt root name (`ouput.x`) would otherwise fail every record quietly.
            unknown = jinja_meta.find_undeclared_variables(env.parse(f"{{{{ {spec.expr} }}}}")) \
                - self.NAMES
        except jinja2.TemplateSyntaxError as exc:
            raise PipelineError(clip(f"expression syntax error: {exc.message}"), key="expr") from None
        if unknown:
            raise PipelineError(f"unknown name {', '.join(sorted(unknown))} in the expression "
                                "(use input, output or params)", key="expr")

    @classmethod
    def from_spec(cls, spec: Any, context: "BuildContext") -> "Expression":
        return cls(spec, params=context.params)

    async def score(self, input_data: dict[str, Any], output: Any) -> Score:
        try:
            result = self._compiled(input=input_data, output=output, params=self.params)
            if isinstance(result, jinja2.Undefined):
                bool(result)  # raises the error the undefined value carries (missing, unsafe)
        except JinjaSecurityError as exc:
            raise EvaluatorError(clip(f"expression {self._shown} tried something the sandbox "
                                      f"forbids: {exc}")) from None
        except jinja2.UndefinedError as exc:
            # A field the record lacks: a failed check, as for every other evaluator.
            return self.make_score(0.0, clip(f"{exc.message} (in {self._shown})"))
        except Exception as exc:  # noqa: BLE001 - a user expression can raise anything
            raise EvaluatorError(clip(f"expression {self._shown} raised "
                                      f"{type(exc).__name__}: {exc}")) from exc
        if isinstance(result, bool):
            return self.make_score(1.0 if result else 0.0,
                                   clip(f"{self._shown} is {'true' if result else 'false'}"))
        if isinstance(result, (int, float)) and 0.0 <= result <= 1.0:
            return self.make_score(result, clip(f"{self._shown} gave {result:.3g}"))
        raise EvaluatorError(clip(f"expression {self._shown} returned {show(result, 40)} "
                                  f"({_kind(result)}); it must give true/false or a number in [0, 1]"))
