"""The pipeline YAML, the user's contract, as validated pydantic models.

`load_spec(path)` reads a pipeline file and returns a `PipelineSpec`, or raises one
`PipelineError` whose text is a single line naming the file, the line (where YAML gives it)
and the key: `pipeline.yaml:12: transform.promt: unknown key (did you mean 'prompt'?)`.
Unknown keys are errors, never silently ignored. Files the pipeline names (prompt, context,
data, cassette, schema) must exist, and the prompt must parse as a Jinja2 template.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.config import ModelPrice
from core.connectors.registry import SINK_SCHEMES, SOURCE_SCHEMES, parse_uri, redact_tree
from core.errors import PipelineError
from core.llm.strict_schema import is_object_schema
from core.safe_yaml import YamlError, load_yaml, load_yaml_with_lines


class _Strict(BaseModel):
    # allow_inf_nan=False: `timeout_s: 1e309` reads as infinity, which would remove the bound
    # the number is there to set; a non-finite number is refused like any other bad value.
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


# ---------------------------------------------------------------- extract / load


# A declared column type (`load.columns`): words, an optional (n) or (p, s), optional [].
# It is pasted into CREATE TABLE, so nothing that could end the statement gets through.
_SQL_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*(?:\s+[A-Za-z_][A-Za-z0-9_]*)*"
                       r"(?:\s*\(\s*\d+\s*(?:,\s*\d+\s*)?\))?(?:\s+[A-Za-z_][A-Za-z0-9_]*)*"
                       r"(?:\s*\[\s*\])*")
OBJECT_STORE_KEYS = ("endpoint_url", "region", "aws_access_key_id", "aws_secret_access_key",
                     "aws_session_token")


class _ObjectStoreOptions(_Strict):
    """How to reach an s3:// bucket; each default comes from the AWS chain (environment,
    ~/.aws, instance role) and AWS_ENDPOINT_URL_S3."""

    endpoint_url: str | None = None
    region: str | None = None
    aws_access_key_id: str | None = None  # usually ${NAME} placeholders
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None


class ExtractSpec(_ObjectStoreOptions):
    source: str
    query: str | None = None
    table: str | None = None
    id_field: str | None = None
    batch_size: int = Field(100, ge=1, le=100_000)
    limit: int | None = Field(None, ge=0)
    encoding: str = "utf-8"
    format: Literal["csv", "jsonl", "json"] | None = None  # for object stores; default: by suffix
    # A record whose id an earlier record of the source already had: `quarantine` it (the
    # first one wins), or `keep_last` (the last one wins; the source is read twice to know it).
    on_duplicate_id: Literal["quarantine", "keep_last"] = "quarantine"

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        scheme = parse_uri(value).scheme
        if scheme not in SOURCE_SCHEMES:
            raise ValueError(f"unknown source scheme {scheme + '://' if scheme else value!r}"
                             f" (known: {', '.join(s + '://' for s in SOURCE_SCHEMES)})")
        return value


class LoadSpec(_ObjectStoreOptions):
    destination: str
    table: str | None = None
    mode: Literal["append", "replace", "upsert"] = "append"
    key: str | list[str] | None = None
    # Which columns to write, each a dotted path into input.* or output.*; default: the record
    # id and the output's top-level fields.
    fields: dict[str, str] | None = None
    # Column name -> SQL type for a table Loom creates (postgres); other columns are typed by
    # their first value.
    columns: dict[str, str] | None = None
    batch_size: int = Field(100, ge=1, le=100_000)
    # mode replace: what a run that ends `partial` (max_rejection_rate, a budget stop) does to
    # the destination. hold (default): nothing, the passing records wait in the store for
    # `loom release RUN_ID`; publish: swap them in as a successful run would.
    on_partial: Literal["hold", "publish"] = "hold"
    # A file destination another run is committing to: how long this run's commit waits for it
    # (the wait is only for the other commit's copy and rename, not for its whole run).
    lock_timeout_s: float = Field(120.0, gt=0, le=86_400)

    @field_validator("columns")
    @classmethod
    def _sql_types(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for column, sql_type in (value or {}).items():
            if not isinstance(sql_type, str) or not _SQL_TYPE.fullmatch(sql_type.strip()):
                raise ValueError(f"{column}: {sql_type!r} is not a SQL type (e.g. text, bigint, "
                                 f"numeric(10,2), timestamptz, jsonb, text[])")
        return {column: sql_type.strip() for column, sql_type in value.items()} if value else value

    @field_validator("destination")
    @classmethod
    def _known_sink(cls, value: str) -> str:
        scheme = parse_uri(value).scheme
        if scheme not in SINK_SCHEMES:
            raise ValueError(f"unknown destination scheme {scheme + '://' if scheme else value!r}"
                             f" (known: {', '.join(s + '://' for s in SINK_SCHEMES)})")
        return value

    @field_validator("fields")
    @classmethod
    def _rooted_paths(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for column, path in (value or {}).items():
            if not (path == "id" or path.split(".")[0] in ("input", "output")):
                raise ValueError(f"{column}: {path!r} must be id, or start with input. or output.")
        return value

    @model_validator(mode="after")
    def _distinct_sqlite_columns(self) -> "LoadSpec":
        # SQLite compares column names ignoring case: `Label` and `label` would be one column
        # and every record would lose one of the two values.
        if self.fields and parse_uri(self.destination).scheme == "sqlite":
            seen: dict[str, str] = {}
            for column in self.fields:
                other = seen.setdefault(column.lower(), column)
                if other != column:
                    raise ValueError(f"fields: {other!r} and {column!r} are one column in "
                                     f"SQLite (column names ignore case); rename one")
        return self

    @property
    def key_columns(self) -> list[str]:
        if self.key is None:
            return []
        return [self.key] if isinstance(self.key, str) else list(self.key)


# ---------------------------------------------------------------- transform


class RateLimitSpec(_Strict):
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    # How long one call may wait out rate limits (429s) in all before its record is skipped.
    max_wait_s: float = Field(600.0, gt=0)


Provider = Literal["openai", "openai_compatible", "anthropic", "replay"]
StructuredOutputMode = Literal["json_schema", "json_object_schema", "json_object", "tool", "prompt"]
HttpTransportMode = Literal["loom", "httpx"]
# Body keys that transform.params may not set: Loom writes them from the pipeline (the value:
# the transform key that sets it instead).
RESERVED_BODY_KEYS: dict[str, str | None] = {
    "model": "model", "messages": None, "system": "system", "temperature": "temperature",
    "top_p": "top_p", "seed": "seed", "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens", "response_format": "structured_output",
    "output_config": "structured_output", "tools": "structured_output",
    "tool_choice": "structured_output", "stream": None,
}


class TransformSpec(_Strict):
    prompt: str
    system: str | None = None  # an optional system prompt file, rendered like the prompt
    context: list[str] | dict[str, str] = Field(default_factory=list)
    provider: Provider = "openai"
    model: str
    # Sampling parameters are sent only when set (current reasoning models refuse them).
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    output_schema: dict[str, Any] | str | None = None
    response_format: Literal["json", "text"] | None = None  # default: json with a schema
    # How the request asks for JSON; default: the provider's strongest for the model
    # (OpenAI strict json_schema, Anthropic output_config, else a forced tool).
    structured_output: StructuredOutputMode | None = None
    # Merged into the request body as given (reasoning_effort, service_tier, ...); ${NAME} works.
    params: dict[str, Any] = Field(default_factory=dict)
    # Sent with every request (an Azure api-key, OpenAI-Project, a gateway's header); ${NAME} works.
    headers: dict[str, str] = Field(default_factory=dict)
    # Anthropic: mark the prompt's static prefix (system prompt, context) for the provider's
    # prompt cache, so records after the first read it at the cache price.
    prompt_cache: bool = True
    concurrency: int = Field(8, ge=1, le=1024)
    rate_limit: RateLimitSpec = Field(default_factory=RateLimitSpec)
    cache: bool = True
    api_key: str | None = None
    base_url: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)
    # The HTTP transport: Loom's lean HTTP/1.1 one (core.llm.http11), or httpx's own
    # (HTTP/1.1, knows proxies). Default: Loom's, httpx's when a proxy is set for the URL.
    http_transport: HttpTransportMode | None = None
    cassette: str | None = None  # for provider: replay
    # The model's price in USD per 1M tokens ({input, output, cache_read, cache_write,
    # cache_write_1h}); wins over ~/.loom/config.yaml pricing: and the genai-prices data.
    price: ModelPrice | None = None

    @field_validator("params")
    @classmethod
    def _own_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in RESERVED_BODY_KEYS:
                raise ValueError(f"params.{key}: Loom sets {key} itself"
                                 + (f" (use transform.{RESERVED_BODY_KEYS[key]})"
                                    if RESERVED_BODY_KEYS[key] else ""))
        return value

    @model_validator(mode="after")
    def _provider_needs(self) -> "TransformSpec":
        if self.provider == "replay" and not self.cassette:
            raise ValueError("provider replay needs a cassette: file")
        if self.provider == "openai_compatible" and not self.base_url:
            raise ValueError("provider openai_compatible needs base_url")
        return self

    @property
    def wants_json(self) -> bool:
        if self.response_format:
            return self.response_format == "json"
        return self.output_schema is not None

    def context_files(self) -> dict[str, str]:
        """Context name -> file; a list names each file by its stem."""
        if isinstance(self.context, dict):
            return dict(self.context)
        return {Path(p).stem: p for p in self.context}


# ---------------------------------------------------------------- evaluate


class _EvaluatorBase(_Strict):
    name: str | None = None
    field: str = "output"
    threshold: float = Field(1.0, ge=0, le=1)
    weight: float = Field(1.0, ge=0)

    @field_validator("field")
    @classmethod
    def _rooted(cls, value: str) -> str:
        if value.split(".")[0] not in ("input", "output"):
            raise ValueError(f"{value!r} must start with input. or output.")
        return value

    @property
    def label(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]


class ExactMatchSpec(_EvaluatorBase):
    type: Literal["exact_match"]
    reference_field: str | None = None
    value: Any = None
    ignore_case: bool = False
    normalize_whitespace: bool = False

    @model_validator(mode="after")
    def _one_reference(self) -> "ExactMatchSpec":
        if (self.reference_field is None) == (self.value is None):
            raise ValueError("exact_match needs exactly one of reference_field or value")
        return self


class OneOfSpec(_EvaluatorBase):
    type: Literal["one_of"]
    values: list[Any] = Field(min_length=1)
    ignore_case: bool = False


class RegexSpec(_EvaluatorBase):
    type: Literal["regex"]
    pattern: str
    full_match: bool = False
    ignore_case: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value


class ContainsSpec(_EvaluatorBase):
    type: Literal["contains"]
    values: list[str] = Field(min_length=1)
    mode: Literal["all", "any", "none"] = "all"
    ignore_case: bool = False


class JsonSchemaSpec(_EvaluatorBase):
    type: Literal["json_schema"]
    schema_: dict[str, Any] | str = Field(alias="schema")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class RangeSpec(_EvaluatorBase):
    type: Literal["range"]
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> "RangeSpec":
        if self.min is None and self.max is None:
            raise ValueError("range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("range min is above max")
        return self


class LengthSpec(_EvaluatorBase):
    type: Literal["length"]
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)
    unit: Literal["chars", "words", "items"] = "chars"

    @model_validator(mode="after")
    def _bounds(self) -> "LengthSpec":
        if self.min is None and self.max is None:
            raise ValueError("length needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("length min is above max")
        return self


class ExpressionSpec(_EvaluatorBase):
    type: Literal["expression"]
    expr: str


# ---------------------------------------------------------------- LLM judges


def _rooted_path(value: str | None) -> str | None:
    if value is not None and value.split(".")[0] not in ("input", "output"):
        raise ValueError(f"{value!r} must start with input. or output.")
    return value


class _JudgeBase(_EvaluatorBase):
    """An evaluator that asks a model. Without provider/model it uses the transform's model
    through the run's client; with them it gets a client of its own (a cheap judge for an
    expensive transform). A judge on the transform's provider inherits its base_url, api_key
    and cassette; a judge on another provider never does (the key would reach another server)."""

    threshold: float = Field(0.7, ge=0, le=1)
    provider: Provider | None = None
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    cassette: str | None = None  # for provider: replay
    temperature: float | None = Field(None, ge=0, le=2)  # sent only when set
    max_tokens: int | None = Field(None, ge=1)
    # The record the output was made from, shown to the judge for context; null leaves it out.
    input_field: str | None = "input"
    # A template replacing the packaged judge prompt (same variables, same answer schema).
    prompt: str | None = None
    # The judge model's price in USD per 1M tokens, as transform.price (else the transform's
    # price when the judge uses the transform's model).
    price: ModelPrice | None = None

    @field_validator("input_field", "reference_field", "source_field", "query_field",
                     check_fields=False)
    @classmethod
    def _rooted_fields(cls, value: str | None) -> str | None:
        return _rooted_path(value)


class CustomCriteriaSpec(_JudgeBase):
    type: Literal["custom_criteria"]
    criteria: str = Field(min_length=1)


class SemanticSpec(_JudgeBase):
    type: Literal["semantic"]
    reference_field: str


class FactualitySpec(_JudgeBase):
    type: Literal["factuality"]
    reference_field: str | None = None  # the facts to check against; else the input and common knowledge


class GroundednessSpec(_JudgeBase):
    type: Literal["groundedness"]
    source_field: str  # a document, or a list of documents


class RelevanceSpec(_JudgeBase):
    type: Literal["relevance"]
    query_field: str


class InstructionFollowingSpec(_JudgeBase):
    type: Literal["instruction_following"]
    criteria: str = Field(min_length=1)  # the instructions the output must follow


class PairwiseSpec(_JudgeBase):
    """This output against a reference in the record or another prompt version's output.
    Score 1 when this output wins, 0.5 for a tie, 0 when it loses."""

    type: Literal["pairwise"]
    threshold: float = Field(0.5, ge=0, le=1)
    reference_field: str | None = None
    against_prompt: str | None = None  # another prompt file, run with the transform's settings
    criteria: str | None = None  # what "better" means; default: serves the input better
    allow_tie: bool = True

    @model_validator(mode="after")
    def _one_opponent(self) -> "PairwiseSpec":
        if (self.reference_field is None) == (self.against_prompt is None):
            raise ValueError("pairwise needs exactly one of reference_field or against_prompt")
        return self


JUDGE_SPECS = (CustomCriteriaSpec, SemanticSpec, FactualitySpec, GroundednessSpec, RelevanceSpec,
               InstructionFollowingSpec, PairwiseSpec)
JUDGE_TYPES = frozenset(get_args(spec.model_fields["type"].annotation)[0] for spec in JUDGE_SPECS)

EvaluatorSpec = Annotated[
    Union[ExactMatchSpec, OneOfSpec, RegexSpec, ContainsSpec, JsonSchemaSpec, RangeSpec,
          LengthSpec, ExpressionSpec, CustomCriteriaSpec, SemanticSpec, FactualitySpec,
          GroundednessSpec, RelevanceSpec, InstructionFollowingSpec, PairwiseSpec],
    Field(discriminator="type"),
]

Gate = Literal["all_pass", "majority_pass", "any_pass", "weighted"]


class EvaluateSpec(_Strict):
    evaluators: list[EvaluatorSpec] = Field(default_factory=list)
    quality_gate: Gate = "all_pass"
    gate_threshold: float | None = Field(None, ge=0, le=1)
    max_rejection_rate: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> "EvaluateSpec":
        if self.quality_gate == "weighted" and self.gate_threshold is None:
            raise ValueError("quality_gate weighted needs gate_threshold")
        seen: set[str] = set()
        for evaluator in self.evaluators:
            if evaluator.label in seen:
                raise ValueError(f"two evaluators are named {evaluator.label!r}; give each a name")
            seen.add(evaluator.label)
        return self


# ---------------------------------------------------------------- the rest


class BudgetSpec(_Strict):
    max_cost_usd: float | None = Field(None, ge=0)


class CircuitBreakerSpec(_Strict):
    """When a run stops because its calls keep failing the same way (core.llm.breaker)."""

    failures: int = Field(3, ge=1, le=1000)  # calls in a row failing the same way


class NotifySpec(_Strict):
    slack_webhook: str | None = None  # ${SLACK_WEBHOOK}: resolved when there is something to post
    timeout_s: float = Field(10.0, gt=0)


class MonitoringSpec(_Strict):
    """Checks made after each run against the pipeline's recent runs (core.monitoring)."""

    latency_p95_s: float | None = Field(None, gt=0)
    min_mean_score: float | None = Field(None, ge=0, le=1)
    # An evaluator whose mean falls more than this share below its trailing mean.
    score_drop: float | None = Field(None, gt=0, lt=1)
    cost_spike_factor: float | None = Field(None, gt=1)
    cost_basis: Literal["per_record", "per_run"] = "per_record"
    window: int = Field(10, ge=1, le=1000)  # recent successful or partial runs to compare with
    min_history: int = Field(3, ge=1)  # runs needed in the window before comparing with it
    notify: NotifySpec | None = None


