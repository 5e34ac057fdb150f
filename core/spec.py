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

    endpoint_url: str | None = Field(
        None, description="s3 only: the S3 API endpoint (MinIO, R2, ...); default "
        "AWS_ENDPOINT_URL_S3, else AWS.")
    region: str | None = Field(None, description="s3 only: the bucket's region; default from "
                               "the AWS chain.")
    aws_access_key_id: str | None = Field(  # usually ${NAME} placeholders
        None, description="s3 only: write it as ${NAME}; default from the AWS chain "
        "(environment, profile, instance role).")
    aws_secret_access_key: str | None = Field(
        None, description="s3 only: write it as ${NAME}; default from the AWS chain.")
    aws_session_token: str | None = Field(None, description="s3 only, optional: write it as "
                                          "${NAME}; default from the AWS chain.")


class ExtractSpec(_ObjectStoreOptions):
    """Where the records come from (`extract:`)."""

    source: str = Field(description="A URI: csv://, jsonl://, json:// (a path relative to the "
                        "pipeline's folder; csv:///data/x.csv is absolute), sqlite://file.db, "
                        "postgres://user:${PG_PASSWORD}@host:5432/db or s3://bucket/prefix/.")
    query: str | None = Field(None, description="sqlite, postgres: the SELECT to read (or "
                              "table:); every {{ ... }} in it is a bound parameter, never "
                              "pasted into the SQL.")
    table: str | None = Field(None, description="sqlite, postgres: the table to read (or "
                              "query:).")
    id_field: str | None = Field(None, description="The field that is the record's id; "
                                 "without it, a stable hash of the row.")
    batch_size: int = Field(100, ge=1, le=100_000, description="Records read at a time.")
    limit: int | None = Field(None, ge=0, description="Read at most this many records (also "
                              "--limit).")
    encoding: str = Field("utf-8", description="The encoding of text files.")
    format: Literal["csv", "jsonl", "json"] | None = Field(  # for object stores; default: by suffix
        None, description="s3 only: how to parse every object; default: by each object's "
        "suffix (.csv, .jsonl/.ndjson, .json).")
    # A record whose id an earlier record of the source already had: `quarantine` it (the
    # first one wins), or `keep_last` (the last one wins; the source is read twice to know it).
    on_duplicate_id: Literal["quarantine", "keep_last"] = Field(
        "quarantine", description="A record whose id an earlier record already had: "
        "quarantine it (the first one wins), or keep_last (the last one wins; the source is "
        "read twice to know it).")

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        scheme = parse_uri(value).scheme
        if scheme not in SOURCE_SCHEMES:
            raise ValueError(f"unknown source scheme {scheme + '://' if scheme else value!r}"
                             f" (known: {', '.join(s + '://' for s in SOURCE_SCHEMES)})")
        return value


