"""LLM judges: evaluators that ask a model to score an output, with structured answers.

Each judge renders its prompt (a template in `judge_prompts/`, or the pipeline's own `prompt:`)
in the same sandbox as user prompts, asks for JSON matching its schema under stage `evaluate`
(so the run's cache, cost and latency accounting see it), validates the answer locally and,
when it is not valid, asks once more with the problem quoted, as the transform does. A judge
that still cannot give a valid answer raises `JudgeFailed`: the record is quarantined at stage
`evaluate` with the cause, the reply and what the calls cost. It never passes by default.

Scores follow Arbiter's semantics: `value` in [0, 1] (the judge's score, or the share of
claims / statements that hold up for factuality and groundedness), `passed` by threshold,
`confidence` in [0, 1] from the judge, the judge's explanation, and the lists it gave
(criteria met and not met, key differences, claims, …) in `details`.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import jinja2
import jsonschema
from jinja2.exceptions import SecurityError as JinjaSecurityError

from core.errors import (EvaluatorError, LoomError, PipelineError, RenderLimitError, SecurityError,
                         TemplateError)
from core.evaluate.base import Evaluator
from core.evaluate.deterministic import as_text, clip
from core.evaluate.judge_models import JudgeModels
from core.llm.base import LLMRequest, LLMResponse, StructuredOutput
from core.llm.client import LLMClient
from core.llm.strict_schema import drop_filled_nulls
from core.prompts import budgeted_render, content_hash, make_environment
from core.records import LLMCall, Score, resolve_field
from core.transform import TRUNCATION_GROWTH, TransformFailed, Transformer, parse_json_answer, truncation

if TYPE_CHECKING:
    from core.evaluate.registry import BuildContext

PROMPTS_DIR = Path(__file__).with_name("judge_prompts")
# How stored judge prompts are named: inside the package, not a path on this machine.
PACKAGE_PREFIX = "loom:evaluate/judge_prompts/"
EXPLANATION_LIMIT = 1000
REPLY_IN_ERROR = 300

_ENV = make_environment()


class JudgeFailed(EvaluatorError):
    """A judge that could not score a record; `score` keeps its calls, reply and error."""

    def __init__(self, message: str, *, score: Score) -> None:
        super().__init__(message)
        self.score = score


class _Settled(Exception):
    """The record's score is decided without asking the judge (raised from `variables`)."""

    def __init__(self, value: float, explanation: str, **details: Any) -> None:
        super().__init__(explanation)
        self.value = value
        self.explanation = explanation
        self.details = details


@dataclass(frozen=True)
class PromptText:
    """A template a judge uses, as the history keeps it (kind `judge`)."""

    hash: str
    text: str
    path: str


def _packaged(name: str) -> PromptText:
    text = (PROMPTS_DIR / name).read_text(encoding="utf-8")
    return PromptText(hash=content_hash(text), text=text, path=PACKAGE_PREFIX + name)


def _number(minimum: float = 0.0, maximum: float = 1.0) -> dict[str, Any]:
    return {"type": "number", "minimum": minimum, "maximum": maximum}


_STRINGS = {"type": "array", "items": {"type": "string"}}


def _scored_schema(*lists: str) -> dict[str, Any]:
    """{score, confidence, explanation, and the judge's lists of strings}."""
    properties: dict[str, Any] = {"score": _number(), "confidence": _number(),
                                  "explanation": {"type": "string"}}
    properties.update({name: _STRINGS for name in lists})
    return {"type": "object", "required": ["score", "confidence", "explanation", *lists],
            "properties": properties}


