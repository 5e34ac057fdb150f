"""`loom prices [MODEL…]`: what models cost, from genai-prices and the user's overrides."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core.cli.output import out_console
from core.errors import one_line


def prices(args: argparse.Namespace) -> int:
    from core.config import load_config
    from core.home import loom_home
    from core.llm.pricing import PRICES_FILE, Pricing, fetch_price_data

    out = out_console()
    if args.refresh:
        try:
            info = fetch_price_data(loom_home() / PRICES_FILE, url=args.url)
        except Exception as exc:  # noqa: BLE001 - any failure to fetch is one line, exit 1
            sys.stderr.write(f"error: could not refresh the price data: {one_line(str(exc))}\n")
            return 1
        if not args.models:
            out.print(f"prices: {info.describe()}", highlight=False)
            return 0
    pricing = Pricing.from_config(load_config())
    info = pricing.data_info()
    found = []
    for model in args.models:
        quote = pricing.quote(model, provider=args.provider, base_url=args.base_url)
        found.append((model, quote))
    if args.json:
        sys.stdout.write(json.dumps({
            "data": {"package": f"genai-prices {info.package_version}", "source": info.source,
                     "fetched_at": info.fetched_at, "newest_price_date": info.newest_price_date},
            "models": [_quote_to_dict(model, quote) for model, quote in found]}) + "\n")
        return 0 if all(quote is not None for _, quote in found) else 1
    out.print(f"prices: {info.describe()}", highlight=False)
    for model, quote in found:
        if quote is None:
            where = f" on {args.provider}" if args.provider else ""
            out.print(f"{model}{where}: no price known (price it under pricing: in "
                      f"~/.loom/config.yaml, or with transform.price in the pipeline)",
                      highlight=False)
            continue
        rate = quote.rate
        origin = (f"{quote.provider_id}/{quote.model_id}" if quote.source != "override"
                  else "override")
        parts = [f"input ${rate.input:g}", f"output ${rate.output:g}"]
        for label, value in (("cache read", rate.cache_read), ("cache write 5m", rate.cache_write),
                             ("cache write 1h", rate.cache_write_1h)):
            if value is not None:
                parts.append(f"{label} ${value:g}")
        line = f"{model} ({origin}): " + ", ".join(parts) + " per 1M tokens"
        by_start: dict[int, list[str]] = {}
        for key, tiers in quote.tiers.items():
            for start, price in tiers:
                by_start.setdefault(start, []).append(f"{key.replace('_', ' ')} ${price:g}")
        for start, prices in sorted(by_start.items()):
            line += f"; above {start:,} prompt tokens: " + ", ".join(prices)
        out.print(line, highlight=False)
    return 0 if all(quote is not None for _, quote in found) else 1


def _quote_to_dict(model: str, quote: Any) -> dict[str, Any]:
    if quote is None:
        return {"model": model, "known": False}
    rate = quote.rate
    return {"model": model, "known": True, "source": quote.source,
            "provider": quote.provider_id, "model_id": quote.model_id,
            "usd_per_mtok": {"input": rate.input, "output": rate.output,
                             "cache_read": rate.cache_read, "cache_write": rate.cache_write,
                             "cache_write_1h": rate.cache_write_1h},
            "tiers": {key: [{"above_prompt_tokens": start, "usd_per_mtok": price}
                            for start, price in tiers] for key, tiers in quote.tiers.items()}}