class LoadSpec(_ObjectStoreOptions):
    """Where the records that pass go (`load:`)."""

    destination: str = Field(description="A URI: csv://, jsonl://, json://, sqlite://file.db, "
                             "postgres://... or s3://bucket/prefix/; {shard} in it is the "
                             "shard's index.")
    table: str | None = Field(None, description="sqlite, postgres: the table to write "
                              "(always quoted as an identifier; schema.table allowed).")
    mode: Literal["append", "replace", "upsert"] = Field(
        "append", description="append adds rows; replace swaps the destination's contents at "
        "commit; upsert (sqlite, postgres) inserts or updates by key.")
    key: str | list[str] | None = Field(None, description="upsert: the key column(s); "
                                        "default: the id column.")
    # Which columns to write, each a dotted path into input.* or output.*; default: the record
    # id and the output's top-level fields.
    fields: dict[str, str] | None = Field(
        None, description="Column -> id, input.* or output.*; default: the record id and the "
        "output's top-level fields.")
    # Column name -> SQL type for a table Loom creates (postgres); other columns are typed by
    # their first value.
    columns: dict[str, str] | None = Field(
        None, description="postgres: column -> SQL type for a table Loom creates (e.g. "
        "numeric(4,3), jsonb); other columns are typed by their first value.")
    batch_size: int = Field(100, ge=1, le=100_000, description="Passing records written at a "
                            "time.")
    # mode replace: what a run that ends `partial` (max_rejection_rate, a budget stop) does to
    # the destination. hold (default): nothing, the passing records wait in the store for
    # `loom release RUN_ID`; publish: swap them in as a successful run would.
    on_partial: Literal["hold", "publish"] = Field(
        "hold", description="mode replace, a run that ends partial: hold leaves the "
        "destination as it was and the passing records wait for `loom release RUN_ID`; "
        "publish swaps them in as a successful run would.")
    # A file destination another run is committing to: how long this run's commit waits for it
    # (the wait is only for the other commit's copy and rename, not for its whole run).
    lock_timeout_s: float = Field(120.0, gt=0, le=86_400, description="File destinations: "
                                  "how long a commit waits while another run commits to the "
                                  "same file (then the run fails, its records kept for "
                                  "--resume).")

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
    """Client-side rate limits, spread over the minute (`transform.rate_limit`)."""

    requests_per_minute: float | None = Field(None, gt=0, description="Requests a minute, at "
                                              "most.")
    tokens_per_minute: float | None = Field(None, gt=0, description="Tokens a minute, at most "
                                            "(a call counts its prompt estimate plus its "
                                            "max_tokens, corrected by the real usage).")
    # How long one call may wait out rate limits (429s) in all before its record is skipped.
    max_wait_s: float = Field(600.0, gt=0, description="How long one call may wait out rate "
                              "limits (429s) in all before its record is skipped (--resume "
                              "picks it up).")


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
    """The prompt, the model and how to call it (`transform:`)."""

    prompt: str = Field(description="The prompt file: Jinja2, sandboxed; {{ input.x }}, "
                        "{{ context.name }}, {{ params.x }}.")
    system: str | None = Field(  # an optional system prompt file, rendered like the prompt
        None, description="An optional system prompt file, rendered like the prompt.")
    context: list[str] | dict[str, str] = Field(
        default_factory=list, description="Context files: a list (context/taxonomy.md is "
        "{{ context.taxonomy }}) or a mapping {name: file}.")
    provider: Provider = Field("openai", description="openai | openai_compatible (needs "
                               "base_url) | anthropic | replay (needs cassette).")
    model: str = Field(description="The model's name at the provider.")
    # Sampling parameters are sent only when set (current reasoning models refuse them).
    temperature: float | None = Field(None, ge=0, le=2, description="Sent only when set, and "
                                      "never to a model that takes no sampling parameters.")
    max_tokens: int | None = Field(None, ge=1, description="The answer's token limit; sent as "
                                   "max_completion_tokens where the model wants that name.")
    top_p: float | None = Field(None, gt=0, le=1, description="Sent only when set, like "
                                "temperature.")
    seed: int | None = Field(None, description="Sent only when set.")
    output_schema: dict[str, Any] | str | None = Field(
        None, description="A JSON Schema (inline, or a file) the answer must match; its root "
        "must be an object. Sent as the provider's structured output and checked locally.")
    response_format: Literal["json", "text"] | None = Field(  # default: json with a schema
        None, description="json | text; default json when there is an output_schema. A text "
        "answer becomes the output {\"text\": ...}.")
    # How the request asks for JSON; default: the provider's strongest for the model
    # (OpenAI strict json_schema, Anthropic output_config, else a forced tool).
    structured_output: StructuredOutputMode | None = Field(
        None, description="How the request asks for JSON; default: the strongest the "
        "provider and model take (OpenAI strict json_schema, Anthropic output_config, else a "
        "forced tool).")
    # Merged into the request body as given (reasoning_effort, service_tier, ...); ${NAME} works.
    params: dict[str, Any] = Field(
        default_factory=dict, description="Merged into the request body as given "
        "(reasoning_effort, service_tier, ...); ${NAME} works. Keys Loom sets itself are "
        "refused.")
    # Sent with every request (an Azure api-key, OpenAI-Project, a gateway's header); ${NAME} works.
    headers: dict[str, str] = Field(
        default_factory=dict, description="Sent with every request (an Azure api-key, "
        "OpenAI-Project, a gateway's header); ${NAME} works; every value is masked as a secret.")
    # Anthropic: mark the prompt's static prefix (system prompt, context) for the provider's
    # prompt cache, so records after the first read it at the cache price.
    prompt_cache: bool = Field(True, description="Anthropic: mark the prompt's static prefix "
                               "for the provider's prompt cache, so records after the first "
                               "read it at the cache price.")
    concurrency: int = Field(8, ge=1, le=1024, description="Calls in flight, at most (429s "
                             "lower it for a while).")
    rate_limit: RateLimitSpec = Field(default_factory=RateLimitSpec,
                                      description="Optional client-side rate limits.")
    cache: bool = Field(True, description="Reuse answers already paid for (--no-cache skips "
                        "reading them).")
    api_key: str | None = Field(None, description="Write it as ${NAME} (keyring, environment, "
                                "AWS Secrets Manager); default: the provider's usual variable "
                                "(OPENAI_API_KEY, ANTHROPIC_API_KEY).")
    base_url: str | None = Field(None, description="The API's base URL "
                                 "(https://api.openai.com/v1); needed by openai_compatible.")
    timeout_s: float = Field(60.0, gt=0, description="Per request.")
    max_retries: int = Field(4, ge=0, le=20, description="Retries on timeouts, 5xx, connection "
                             "errors and malformed bodies (429s are waited out up to "
                             "rate_limit.max_wait_s instead).")
    # The HTTP transport: Loom's lean HTTP/1.1 one (core.llm.http11), or httpx's own
    # (HTTP/1.1, knows proxies). Default: Loom's, httpx's when a proxy is set for the URL.
    http_transport: HttpTransportMode | None = Field(
        None, description="loom (Loom's lean HTTP/1.1 transport) | httpx (httpx's own, which "
        "knows proxies); default: Loom's, httpx's when a proxy is set for the URL.")
    cassette: str | None = Field(None, description="provider replay: the cassette file "
                                 "(JSON Lines) to serve answers from.")
    # The model's price in USD per 1M tokens ({input, output, cache_read, cache_write,
    # cache_write_1h}); wins over ~/.loom/config.yaml pricing: and the genai-prices data.
    price: ModelPrice | None = Field(None, description="The model's price in USD per 1M "
                                     "tokens; wins over config.yaml pricing: and the "
                                     "genai-prices data.")

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
    name: str | None = Field(None, description="The evaluator's name in scores and reasons; "
                             "default: its type (two evaluators need two names).")
    field: str = Field("output", description="What it checks: a dotted path starting with "
                       "input. or output. (output: the whole output).")
    threshold: float = Field(1.0, ge=0, le=1, description="The score (0 to 1) at or above "
                             "which it passes.")
    weight: float = Field(1.0, ge=0, description="Its weight under quality_gate: weighted.")

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
    type: Literal["exact_match"] = Field(description="The field equals reference_field or "
                                         "value.")
    reference_field: str | None = Field(None, description="The record field to compare with "
                                        "(input.* or output.*); or value.")
    value: Any = Field(None, description="A literal to compare with; or reference_field.")
    ignore_case: bool = Field(False, description="Compare ignoring upper and lower case.")
    normalize_whitespace: bool = Field(False, description="Compare with runs of whitespace as one space, trimmed.")

    @model_validator(mode="after")
    def _one_reference(self) -> "ExactMatchSpec":
        if (self.reference_field is None) == (self.value is None):
            raise ValueError("exact_match needs exactly one of reference_field or value")
        return self