class Judge(Evaluator):
    """The shared machinery: render, ask, validate, one repair, interpret."""

    uses_llm: ClassVar[bool] = True
    template: ClassVar[str]
    schema: ClassVar[dict[str, Any]]

    def __init__(self, spec: Any, *, models: JudgeModels, prompt_file: Path | None = None,
                 params: dict[str, Any] | None = None) -> None:
        super().__init__(spec)
        self.params = dict(params or {})
        self.field: str = spec.field
        self.input_field: str | None = spec.input_field
        self.client: LLMClient
        self.client, self.model = models.client_for(spec)
        self.temperature: float | None = spec.temperature
        self.max_tokens: int | None = spec.max_tokens
        self.system = _packaged("system.j2")
        if prompt_file is not None:
            try:
                text = prompt_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PipelineError(f"cannot read {prompt_file}: {exc}", key="prompt") from None
            self.prompt = PromptText(hash=content_hash(text), text=text, path=str(prompt_file))
        else:
            self.prompt = _packaged(self.template)
        self._system_template = self._compile(self.system, "system")
        self._prompt_template = self._compile(self.prompt, "prompt")
        self._validator = jsonschema.validators.validator_for(self.schema)(self.schema)
        self.judge_label = f"{self.client.provider.name}:{self.model}"

    @classmethod
    def from_spec(cls, spec: Any, context: "BuildContext") -> "Judge":
        if context.llm is None:
            raise PipelineError("an LLM judge needs the run's model client (build it through "
                                "core.processing.Runtime)")
        prompt_file = context.loaded.resolve(spec.prompt) if spec.prompt else None
        return cls(spec, models=context.llm, prompt_file=prompt_file, params=context.params)

    @staticmethod
    def _compile(prompt: PromptText, key: str) -> jinja2.Template:
        try:
            return _ENV.from_string(prompt.text)
        except jinja2.TemplateSyntaxError as exc:
            raise PipelineError(f"{Path(prompt.path).name} line {exc.lineno}: template syntax "
                                f"error: {exc.message}", key=key) from None

    def prompt_versions(self) -> list[PromptText]:
        """The templates this judge renders, to be stored with the run."""
        return [self.system, self.prompt]

    # ------------------------------------------------------------ scoring

    async def score(self, input_data: dict[str, Any], output: Any) -> Score:
        try:
            value = resolve_field(self.field, input_data, output)
        except KeyError as exc:
            # Nothing to judge: a failed check, as for the deterministic evaluators.
            return self.make_score(0.0, clip(str(exc.args[0])), confidence=1.0)
        calls: list[LLMCall] = []
        try:
            variables = await self.variables(value, input_data, output, calls)
        except KeyError as exc:
            return self.make_score(0.0, clip(f"cannot judge: {exc.args[0]}"), confidence=1.0,
                                   calls=calls)
        except _Settled as settled:
            return self.make_score(settled.value, clip(settled.explanation), confidence=1.0,
                                   details=settled.details or None, calls=calls)
        variables.setdefault("input", self._input_text(input_data, output))
        variables["record"] = input_data
        variables["params"] = self.params
        messages = [{"role": "system", "content": self._render(self._system_template, variables)},
                    {"role": "user", "content": self._render(self._prompt_template, variables)}]
        answer = await self._ask(messages, calls)
        return self.interpret(answer, calls, variables)

    async def variables(self, value: Any, input_data: dict[str, Any], output: Any,
                        calls: list[LLMCall]) -> dict[str, Any]:
        """The template's variables for one record. KeyError: a field the judge needs is missing."""
        return {"output": as_text(value)}

    @abc.abstractmethod
    def interpret(self, answer: dict[str, Any], calls: list[LLMCall],
                  variables: dict[str, Any]) -> Score:
        """The Score for a valid answer."""

    def _input_text(self, input_data: dict[str, Any], output: Any) -> str | None:
        if self.input_field is None:
            return None
        try:
            value = resolve_field(self.input_field, input_data, output)
        except KeyError:
            return None  # context only: a judge can still judge without it
        return value if isinstance(value, str) else \
            json.dumps(value, ensure_ascii=False, indent=2, default=str)

    def _render(self, template: jinja2.Template, variables: dict[str, Any]) -> str:
        try:
            return budgeted_render(template, variables)
        except RenderLimitError as exc:
            # The judge prompt's own fault: carried as the cause, it stops the run (exit 2).
            limit = RenderLimitError(f"the judge prompt of {self.name}: {exc.detail}")
            raise EvaluatorError(str(limit)) from limit
        except TemplateError as exc:
            raise EvaluatorError(clip(f"judge prompt did not render: {exc.detail}")) from None
        except JinjaSecurityError as exc:
            # Carried as the cause: the record processor stops the run for it.
            forbidden = SecurityError(f"the judge prompt of {self.name} tried something the "
                                      f"sandbox forbids: {exc}")
            raise EvaluatorError(str(forbidden)) from forbidden
        except jinja2.TemplateError as exc:
            raise EvaluatorError(clip(f"judge prompt did not render: {exc}")) from None

    def _request(self, messages: list[dict[str, str]], *, max_tokens: int | None = None) -> LLMRequest:
        return LLMRequest(model=self.model, messages=messages, temperature=self.temperature,
                          max_tokens=max_tokens or self.max_tokens, output_schema=self.schema,
                          stage="evaluate")

    async def _ask(self, messages: list[dict[str, str]], calls: list[LLMCall]) -> dict[str, Any]:
        response = await self._call(messages, calls)
        limit = self.max_tokens
        cut = truncation(response, limit)
        if cut is not None:
            # Cut off at the token limit: the same budget would be cut again.
            if not limit:
                message = f"judge reply {cut}: set the judge's max_tokens"
                raise JudgeFailed(message, score=self._failed(message, calls, response.text))
            limit *= TRUNCATION_GROWTH
            response = await self._call(messages, calls, max_tokens=limit)
        answer, problem = self._check(response)
        if problem is None:
            assert answer is not None  # _check returns an answer or a problem
            return answer
        repair = messages + [
            {"role": "assistant", "content": response.text},
            {"role": "user", "content": (f"Your answer was not valid: {problem}\n"
                                         "Reply again with only the corrected JSON object, "
                                         "nothing else.")},
        ]
        response = await self._call(repair, calls, max_tokens=limit)
        answer, second = self._check(response)
        if second is None:
            assert answer is not None
            return answer
        cut = truncation(response, limit)
        message = f"judge reply {cut}" if cut else f"judge reply invalid after one repair: {second}"
        raise JudgeFailed(message, score=self._failed(message, calls, response.text))

    async def _call(self, messages: list[dict[str, str]], calls: list[LLMCall], *,
                    max_tokens: int | None = None) -> LLMResponse:
        try:
            response, call = await self.client.complete(self._request(messages, max_tokens=max_tokens))
        except LoomError as exc:
            message = f"judge call failed: {exc}"
            raise JudgeFailed(message, score=self._failed(message, calls, None)) from exc
        calls.append(call)
        return response

    def _check(self, response: LLMResponse) -> tuple[dict[str, Any], None] | tuple[None, str]:
        text = response.text
        try:
            value = parse_json_answer(text)
        except ValueError as exc:
            return None, f"not JSON ({getattr(exc, 'msg', exc)}): {_snippet(text)}"
        if response.structured_output is StructuredOutput.JSON_SCHEMA:
            value = drop_filled_nulls(value, self.schema)  # strict mode's nulls for optional fields
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            return None, f"does not match the judge's schema at {where}: {error.message}"
        return value, None

    def _failed(self, message: str, calls: list[LLMCall], reply: str | None) -> Score:
        details: dict[str, Any] = {"judge": self.judge_label}
        if reply is not None:
            details["reply"] = reply[:2000]
        return Score(evaluator=self.name, type=self.type, value=0.0, passed=False,
                     threshold=self.threshold, weight=self.weight, explanation="",
                     details=details, calls=list(calls), error=message)

    def judged(self, value: float, answer: dict[str, Any], calls: list[LLMCall],
               explanation: str | None = None, **details: Any) -> Score:
        details["judge"] = self.judge_label
        text = explanation if explanation is not None else answer.get("explanation", "")
        return self.make_score(value, clip(str(text), EXPLANATION_LIMIT),
                               confidence=_unit(answer.get("confidence")),
                               details=details, calls=list(calls))


