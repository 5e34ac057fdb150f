"""What a call costs: prices from the `genai-prices` data, user overrides, and the arithmetic.

Where prices come from, first match wins:
1. An override: the pipeline's `transform.price` (or a judge's `price`), then `pricing:` in
   `~/.loom/config.yaml` (by model name; a dated snapshot such as `-2024-07-18` or `-latest`
   of a priced name is the same model). USD per 1M tokens; an override replaces the data's
   price for that model entirely (cache reads and writes not given cost as ordinary input).
2. The `genai-prices` data (pydantic/genai-prices: current models, cache read and write prices,
   prompt-size tiers), looked up by where the call went:
   - `openai` / `anthropic`: the vendor, or the provider genai-prices knows the base URL's host
     as (Azure, OpenRouter, ...). A model the vendor does not list is looked up by its name
     across the data only behind a gateway (a base URL genai-prices does not know, e.g. a
     LiteLLM proxy forwarding `claude-*` over the OpenAI wire format).
   - `openai_compatible`: only where genai-prices knows the base URL's host (Groq, Together,
     OpenRouter, DeepSeek, ...). A loopback, private or unknown host has no price: a local
     llama.cpp model named gpt-4o-mini is not billed at OpenAI's price.
   - `replay` (and no provider given): by the model's name alone: a cassette replays the list
     prices of its recorded tokens.
   The model the response reports (a deployment alias the server resolved) is tried when the
   requested name has no price.
3. Nothing: an unknown model costs None, never a guess. (`core.llm.client` then uses a
   gateway's own reported cost when the response carries one.)

The data is the snapshot bundled with the installed genai-prices (upgrade the package to
refresh it), or a copy fetched on request with `loom prices --refresh` into
`$LOOM_HOME/prices.json` (`fetch_price_data`); runs never fetch anything.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from core.config import LoomConfig

# Where a call's cost came from (LLMCall.cost_source).
SOURCE_OVERRIDE = "override"
SOURCE_DATA = "genai-prices"
SOURCE_GATEWAY = "gateway"

PRICES_FILE = "prices.json"  # under $LOOM_HOME: price data fetched by `loom prices --refresh`


@dataclass(frozen=True, slots=True)
class ModelRate:
    """USD per 1M tokens. A cache price left None costs as ordinary input.

    `cache_read`: prompt-cache reads; `cache_write`: 5-minute cache writes (Anthropic: 1.25x
    input); `cache_write_1h`: 1-hour writes (2x; None: as `cache_write`)."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    cache_write_1h: float | None = None

    @property
    def cached_input(self) -> float | None:  # the name the old table used
        return self.cache_read

    def cost(self, usage: "TokenUsage") -> float:
        u = usage.clamped()
        read = self.input if self.cache_read is None else self.cache_read
        write = self.input if self.cache_write is None else self.cache_write
        write_1h = write if self.cache_write_1h is None else self.cache_write_1h
        return (u.uncached * self.input + u.cache_read * read + u.cache_write * write
                + u.cache_write_1h * write_1h + u.output * self.output) / 1_000_000


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """One call's tokens. `input` is the whole prompt; cache reads and writes are parts of it."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0  # 5-minute cache writes
    cache_write_1h: int = 0

    def clamped(self) -> "TokenUsage":
        """Never negative, and the cached parts never more than the prompt (a confused server)."""
        total = max(self.input, 0)
        read = min(max(self.cache_read, 0), total)
        write = min(max(self.cache_write, 0), total - read)
        write_1h = min(max(self.cache_write_1h, 0), total - read - write)
        return TokenUsage(total, max(self.output, 0), read, write, write_1h)

    @property
    def uncached(self) -> int:
        return self.input - self.cache_read - self.cache_write - self.cache_write_1h

    def without_cache(self) -> "TokenUsage":
        """The same call billed as if nothing had been read from or written to a cache."""
        return TokenUsage(self.input, self.output)


_PRICE_KEYS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")


@dataclass(frozen=True, slots=True)
class Quote:
    """A model's price as found: where from, and what it costs."""

    model: str  # the name as asked for
    source: str  # SOURCE_OVERRIDE | SOURCE_DATA
    rate: ModelRate  # the base rate (below any prompt-size tier)
    provider_id: str | None = None  # genai-prices' provider, for data prices
    model_id: str | None = None  # genai-prices' model id
    # price key ("input", "cache_read", ...) -> [(above this many prompt tokens, USD per 1M)]
    tiers: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    _info: Any = field(default=None, repr=False, compare=False)
    _variants: dict[tuple[tuple[str, str], ...], tuple[ModelRate, dict[str, list[tuple[int, float]]]]] = \
        field(default_factory=dict, repr=False, compare=False)

    def cost(self, usage: TokenUsage, *, context: Mapping[str, str] | None = None) -> float:
        """USD. `context`: what the response said about how it was served (OpenAI's
        `service_tier`), for the data's price variants.

        The arithmetic is genai-prices' (tests check it against `genai_prices.calc_price`), done
        here from the resolved prices: calc_price costs about a millisecond a call."""
        rate, tiers = self._resolved(context)
        u = usage.clamped()
        if tiers:
            # A tier is a cliff: past its threshold every token of that kind costs the tier price.
            tiered: dict[str, Any] = {key: _tiered(getattr(rate, key), tiers.get(key), u.input)
                                      for key in _PRICE_KEYS}
            rate = ModelRate(**tiered)
        return rate.cost(u)

    def saving(self, usage: TokenUsage, *, context: Mapping[str, str] | None = None) -> float:
        """What prompt caching saved on this call: the prompt at the input rate minus what its
        cache reads cost, minus what its cache writes cost above the input rate (negative when a
        write was not read back)."""
        u = usage.clamped()
        if not (u.cache_read or u.cache_write or u.cache_write_1h):
            return 0.0
        return self.cost(u.without_cache(), context=context) - self.cost(u, context=context)

    def _resolved(self, context: Mapping[str, str] | None
                  ) -> tuple[ModelRate, dict[str, list[tuple[int, float]]]]:
        if not context or self._info is None:
            return self.rate, self.tiers
        key = tuple(sorted(context.items()))
        found = self._variants.get(key)
        if found is None:
            prices = self._info.get_prices(datetime.now(tz=timezone.utc), dict(context))
            found = self._variants[key] = _rate_and_tiers(prices)
        return found