class OneOfSpec(_EvaluatorBase):
    type: Literal["one_of"] = Field(description="The field is one of values.")
    values: list[Any] = Field(min_length=1, description="The allowed values.")
    ignore_case: bool = Field(False, description="Compare ignoring upper and lower case.")


class RegexSpec(_EvaluatorBase):
    type: Literal["regex"] = Field(description="The field matches pattern.")
    pattern: str = Field(description="A Python regular expression.")
    full_match: bool = Field(False, description="The whole field must match, not a part.")
    ignore_case: bool = Field(False, description="Compare ignoring upper and lower case.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value


class ContainsSpec(_EvaluatorBase):
    type: Literal["contains"] = Field(description="The field contains values.")
    values: list[str] = Field(min_length=1, description="The texts to look for.")
    mode: Literal["all", "any", "none"] = Field("all", description="all (score: the share "
                                                "found) | any | none.")
    ignore_case: bool = Field(False, description="Compare ignoring upper and lower case.")


class JsonSchemaSpec(_EvaluatorBase):
    type: Literal["json_schema"] = Field(description="The field validates against schema.")
    schema_: dict[str, Any] | str = Field(alias="schema", description="A JSON Schema, inline "
                                          "or a file.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class RangeSpec(_EvaluatorBase):
    type: Literal["range"] = Field(description="A number within min and max.")
    min: float | None = Field(None, description="The lowest value that passes.")
    max: float | None = Field(None, description="The highest value that passes.")

    @model_validator(mode="after")
    def _bounds(self) -> "RangeSpec":
        if self.min is None and self.max is None:
            raise ValueError("range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("range min is above max")
        return self


class LengthSpec(_EvaluatorBase):
    type: Literal["length"] = Field(description="The field's length within min and max.")
    min: int | None = Field(None, ge=0, description="The shortest length that passes.")
    max: int | None = Field(None, ge=0, description="The longest length that passes.")
    unit: Literal["chars", "words", "items"] = Field("chars", description="What the length "
                                                     "counts.")

    @model_validator(mode="after")
    def _bounds(self) -> "LengthSpec":
        if self.min is None and self.max is None:
            raise ValueError("length needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("length min is above max")
        return self


class ExpressionSpec(_EvaluatorBase):
    type: Literal["expression"] = Field(description="A sandboxed Jinja2 expression.")
    expr: str = Field(description="A Jinja2 expression over input, output and params: true or "
                      "false, or a number in [0, 1].")


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

    threshold: float = Field(0.7, ge=0, le=1, description="The score (0 to 1) at or above "
                             "which it passes.")
    provider: Provider | None = Field(None, description="The judge's provider; default: the "
                                      "transform's.")
    model: str | None = Field(None, description="The judge's model; default: the transform's.")
    base_url: str | None = Field(None, description="Inherited from the transform only on the "
                                 "transform's provider.")
    api_key: str | None = Field(None, description="Write it as ${NAME}; inherited from the "
                                "transform only on the transform's provider.")
    cassette: str | None = Field(None, description="provider replay: the judge's cassette.")
    temperature: float | None = Field(None, ge=0, le=2,  # sent only when set
                                      description="Sent only when set.")
    max_tokens: int | None = Field(None, ge=1, description="The judge's answer token limit.")
    # The record the output was made from, shown to the judge for context; null leaves it out.
    input_field: str | None = Field("input", description="The record the output was made "
                                    "from, shown to the judge for context; null leaves it out.")
    # A template replacing the packaged judge prompt (same variables, same answer schema).
    prompt: str | None = Field(None, description="A template file replacing the packaged "
                               "judge prompt (same variables, same answer schema).")
    # The judge model's price in USD per 1M tokens, as transform.price (else the transform's
    # price when the judge uses the transform's model).
    price: ModelPrice | None = Field(None, description="The judge model's price in USD per 1M "
                                     "tokens, as transform.price.")

    @field_validator("input_field", "reference_field", "source_field", "query_field",
                     check_fields=False)
    @classmethod
    def _rooted_fields(cls, value: str | None) -> str | None:
        return _rooted_path(value)


class CustomCriteriaSpec(_JudgeBase):
    type: Literal["custom_criteria"] = Field(description="LLM judge: how well the output "
                                             "meets criteria.")
    criteria: str = Field(min_length=1, description="What a good output is, in words.")


class SemanticSpec(_JudgeBase):
    type: Literal["semantic"] = Field(description="LLM judge: similarity in meaning to a "
                                      "reference.")
    reference_field: str = Field(description="The reference to compare with (input.* or "
                                 "output.*).")


class FactualitySpec(_JudgeBase):
    type: Literal["factuality"] = Field(description="LLM judge: the share of the output's "
                                        "claims that are supported.")
    reference_field: str | None = Field(  # the facts to check against; else the input and common knowledge
        None, description="The facts to check against; else the input and common knowledge.")


class GroundednessSpec(_JudgeBase):
    type: Literal["groundedness"] = Field(description="LLM judge: the share of the output's "
                                          "statements grounded in source documents.")
    source_field: str = Field(  # a document, or a list of documents
        description="The source documents: a text, or a list of texts.")


class RelevanceSpec(_JudgeBase):
    type: Literal["relevance"] = Field(description="LLM judge: whether the output addresses "
                                       "the query.")
    query_field: str = Field(description="The query the output should address.")


class InstructionFollowingSpec(_JudgeBase):
    type: Literal["instruction_following"] = Field(description="LLM judge: whether the "
                                                   "output follows the instructions.")
    criteria: str = Field(min_length=1,  # the instructions the output must follow
                          description="The instructions the output must follow.")


class PairwiseSpec(_JudgeBase):
    """This output against a reference in the record or another prompt version's output.
    Score 1 when this output wins, 0.5 for a tie, 0 when it loses."""

    type: Literal["pairwise"] = Field(description="LLM judge: this output against another; 1 "
                                      "win, 0.5 tie, 0 loss.")
    threshold: float = Field(0.5, ge=0, le=1, description="The score at or above which it "
                             "passes.")
    reference_field: str | None = Field(None, description="The other answer, in the record; or "
                                        "against_prompt.")
    against_prompt: str | None = Field(  # another prompt file, run with the transform's settings
        None, description="Another prompt file, run with the transform's model and settings; "
        "or reference_field.")
    criteria: str | None = Field(  # what "better" means; default: serves the input better
        None, description="What better means; default: serves the input better.")
    allow_tie: bool = Field(True, description="Whether the judge may call a tie.")

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
    """How outputs are judged and which pass (`evaluate:`)."""

    evaluators: list[EvaluatorSpec] = Field(default_factory=list, description="The checks "
                                            "each output gets, by type.")
    quality_gate: Gate = Field("all_pass", description="all_pass | majority_pass (more than "
                               "half) | any_pass | weighted (with gate_threshold).")
    gate_threshold: float | None = Field(None, ge=0, le=1, description="weighted: a record "
                                         "passes when sum(value x weight) / sum(weight) is at "
                                         "least this.")
    max_rejection_rate: float | None = Field(None, ge=0, le=1, description="Above it the run "
                                             "ends partial (exit 3); passing records still "
                                             "load (replace: held, see load.on_partial).")

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
    """What a run may spend (`budget:`)."""

    max_cost_usd: float | None = Field(None, ge=0, description="Stop before spending more "
                                       "(the run ends partial, exit 3).")


class CircuitBreakerSpec(_Strict):
    """When a run stops because its calls keep failing the same way (core.llm.breaker)."""

    failures: int = Field(3, ge=1, le=1000,  # calls in a row failing the same way
                          description="Calls in a row failing the same way before the run "
                          "stops (a refused key stops it at once).")


class NotifySpec(_Strict):
    slack_webhook: str | None = Field(  # ${SLACK_WEBHOOK}: resolved when there is something to post
        None, description="A Slack incoming webhook, as ${SLACK_WEBHOOK}: resolved only when "
        "there is an alert to post.")
    timeout_s: float = Field(10.0, gt=0, description="How long a post may take.")


class MonitoringSpec(_Strict):
    """Checks made after each run against the pipeline's recent runs (core.monitoring)."""

    latency_p95_s: float | None = Field(None, gt=0, description="Alert when the run's p95 "
                                        "latency is above this.")
    min_mean_score: float | None = Field(None, ge=0, le=1, description="Alert when an "
                                         "evaluator's mean score is below this.")
    # An evaluator whose mean falls more than this share below its trailing mean.
    score_drop: float | None = Field(None, gt=0, lt=1, description="Alert when an evaluator's "
                                     "mean falls more than this share below its trailing mean.")
    cost_spike_factor: float | None = Field(None, gt=1, description="Alert when the cost is "
                                            "above this many times the trailing mean.")
    cost_basis: Literal["per_record", "per_run"] = Field(
        "per_record", description="What cost_spike_factor compares: cost per record or per run.")
    window: int = Field(10, ge=1, le=1000,  # recent successful or partial runs to compare with
                        description="The trailing window: the last N successful or partial "
                        "runs.")
    min_history: int = Field(3, ge=1,  # runs needed in the window before comparing with it
                             description="Runs the window needs before comparing with it.")
    notify: NotifySpec | None = Field(None, description="Where to post alerts.")


class PipelineSpec(_Strict):
    """A Loom pipeline (pipeline.yaml). Relative paths resolve against the pipeline file's
    folder; unknown keys are errors."""

    name: str = Field(max_length=200, description="Letters, digits, _ . and -.")
    version: str = Field("1", description="The pipeline's version, as text.")
    description: str = Field("", description="What the pipeline does.")
    params: dict[str, Any] = Field(default_factory=dict, description="{{ params.x }} in prompts "
                                   "and SQL queries; --set params.x=... overrides one.")
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