def _unit(value: Any) -> float:
    try:
        return min(1.0, max(0.0, float(value)))
    except (TypeError, ValueError):
        return 0.0


def _snippet(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _required(path: str, input_data: dict[str, Any], output: Any) -> str:
    """A field the judge compares with, as text; KeyError names it when it is missing."""
    return as_text(resolve_field(path, input_data, output))


# ---------------------------------------------------------------- the judges


class CustomCriteria(Judge):
    type: ClassVar[str] = "custom_criteria"
    template: ClassVar[str] = "custom_criteria.j2"
    schema: ClassVar[dict[str, Any]] = _scored_schema("criteria_met", "criteria_not_met")

    async def variables(self, value: Any, input_data: dict[str, Any], output: Any,
                        calls: list[LLMCall]) -> dict[str, Any]:
        return {"output": as_text(value), "criteria": self.spec.criteria}

    def interpret(self, answer: dict[str, Any], calls: list[LLMCall],
                  variables: dict[str, Any]) -> Score:
        return self.judged(answer["score"], answer, calls,
                           criteria_met=answer["criteria_met"],
                           criteria_not_met=answer["criteria_not_met"])


class Semantic(Judge):
    type: ClassVar[str] = "semantic"
    template: ClassVar[str] = "semantic.j2"
    schema: ClassVar[dict[str, Any]] = _scored_schema("key_differences")

    async def variables(self, value: Any, input_data: dict[str, Any], output: Any,
                        calls: list[LLMCall]) -> dict[str, Any]:
        return {"output": as_text(value),
                "reference": _required(self.spec.reference_field, input_data, output)}

    def interpret(self, answer: dict[str, Any], calls: list[LLMCall],
                  variables: dict[str, Any]) -> Score:
        return self.judged(answer["score"], answer, calls,
                           key_differences=answer["key_differences"])


class Factuality(Judge):
    type: ClassVar[str] = "factuality"
    template: ClassVar[str] = "factuality.j2"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object", "required": ["claims", "confidence", "explanation"],
        "properties": {
            "claims": {"type": "array", "items": {
                "type": "object", "required": ["claim", "verdict", "reason"],
                "properties": {"claim": {"type": "string"},
                               "verdict": {"enum": ["supported", "unsupported"]},
                               "reason": {"type": "string"}}}},
            "confidence": _number(), "explanation": {"type": "string"}}}

    async def variables(self, value: Any, input_data: dict[str, Any], output: Any,
                        calls: list[LLMCall]) -> dict[str, Any]:
        reference = self.spec.reference_field
        return {"output": as_text(value),
                "reference": _required(reference, input_data, output) if reference else None}

    def interpret(self, answer: dict[str, Any], calls: list[LLMCall],
                  variables: dict[str, Any]) -> Score:
        claims = answer["claims"]
        supported = [c["claim"] for c in claims if c["verdict"] == "supported"]
        unsupported = [c["claim"] for c in claims if c["verdict"] != "supported"]
        # The share is counted here, not taken from the model: its arithmetic is not trusted.
        value = len(supported) / len(claims) if claims else 1.0
        head = (f"{len(supported)} of {len(claims)} claims supported" if claims
                else "no factual claims to check")
        if unsupported:
            head += "; unsupported: " + "; ".join(clip(c, 80) for c in unsupported[:3])
        return self.judged(value, answer, calls, _joined(head, answer["explanation"]),
                           supported=supported, unsupported=unsupported, claims=claims)