def _tiered(base: float | None, tiers: list[tuple[int, float]] | None,
            prompt_tokens: int) -> float | None:
    if base is None or not tiers:
        return base
    for start, price in reversed(tiers):
        if prompt_tokens > start:
            return price
    return base


@dataclass(frozen=True, slots=True)
class PriceData:
    """Which genai-prices data is in use, for `loom --version` and `loom prices`."""

    package_version: str
    source: str  # "bundled" | the file it was read from
    fetched_at: str | None  # when `loom prices --refresh` fetched it
    newest_price_date: str | None  # the latest date a price in the data starts on

    def describe(self) -> str:
        newest = f", newest price in effect since {self.newest_price_date}" if self.newest_price_date else ""
        if self.source == "bundled":
            return f"genai-prices {self.package_version} (bundled data{newest})"
        return (f"genai-prices {self.package_version} (data fetched {self.fetched_at or '?'} "
                f"into {self.source}{newest})")


# What may follow a priced override name and still be the same model: a dated snapshot
# (gpt-4o-mini-2024-07-18, claude-sonnet-4-5-20250929) or a moving alias (-latest).
_SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)")

_VENDORS = {"openai": "openai", "anthropic": "anthropic"}


def is_local_url(base_url: str | None) -> bool:
    """A loopback, private, link-local or single-label host: a server of one's own."""
    if not base_url:
        return False
    host = (urlsplit(base_url if "//" in base_url else f"//{base_url}").hostname or "").lower()
    if not host:
        return False
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal", ".lan",
                                             ".home.arpa")) or "." not in host:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local or \
        address.is_unspecified