class PipelineSpec(_Strict):
    name: str = Field(max_length=200)
    version: str = "1"
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    extract: ExtractSpec
    transform: TransformSpec
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    load: LoadSpec
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    circuit_breaker: CircuitBreakerSpec = Field(default_factory=CircuitBreakerSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)

    @model_validator(mode="after")
    def _judges_reach_a_model(self) -> "PipelineSpec":
        transform = self.transform
        for index, judge in enumerate(self.evaluate.evaluators):
            if not isinstance(judge, JUDGE_SPECS):
                continue
            provider = judge.provider or transform.provider
            inherits = provider == transform.provider
            where = f"evaluate.evaluators[{index}]"
            if provider == "replay" and not (judge.cassette or (inherits and transform.cassette)):
                raise ValueError(f"{where}: a judge on provider replay needs a cassette: file")
            if provider == "openai_compatible" and not (judge.base_url or
                                                        (inherits and transform.base_url)):
                raise ValueError(f"{where}: a judge on provider openai_compatible needs base_url")
        return self

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", value):
            raise ValueError(f"{value!r}: a pipeline name is letters, digits, _ . and - (no spaces)")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # `version: 1.0` is a float to YAML; people mean the text.
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadedSpec:
    """A validated pipeline and where it came from."""

    spec: PipelineSpec
    path: Path
    raw: dict[str, Any]  # the YAML as written, with overrides applied: the run's config snapshot

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.base_dir / path