class Groundedness(Judge):
    type: ClassVar[str] = "groundedness"
    template: ClassVar[str] = "groundedness.j2"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object", "required": ["statements", "confidence", "explanation"],
        "properties": {
            "statements": {"type": "array", "items": {
                "type": "object", "required": ["statement", "grounded", "reason"],
                "properties": {"statement": {"type": "string"}, "grounded": {"type": "boolean"},
                               "source": {"type": ["integer", "null"]},
                               "reason": {"type": "string"}}}},
            "confidence": _number(), "explanation": {"type": "string"}}}

    async def variables(self, value: Any, input_data: dict[str, Any], output: Any,
                        calls: list[LLMCall]) -> dict[str, Any]:
        sources = resolve_field(self.spec.source_field, input_data, output)
        documents = sources if isinstance(sources, list) else [sources]
        documents = [as_text(d) for d in documents if d is not None and as_text(d).strip()]
        if not documents:
            raise KeyError(f"{self.spec.source_field} has no documents")
        return {"output": as_text(value), "sources": documents}

    def interpret(self, answer: dict[str, Any], calls: list[LLMCall],
                  variables: dict[str, Any]) -> Score:
        statements = answer["statements"]
        grounded = [s["statement"] for s in statements if s["grounded"]]
        ungrounded = [s["statement"] for s in statements if not s["grounded"]]
        value = len(grounded) / len(statements) if statements else 1.0
        head = (f"{len(grounded)} of {len(statements)} statements grounded in "
                f"{len(variables['sources'])} source{'s' if len(variables['sources']) != 1 else ''}"
                if statements else "no statements to check")
        if ungrounded:
            head += "; not grounded: " + "; ".join(clip(s, 80) for s in ungrounded[:3])
        return self.judged(value, answer, calls, _joined(head, answer["explanation"]),
                           grounded=grounded, ungrounded=ungrounded, statements=statements)