class Pricing:
    """Prices for models, by where the call went. Overrides first, then the genai-prices data."""

    def __init__(self, overrides: Mapping[str, Any] | None = None, *,
                 prices: Mapping[str, ModelRate] | None = None, data: Any = True) -> None:
        """`overrides`: model name -> price (LoomConfig.pricing: a ModelPrice, a ModelRate or a
        dict in USD per 1M tokens). `prices`: a fixed table used instead of any data (tests).
        `data`: True for the genai-prices data in use (the bundled snapshot, or a fetched one
        passed as a genai_prices DataSnapshot), False/None for none."""
        table = dict(prices or {})
        for name, price in (overrides or {}).items():
            table[name] = as_rate(price)
        self._table = {name.lower(): rate for name, rate in table.items()}
        self._names = sorted(self._table, key=len, reverse=True)  # longest first
        if prices is not None and data is True:
            data = None  # a fixed table is the whole truth
        # True: the bundled data, loaded at the first lookup that needs it (importing it takes
        # a moment, which `loom validate` and `loom runs` need not pay).
        self._data = data if data is True else (data or None)
        self._quotes: dict[tuple[str, str | None, str | None], Quote | None] = {}

    @classmethod
    def from_config(cls, config: "LoomConfig", home: Path | None = None) -> "Pricing":
        """Config overrides over the price data in use: `$LOOM_HOME/prices.json` when
        `loom prices --refresh` wrote one, else the data bundled with genai-prices."""
        from core.config import loom_home

        fetched = load_fetched_snapshot((home or loom_home()) / PRICES_FILE)
        return cls(overrides=config.pricing, data=fetched if fetched is not None else True)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Pricing":
        """These prices over this pricing's (a pipeline's `transform.price` over the config's)."""
        if not overrides:
            return self
        made = Pricing.__new__(Pricing)
        table = dict(self._table)
        table.update({name.lower(): as_rate(price) for name, price in overrides.items()})
        made._table = table
        made._names = sorted(table, key=len, reverse=True)
        made._data = self._data
        made._quotes = {}
        return made

    # -- lookups

    def quote(self, model: str, *, provider: str | None = None,
              base_url: str | None = None) -> Quote | None:
        """The price of `model` on `provider` (a Loom provider name) at `base_url`; None when
        nothing prices it."""
        key = (model, provider, base_url)
        try:
            return self._quotes[key]
        except KeyError:
            pass
        rate = self._override(model)
        if rate is not None:
            quote: Quote | None = Quote(model=model, source=SOURCE_OVERRIDE, rate=rate)
        else:
            quote = self._data_quote(model, provider, base_url)
        self._quotes[key] = quote
        return quote

    def rate(self, model: str, *, provider: str | None = None,
             base_url: str | None = None) -> ModelRate | None:
        quote = self.quote(model, provider=provider, base_url=base_url)
        return quote.rate if quote is not None else None

    def known(self, model: str, *, provider: str | None = None, base_url: str | None = None) -> bool:
        return self.quote(model, provider=provider, base_url=base_url) is not None

    def cost(self, model: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0, *,
             cache_write_tokens: int = 0, cache_write_1h_tokens: int = 0,
             provider: str | None = None, base_url: str | None = None) -> float | None:
        """USD for one call; None when the model has no known price."""
        quote = self.quote(model, provider=provider, base_url=base_url)
        if quote is None:
            return None
        return quote.cost(TokenUsage(input_tokens, output_tokens, cached_tokens,
                                     cache_write_tokens, cache_write_1h_tokens))

    @property
    def _snapshot(self) -> Any:
        if self._data is True:
            self._data = _bundled_snapshot()
        return self._data

    def data_info(self) -> PriceData:
        return describe_snapshot(self._snapshot)

    # -- internals

    def _override(self, model: str) -> ModelRate | None:
        wanted = model.lower()
        rate = self._table.get(wanted)
        if rate is None:
            for name in self._names:
                if wanted.startswith(name) and _SNAPSHOT_SUFFIX.fullmatch(wanted[len(name):]):
                    return self._table[name]
        return rate

    def _data_quote(self, model: str, provider: str | None, base_url: str | None) -> Quote | None:
        snapshot = self._snapshot
        if snapshot is None or not model:
            return None
        for provider_id, by_name in _candidates(snapshot, provider, base_url):
            try:
                if by_name:
                    # genai-prices' "litellm" lookup: a `vendor/model` name (LiteLLM's, an
                    # OpenRouter-style alias) is that vendor's model, else by the name alone.
                    found_provider, info = snapshot.find_provider_model(model, None, "litellm",
                                                                        None)
                else:
                    found_provider, info = snapshot.find_provider_model(model, None, provider_id,
                                                                        None)
            except (LookupError, ValueError):
                continue
            return _quote_from_data(model, found_provider, info)
        return None