def load_spec(path: str | Path, overrides: list[str] | None = None) -> LoadedSpec:
    """Read, parse and validate a pipeline file. Raises PipelineError (one line)."""
    path = Path(path)
    shown = str(path)
    if path.is_dir():
        path = path / "pipeline.yaml"
        shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError("no such pipeline file", file=shown) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read: {exc}", file=shown) from None

    try:
        raw, lines = load_yaml_with_lines(text)
    except YamlError as exc:
        raise PipelineError(exc.message, file=shown, line=exc.line, key=exc.key) from None
    if not isinstance(raw, dict):
        raise PipelineError("a pipeline is a YAML mapping (name:, extract:, transform:, load:)",
                            file=shown, line=1)

    overridden: set[tuple[Any, ...]] = set()
    for item in overrides or []:
        overridden.add(_apply_override(raw, item))

    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc, raw, lines, shown, overridden) from None

    loaded = LoadedSpec(spec=spec, path=path.resolve(), raw=raw)
    _check_files(loaded, {k: v for k, v in lines.items() if k not in overridden}, shown, overridden)
    return loaded


def _apply_override(raw: dict[str, Any], item: str) -> tuple[Any, ...]:
    """`--set transform.model=gpt-4o`: the value is read as YAML (numbers, booleans, lists)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise PipelineError(f"--set {item!r}: expected KEY=VALUE, e.g. transform.model=gpt-4o")
    try:
        parsed = load_yaml(value) if value.strip() else ""
    except YamlError as exc:
        if not exc.message.startswith("YAML syntax error"):
            # a limit (depth, size, aliases, digits), not a plain word that is not YAML
            raise PipelineError(f"--set {key.strip()}: {exc.message}") from None
        parsed = value
    parts = key.strip().split(".")
    node: Any = raw
    for part in parts[:-1]:
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise PipelineError(f"--set {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = parsed
    return tuple(parts)


def _check_json_request(transform: TransformSpec, loaded: LoadedSpec, shown: str,
                        line: int | None) -> None:
    """What every vendor refuses, refused before a call: a schema whose root is not an object,
    and JSON mode (JSON without a schema) with a prompt that never says "json"."""
    schema = transform.output_schema
    if isinstance(schema, dict) and not is_object_schema(schema):
        raise PipelineError("output_schema must be an object at its root (type: object): OpenAI "
                            "and Anthropic refuse any other root; wrap a list or a value in an "
                            "object's property", file=shown, line=line, key="transform.output_schema")
    json_mode = transform.response_format == "json" and schema is None
    if not json_mode or transform.provider not in ("openai", "openai_compatible") \
            or transform.structured_output not in (None, "json_object"):
        return
    texts = []
    for relative in (transform.prompt, transform.system):
        if relative:
            try:
                texts.append(loaded.resolve(relative).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                return  # said elsewhere
    if "json" not in " ".join(texts).lower():
        raise PipelineError("response_format: json without an output_schema needs the word "
                            "\"json\" in the prompt (OpenAI-compatible APIs refuse JSON mode "
                            "otherwise); ask for JSON in the prompt, or give an output_schema",
                            file=shown, line=line, key="transform.response_format")


def _check_files(loaded: LoadedSpec, lines: dict[tuple[Any, ...], int], shown: str,
                 overridden: set[tuple[Any, ...]]) -> None:
    """Every file the pipeline names exists, and the prompt parses."""
    from core.prompts import check_template_syntax  # prompts imports this module's types

    spec = loaded.spec

    def missing(key: tuple[Any, ...], relative: str, what: str) -> PipelineError:
        if key in overridden:
            return PipelineError(f"{what} not found: {relative}", key=f"--set {_dotted(key)}")
        return PipelineError(f"{what} not found: {relative}", file=shown,
                             line=_line_for(lines, key), key=_dotted(key))

    def must_exist(key: tuple[Any, ...], relative: str, what: str) -> Path:
        resolved = loaded.resolve(relative)
        if not resolved.is_file():
            if resolved.exists():
                # /dev/zero, a folder, a FIFO: "not found" would send the user looking for it
                kind = "a folder" if resolved.is_dir() else "not a regular file"
                message = f"{what} {relative} is {kind}; name a file"
                if key in overridden:
                    raise PipelineError(message, key=f"--set {_dotted(key)}")
                raise PipelineError(message, file=shown, line=_line_for(lines, key),
                                    key=_dotted(key))
            raise missing(key, relative, what)
        return resolved

    for key, relative in (("prompt", spec.transform.prompt), ("system", spec.transform.system)):
        if relative is None:
            continue
        template_path = must_exist(("transform", key), relative, f"{key} file")
        check_template_syntax(template_path, file=shown, line=_line_for(lines, ("transform", key)),
                              key=f"transform.{key}")

    context = spec.transform.context
    for index, (name, relative) in enumerate(spec.transform.context_files().items()):
        context_key = ("transform", "context", name if isinstance(context, dict) else index)
        must_exist(context_key, relative, "context file")

    if isinstance(spec.transform.output_schema, str):
        must_exist(("transform", "output_schema"), spec.transform.output_schema, "schema file")
    _check_json_request(spec.transform, loaded, shown, _line_for(lines, ("transform",)))
    for index, evaluator in enumerate(spec.evaluate.evaluators):
        schema = getattr(evaluator, "schema_", None)
        if isinstance(schema, str):
            must_exist(("evaluate", "evaluators", index, "schema"), schema, "schema file")
        if isinstance(evaluator, JUDGE_SPECS):
            for key in ("prompt", "against_prompt"):
                relative = getattr(evaluator, key, None)
                if relative is None:
                    continue
                at = ("evaluate", "evaluators", index, key)
                template_path = must_exist(at, relative, "prompt file")
                check_template_syntax(template_path, file=shown, line=_line_for(lines, at),
                                      key=_dotted(at))
            if evaluator.cassette:
                must_exist(("evaluate", "evaluators", index, "cassette"), evaluator.cassette,
                           "cassette")

    if spec.transform.provider == "replay" and spec.transform.cassette:
        must_exist(("transform", "cassette"), spec.transform.cassette, "cassette")

    source = parse_uri(spec.extract.source)
    sink = parse_uri(spec.load.destination)

    def wrong(key: tuple[Any, ...], message: str) -> PipelineError:
        return PipelineError(message, file=shown, line=_line_for(lines, key), key=_dotted(key))

    if source.is_local_file and "${" not in source.target:
        must_exist(("extract", "source"), source.target, "data file")
    if source.is_sql and not (spec.extract.query or spec.extract.table):
        raise PipelineError(f"a {source.scheme} source needs query: or table:", file=shown,
                            line=_line_for(lines, ("extract",)), key="extract")
    if source.scheme == "sqlite" and "${" not in source.target:
        must_exist(("extract", "source"), source.target, "database")
    if source.is_sql and spec.extract.query:
        # The query template's syntax, and no block that would paste text into the SQL: one
        # line here rather than at the run (params may still come at run time).
        from core.connectors.sql_params import check_query_template

        try:
            check_query_template(spec.extract.query)
        except PipelineError as exc:
            raise wrong(("extract", "query"), exc.detail.removeprefix("extract.query: ")) \
                from None
    # Remote sources are never looked for on disk, and their ${...} stay unresolved here.
    for section, uri, where in ((spec.extract, source, "extract"), (spec.load, sink, "load")):
        if uri.is_object_store:
            if not uri.target.split("/", 1)[0]:
                raise wrong((where, "source" if where == "extract" else "destination"),
                            f"an {uri.scheme}:// URI names a bucket: {uri.scheme}://bucket/prefix/")
            if (section.aws_access_key_id is None) != (section.aws_secret_access_key is None):
                raise wrong((where,), "aws_access_key_id and aws_secret_access_key go together")
            continue
        for key in OBJECT_STORE_KEYS:
            if getattr(section, key) is not None:
                kind = "sources" if where == "extract" else "destinations"
                raise wrong((where, key), f"only for s3:// {kind}")
    if spec.extract.format is not None and not source.is_object_store:
        raise wrong(("extract", "format"), "only for s3:// sources (a file's scheme names its format)")
    if spec.load.columns and sink.scheme not in ("postgres", "postgresql"):
        raise wrong(("load", "columns"), "only for postgres destinations")
    if sink.is_sql and not spec.load.table:
        raise PipelineError(f"a {sink.scheme} destination needs table:", file=shown,
                            line=_line_for(lines, ("load",)), key="load")
    if spec.load.mode == "upsert" and not (spec.load.key or spec.extract.id_field):
        raise PipelineError("mode upsert needs key: (or extract.id_field)", file=shown,
                            line=_line_for(lines, ("load", "mode")), key="load.mode")


# ---------------------------------------------------------------- error text


def _first_error(exc: ValidationError, raw: dict[str, Any], lines: dict[tuple[Any, ...], int],
                 shown: str, overridden: set[tuple[Any, ...]]) -> PipelineError:
    # An unknown key is usually the cause of the other errors (a typo'd required key): name it first.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    error = errors[0]
    path = _data_path(error["loc"], raw)
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        message = "unknown key"
        parent = _model_for(path[:-1])
        if parent is not None:
            allowed = [f.alias or name for name, f in parent.model_fields.items()]
            close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
            message += f" (did you mean {close[0]!r}?)" if close else \
                f" (allowed: {', '.join(sorted(allowed))})"
            if close:
                # The misspelt key is also why its right spelling is "missing": one problem.
                errors = [e for e in errors if not (
                    e["type"] == "missing" and _data_path(e["loc"], raw) == path[:-1] + (close[0],))]
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "union_tag_invalid":
        tags = error.get("ctx", {}).get("expected_tags", "")
        message = f"unknown evaluator type {given.get('type')!r} (known: {tags})" \
            if isinstance(given, dict) else "unknown evaluator type"
        path = path + ("type",)
    elif kind == "union_tag_not_found":
        message = "an evaluator needs a type:"
    elif kind == "value_error":
        message = str(error.get("ctx", {}).get("error", error["msg"]))
    else:
        message = error["msg"]
        if given is not None and not isinstance(given, (dict, list)):
            text = repr(given)
            message += f", got {text if len(text) <= 40 else text[:37] + '...'}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    key = _dotted(path)
    if path in overridden:
        return PipelineError(message, key=f"--set {key}")
    return PipelineError(message, file=shown, line=_line_for(lines, path), key=key or None)


def _data_path(loc: tuple[Any, ...], raw: Any) -> tuple[Any, ...]:
    """Pydantic's error location without union tags and validator names: the path in the YAML."""
    path: list[Any] = []
    node = raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part == loc[-1]:
            path.append(part)  # a missing or unknown key: name it even though it is not there
        # else: a union tag or a validator's name, not part of the user's file
    if path and path[-1] == "schema_":
        path[-1] = "schema"
    return tuple(path)


def _model_for(path: tuple[Any, ...]) -> type[BaseModel] | None:
    models: dict[tuple[str, ...], type[BaseModel]] = {
        (): PipelineSpec, ("extract",): ExtractSpec, ("transform",): TransformSpec,
        ("transform", "rate_limit"): RateLimitSpec, ("evaluate",): EvaluateSpec,
        ("load",): LoadSpec, ("budget",): BudgetSpec, ("monitoring",): MonitoringSpec,
        ("monitoring", "notify"): NotifySpec,
    }
    return models.get(tuple(p for p in path if isinstance(p, str)))


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_for(lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def snapshot(loaded: LoadedSpec) -> dict[str, Any]:
    """The config as written (placeholders such as ${NAME} unresolved): safe to store.

    A password written into a connection URI itself (rather than as ${NAME}) is masked, and so
    is the literal value of every secret-named key (`api_key: sk-…`, a webhook, a token).
    """
    redacted: dict[str, Any] = redact_tree(loaded.raw)
    return redacted
