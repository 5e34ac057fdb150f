"""Write a sample pipeline's cassette from its hand-written answers.

    .venv/bin/python tools/write_demo_cassette.py                      # every sample
    .venv/bin/python tools/write_demo_cassette.py sample_pipelines/review_summaries
    .venv/bin/python tools/write_demo_cassette.py core/starter         # `loom init`'s pipeline

The samples run offline with `provider: replay`, whose answers are keyed by the exact request,
a judge's included. When a sample's prompt, context, data, judge criteria or model settings
change (or the packaged judge prompts do), the keys change: run this to rewrite
`cassettes/demo.jsonl` from `cassettes/demo_answers.yaml`. Every record goes through Loom's own
record processor (render, transform, validate, repair, judge, repair, gate), so the cassette
holds exactly the requests a run makes.

The prompt variants in `prompts/variants/` (core.variants) are answered too, from the answers
file's `variants:` section (a record a variant does not list gets the shipped prompt's
replies): the workbench's variants then answer offline like the shipped prompt.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.connectors.registry import open_source  # noqa: E402
from core.evaluate.judge_models import JudgeModels  # noqa: E402
from core.evaluate.registry import build_evaluators  # noqa: E402
from core.llm.base import LLMRequest, LLMResponse, Provider  # noqa: E402
from core.llm.client import LLMClient  # noqa: E402
from core.llm.pricing import Pricing  # noqa: E402
from core.llm.replay import CassetteRecorder  # noqa: E402
from core.processing import RecordProcessor  # noqa: E402
from core.prompts import load_prompts  # noqa: E402
from core.spec import load_spec  # noqa: E402
from core.transform import Transformer, load_output_schema  # noqa: E402
from core.variants import prompt_variants  # noqa: E402

SAMPLES = [ROOT / "sample_pipelines" / "customer_sentiment",
           ROOT / "sample_pipelines" / "review_summaries",
           ROOT / "core" / "starter"]  # what `loom init` writes (core.scaffold)


class DemoAnswers(Provider):
    """The record's hand-written replies, in the order Loom asks for them."""

    name = "demo"

    def __init__(self) -> None:
        self.replies: list[str] = []

    async def complete(self, request: LLMRequest) -> LLMResponse:
        text = self.replies.pop(0)
        prompt = sum(len(m["content"]) for m in request.messages)
        return LLMResponse(text=text, input_tokens=prompt // 4 + 1, output_tokens=len(text) // 4 + 1,
                           model=request.model, finish_reason="stop")


async def write(sample: Path) -> None:
    # Loaded as if it called a server: a replay pipeline cannot load before its cassette exists.
    # The provider is not part of a request's key, so the entries replay under `replay`.
    loaded = load_spec(sample, ["transform.provider=openai_compatible",
                                "transform.base_url=http://127.0.0.1:9/v1"])
    answers = yaml.safe_load((sample / "cassettes" / "demo_answers.yaml").read_text(encoding="utf-8"))
    by_variant = answers.pop("variants", None) or {}
    target = sample / "cassettes" / "demo.jsonl"
    target.unlink(missing_ok=True)
    note = (f"Written by hand for Loom's {loaded.spec.name} sample (tools/write_demo_cassette.py "
            "from demo_answers.yaml): these responses were not produced by a model. Token counts "
            "are estimates (4 characters per token).")
    variants = prompt_variants(loaded.resolve(loaded.spec.transform.prompt))
    unknown = set(by_variant) - {variant.name for variant in variants}
    if unknown:
        raise SystemExit(f"demo_answers.yaml answers variants with no prompt: {sorted(unknown)}")
    if variants:
        note += (" They answer the shipped prompt and its variants in prompts/variants/ ("
                 + ", ".join(variant.name for variant in variants) + ").")
    provider = DemoAnswers()
    shipped = load_prompts(loaded)
    schema = load_output_schema(loaded)
    runs = [("shipped prompt", shipped, answers)]
    runs += [(f"variant {variant.name}", shipped.with_prompt(variant.text),
              {**answers, **(by_variant.get(variant.name) or {})}) for variant in variants]
    with CassetteRecorder(target, note=note) as recorder:
        client = LLMClient(provider, pricing=Pricing(), use_cache=False, recorder=recorder,
                           concurrency=1)
        for label, prompts, replies in runs:
            print(f"-- {label}")
            judges = JudgeModels(run_client=client, resolved=loaded, prompts=prompts, schema=schema)
            evaluators = build_evaluators(loaded, llm=judges)
            processor = RecordProcessor(prompts, Transformer(loaded.spec.transform, client, schema),
                                        evaluators, loaded.spec.evaluate)
            source = open_source(loaded)
            async for batch in source.batches():
                for record in batch:
                    provider.replies = list(replies[record.id])
                    result = await processor.process(record)
                    if provider.replies:
                        raise SystemExit(f"{label}: {record.id}: {len(provider.replies)} replies "
                                         "were never asked for")
                    print(f"{record.id}: {result.outcome} {result.reason or ''}"[:160])
            await source.aclose()
    print(f"wrote {target.relative_to(ROOT)}")


async def main(samples: list[Path]) -> None:
    for sample in samples:
        await write(sample.resolve())


if __name__ == "__main__":
    asyncio.run(main([Path(arg) for arg in sys.argv[1:]] or SAMPLES))