def pipeline_prices(spec: Any) -> dict[str, Any]:
    """Model name -> price set in a pipeline: `transform.price`, and each LLM judge's `price`
    for the model it asks (a judge without a model of its own asks the transform's)."""
    prices: dict[str, Any] = {}
    transform = spec.transform
    for evaluator in getattr(spec.evaluate, "evaluators", None) or []:
        price = getattr(evaluator, "price", None)
        if price is not None:
            prices[getattr(evaluator, "model", None) or transform.model] = price
    if getattr(transform, "price", None) is not None:
        prices[transform.model] = transform.price
    return prices


def _candidates(snapshot: Any, provider: str | None,
                base_url: str | None) -> list[tuple[str | None, bool]]:
    """Where to look a model up, in order: (genai-prices provider id, by model name alone)."""
    host_provider = None
    if base_url and not is_local_url(base_url):
        try:
            host_provider = snapshot.find_provider(None, None, base_url).id
        except LookupError:
            host_provider = None
    if provider in _VENDORS:
        order: list[tuple[str | None, bool]] = []
        if host_provider is not None:
            order.append((host_provider, False))
        order.append((_VENDORS[provider], False))
        # Behind a gateway the data does not know (a LiteLLM proxy, a local relay), the model
        # may be another vendor's: look its name up across the data.
        if host_provider is None and base_url:
            order.append((None, True))
        return order
    if provider == "openai_compatible":
        return [(host_provider, False)] if host_provider is not None else []
    # replay, or a caller that does not say: the model's name alone
    if host_provider is not None:
        return [(host_provider, False), (None, True)]
    return [(None, True)]


def _decimal(value: Any) -> float | None:
    if value is None:
        return None
    base = getattr(value, "base", value)
    return float(base) if isinstance(base, Decimal | int | float) else None


def _rate_and_tiers(prices: Any) -> tuple[ModelRate, dict[str, list[tuple[int, float]]]]:
    """A genai-prices ModelPrice as a base ModelRate and its prompt-size tiers."""
    rate = ModelRate(
        input=_decimal(prices.input_mtok) or 0.0, output=_decimal(prices.output_mtok) or 0.0,
        cache_read=_decimal(prices.cache_read_mtok), cache_write=_decimal(prices.cache_write_mtok),
        cache_write_1h=_decimal(prices.cache_write_1h_mtok))
    tiers: dict[str, list[tuple[int, float]]] = {}
    for key in _PRICE_KEYS:
        value = getattr(prices, f"{key}_mtok", None)
        if value is not None and getattr(value, "tiers", None):
            tiers[key] = sorted((int(t.start), float(t.price)) for t in value.tiers)
    return rate, tiers