class Relevance(Judge):
    type: ClassVar[str] = "relevance"
    template: ClassVar[str] = "relevance.j2"
    schema: ClassVar[dict[str, Any]] = _scored_schema("addressed", "missed")

    async def variables(self, value: Any, input_data: dict[str, Any], output: Any,
                        calls: list[LLMCall]) -> dict[str, Any]:
        return {"output": as_text(value),
                "query": _required(self.spec.query_field, input_data, output)}

    def interpret(self, answer: dict[str, Any], calls: list[LLMCall],
                  variables: dict[str, Any]) -> Score:
        return self.judged(answer["score"], answer, calls, addressed=answer["addressed"],
                           missed=answer["missed"])


class InstructionFollowing(Judge):
    type: ClassVar[str] = "instruction_following"
    template: ClassVar[str] = "instruction_following.j2"
    schema: ClassVar[dict[str, Any]] = _scored_schema("followed", "violated")

    async def variables(self, value: Any, input_data: dict[str, Any], output: Any,
                        calls: list[LLMCall]) -> dict[str, Any]:
        return {"output": as_text(value), "instructions": self.spec.criteria}

    def interpret(self, answer: dict[str, Any], calls: list[LLMCall],
                  variables: dict[str, Any]) -> Score:
        return self.judged(answer["score"], answer, calls, followed=answer["followed"],
                           violated=answer["violated"])


class _OtherPromptTransformer(Transformer):
    """The transform with another prompt version: its calls are the judge's, stage `evaluate`."""

    def request(self, messages: list[dict[str, str]], *, max_tokens: int | None = None) -> LLMRequest:
        request = super().request(messages, max_tokens=max_tokens)
        request.stage = "evaluate"
        return request


