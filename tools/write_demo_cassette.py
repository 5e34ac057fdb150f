"""Write the sample pipeline's cassette from its hand-written answers.

    .venv/bin/python tools/write_demo_cassette.py

The sample runs offline with `provider: replay`, whose answers are keyed by the exact request.
When the prompt, the context, the data or the model settings of the sample change, the keys
change: run this to rewrite `cassettes/demo.jsonl` from `cassettes/demo_answers.yaml`. Every
request goes through Loom's own transform (render, call, validate, one repair), so the
cassette holds exactly the requests a run will make.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.connectors.registry import open_source  # noqa: E402
from core.llm.base import LLMRequest, LLMResponse, Provider  # noqa: E402
from core.llm.client import LLMClient  # noqa: E402
from core.llm.pricing import Pricing  # noqa: E402
from core.llm.replay import CassetteRecorder  # noqa: E402
from core.prompts import load_prompts  # noqa: E402
from core.spec import load_spec  # noqa: E402
from core.transform import TransformFailed, Transformer, load_output_schema  # noqa: E402

SAMPLE = ROOT / "sample_pipelines" / "customer_sentiment"
NOTE = ("Written by hand for Loom's demo (tools/write_demo_cassette.py from demo_answers.yaml): "
        "these responses were not produced by a model. Token counts are estimates (4 characters "
        "per token).")


class DemoAnswers(Provider):
    """Answers from the hand-written list of the record being transformed."""

    name = "demo"

    def __init__(self) -> None:
        self.replies: list[str] = []

    async def complete(self, request: LLMRequest) -> LLMResponse:
        text = self.replies.pop(0)
        prompt = sum(len(m["content"]) for m in request.messages)
        return LLMResponse(text=text, input_tokens=prompt // 4 + 1, output_tokens=len(text) // 4 + 1,
                           model=request.model, finish_reason="stop")


async def main() -> None:
    # Loaded as if it called a server: a replay pipeline cannot load before its cassette exists.
    # The provider is not part of a request's key, so the entries replay under `replay`.
    loaded = load_spec(SAMPLE, ["transform.provider=openai_compatible",
                                "transform.base_url=http://127.0.0.1:9/v1"])
    answers = yaml.safe_load((SAMPLE / "cassettes" / "demo_answers.yaml").read_text(encoding="utf-8"))
    target = loaded.resolve(loaded.spec.transform.cassette or "cassettes/demo.jsonl")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    provider = DemoAnswers()
    prompts = load_prompts(loaded)
    with CassetteRecorder(target, note=NOTE) as recorder:
        client = LLMClient(provider, pricing=Pricing(), use_cache=False, recorder=recorder,
                           concurrency=1)
        transformer = Transformer(loaded.spec.transform, client, load_output_schema(loaded))
        source = open_source(loaded)
        async for batch in source.batches():
            for record in batch:
                provider.replies = list(answers[record.id])
                try:
                    await transformer.run(prompts.render(record.data))
                except TransformFailed:
                    pass  # a reply that fails on purpose: the run quarantines it
                if provider.replies:
                    raise SystemExit(f"{record.id}: {len(provider.replies)} replies were never asked for")
        await source.aclose()
    print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