def _quote_from_data(model: str, provider: Any, info: Any) -> Quote:
    rate, tiers = _rate_and_tiers(info.get_prices(datetime.now(tz=timezone.utc)))
    return Quote(model=model, source=SOURCE_DATA, rate=rate, provider_id=provider.id,
                 model_id=info.id, tiers=tiers, _info=info)


def as_rate(price: Any) -> ModelRate:
    """A ModelRate from a ModelRate, a core.config.ModelPrice, or a mapping of the same keys."""
    if isinstance(price, ModelRate):
        return price
    get: Callable[..., Any] = price.get if isinstance(price, Mapping) else \
        lambda key, default=None: getattr(price, key, default)

    def number(key: str) -> float | None:
        value = get(key)
        return None if value is None else float(value)

    read = number("cache_read")
    if read is None:
        read = number("cached_input")
    return ModelRate(float(get("input")), float(get("output")), read, number("cache_write"),
                     number("cache_write_1h"))


# -- the data: bundled, or fetched on request

def _bundled_snapshot() -> Any:
    from genai_prices import data_snapshot

    return data_snapshot.get_snapshot()


def _newest_price_date(snapshot: Any) -> str | None:
    newest: date | None = None
    today = date.today()  # a price announced for later is not in use yet
    for provider in getattr(snapshot, "providers", []) or []:
        for model in provider.models:
            constraints = [getattr(p, "constraint", None) for p in model.prices] \
                if isinstance(model.prices, list) else []
            constraints += [v.constraint for v in model.price_variants or ()]
            for constraint in constraints:
                start = getattr(constraint, "start_date", None)
                if isinstance(start, date) and start <= today and (newest is None or start > newest):
                    newest = start
    return newest.isoformat() if newest else None


def describe_snapshot(snapshot: Any) -> PriceData:
    from importlib.metadata import version

    source = getattr(snapshot, "_loom_source", None) or "bundled"
    return PriceData(package_version=version("genai-prices"), source=source,
                     fetched_at=getattr(snapshot, "_loom_fetched_at", None),
                     newest_price_date=_newest_price_date(snapshot) if snapshot else None)


def load_fetched_snapshot(path: Path) -> Any | None:
    """The price data `loom prices --refresh` saved, or None when there is none (or it does not
    parse: then the bundled data is used, as if it were not there)."""
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return _snapshot_from_raw(document["providers"], source=str(path),
                                  fetched_at=document.get("fetched_at"))
    except Exception:  # noqa: BLE001 - a damaged copy must not stop a run
        return None


def _snapshot_from_raw(raw: Any, *, source: str, fetched_at: str | None) -> Any:
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import _providers_from_raw  # the parser genai-prices' updater uses

    snapshot = DataSnapshot(_providers_from_raw(raw), from_auto_update=False)
    snapshot._loom_source = source  # type: ignore[attr-defined]
    snapshot._loom_fetched_at = fetched_at  # type: ignore[attr-defined]
    return snapshot


def fetch_price_data(path: Path, *, url: str | None = None, timeout_s: float = 20.0) -> PriceData:
    """Download genai-prices' current data (its own update URL by default) and keep it at
    `path`, where `Pricing.from_config` finds it. Only ever called on request."""
    import httpx
    from genai_prices.update_prices import DEFAULT_UPDATE_URL

    response = httpx.get(url or DEFAULT_UPDATE_URL, timeout=timeout_s, follow_redirects=True)
    response.raise_for_status()
    raw = response.json()
    if not isinstance(raw, list):
        raise ValueError("the price data is not a list of providers")
    fetched_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    snapshot = _snapshot_from_raw(raw, source=str(path), fetched_at=fetched_at)  # it parses
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"fetched_at": fetched_at, "url": url or DEFAULT_UPDATE_URL,
                                     "providers": raw}), encoding="utf-8")
    temporary.replace(path)
    return describe_snapshot(snapshot)