class Pairwise(Judge):
    """This output against a reference, or against what another prompt version makes of the
    same record. The two answers are shown in an order drawn from their text (stable, so the
    request stays cacheable), which evens out a judge's bias for the first or second place."""

    type: ClassVar[str] = "pairwise"
    template: ClassVar[str] = "pairwise.j2"

    def __init__(self, spec: Any, *, models: JudgeModels, prompt_file: Path | None = None,
                 against_file: Path | None = None, params: dict[str, Any] | None = None) -> None:
        self.schema = {  # type: ignore[misc]  # per instance: allow_tie changes it
            "type": "object", "required": ["winner", "confidence", "explanation"],
            "properties": {"winner": {"enum": ["A", "B", "tie"] if spec.allow_tie else ["A", "B"]},
                           "confidence": _number(), "explanation": {"type": "string"}}}
        super().__init__(spec, models=models, prompt_file=prompt_file, params=params)
        self.against: PromptText | None = None
        self._other: _OtherPromptTransformer | None = None
        self._other_prompts = None
        if against_file is not None:
            if models.prompts is None:
                raise PipelineError("against_prompt needs the run's prompts", key="against_prompt")
            try:
                text = against_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PipelineError(f"cannot read {against_file}: {exc}",
                                    key="against_prompt") from None
            self.against = PromptText(hash=content_hash(text), text=text, path=str(against_file))
            self._other_prompts = models.prompts.with_prompt(text)
            # The other version runs with the transform's own model and settings, through the
            # run's client: its answers are cached like the transform's.
            self._other = _OtherPromptTransformer(models.resolved.spec.transform,
                                                  models.run_client, models.schema)

    @classmethod
    def from_spec(cls, spec: Any, context: "BuildContext") -> "Pairwise":
        if context.llm is None:
            raise PipelineError("an LLM judge needs the run's model client")
        resolve = context.loaded.resolve
        return cls(spec, models=context.llm,
                   prompt_file=resolve(spec.prompt) if spec.prompt else None,
                   against_file=resolve(spec.against_prompt) if spec.against_prompt else None,
                   params=context.params)

    def prompt_versions(self) -> list[PromptText]:
        return super().prompt_versions() + ([self.against] if self.against else [])

    async def variables(self, value: Any, input_data: dict[str, Any], output: Any,
                        calls: list[LLMCall]) -> dict[str, Any]:
        mine = as_text(value)
        if self._other is not None:
            other_output = await self._other_output(input_data, calls)
            try:
                other = as_text(resolve_field(self.field, input_data, other_output))
            except KeyError as exc:
                # The other version produced nothing to compare: this output wins outright.
                raise _Settled(1.0, f"output preferred over {self.spec.against_prompt}, whose "
                                    f"{exc.args[0]}", winner="output",
                               against=self.spec.against_prompt) from None
            opponent = "other_prompt"
        else:
            other = _required(self.spec.reference_field, input_data, output)
            opponent = "reference"
        # Which answer comes first depends only on the two texts.
        digest = hashlib.sha256(json.dumps([mine, other], ensure_ascii=False).encode()).digest()
        mine_first = digest[0] % 2 == 0
        first, second = (mine, other) if mine_first else (other, mine)
        return {"output": mine, "answer_a": first, "answer_b": second, "other": other,
                "opponent": opponent, "mine_first": mine_first,
                "criteria": self.spec.criteria, "allow_tie": self.spec.allow_tie}

    async def _other_output(self, input_data: dict[str, Any], calls: list[LLMCall]) -> Any:
        assert self._other is not None and self._other_prompts is not None
        try:
            messages = await self._other_prompts.render_async(input_data)
        except SecurityError as exc:
            raise EvaluatorError(str(exc)) from exc  # stops the run, as for the transform
        except LoomError as exc:
            message = f"against_prompt did not render: {exc}"
            raise JudgeFailed(message, score=self._failed(message, calls, None)) from exc
        try:
            result = await self._other.run(messages)
        except TransformFailed as exc:
            calls.extend(exc.partial.calls)
            message = f"against_prompt output failed: {exc}"
            raise JudgeFailed(message, score=self._failed(message, calls, exc.partial.raw_text
                                                          or None)) from exc
        calls.extend(result.calls)
        return result.output

    def interpret(self, answer: dict[str, Any], calls: list[LLMCall],
                  variables: dict[str, Any]) -> Score:
        said = answer["winner"]
        opponent = variables["opponent"]
        if said == "tie":
            winner, value = "tie", 0.5
        else:
            mine_won = (said == "A") == variables["mine_first"]
            winner, value = ("output", 1.0) if mine_won else (opponent, 0.0)
        against = self.spec.reference_field or self.spec.against_prompt
        head = {"output": f"output preferred over {against}",
                "tie": f"tie with {against}"}.get(winner, f"{against} preferred over the output")
        details: dict[str, Any] = {"winner": winner, "against": against,
                                   "output_position": "A" if variables["mine_first"] else "B"}
        if opponent == "other_prompt":
            details["other_output"] = variables["other"][:2000]
        return self.judged(value, answer, calls, _joined(head, answer["explanation"]), **details)


def _joined(head: str, explanation: Any) -> str:
    text = " ".join(str(explanation or "").split())
    return f"{head}. {text}" if text else head


JUDGES: tuple[type[Judge], ...] = (CustomCriteria, Semantic, Factuality, Groundedness, Relevance,
                                   InstructionFollowing, Pairwise)
JUDGE_TYPES = frozenset(cls.type for cls in JUDGES)
