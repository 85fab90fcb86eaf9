"""What a run cost, computed from its transcript's usage with a maintained price table.

Prices come from `genai-prices` (the table its maintainers keep current), never from a
list of our own. Each API response is priced on its own, by its model and its date:
input, output, cache reads, cache writes split into 5-minute and 1-hour, and the
long-context tier (a request over 200k input tokens) where the model has one, all
decided by the table. `model: "<synthetic>"` is made locally by the CLI and costs
nothing. Plain module: no Django, so the monitor and the wrapper side can call it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from genai_prices import extract_usage
from genai_prices.types import TieredPrices

log = logging.getLogger(__name__)

SYNTHETIC_MODEL = "<synthetic>"
PROVIDER = "anthropic"
MICRO = Decimal("0.000001")


@dataclass(frozen=True, slots=True)  # one per API response of a session is kept
class ResponseUsage:
    """The billable counts of one API response, as the transcript recorded them."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0  # all cache writes, 5m + 1h
    cache_write_5m_tokens: int | None = None  # None: the transcript gave no split
    cache_write_1h_tokens: int | None = None
    day: str = ""  # YYYY-MM-DD of the response: prices change over time

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
        )

    @classmethod
    def from_message(cls, model: str, usage: dict, timestamp: str = "") -> ResponseUsage:
        def count(value) -> int:
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            return int(value) if is_number else 0

        split = usage.get("cache_creation")
        five = one = None
        if isinstance(split, dict):
            five = count(split.get("ephemeral_5m_input_tokens"))
            one = count(split.get("ephemeral_1h_input_tokens"))
        return cls(
            model=model,
            input_tokens=count(usage.get("input_tokens")),
            output_tokens=count(usage.get("output_tokens")),
            cache_read_tokens=count(usage.get("cache_read_input_tokens")),
            cache_write_tokens=count(usage.get("cache_creation_input_tokens")),
            cache_write_5m_tokens=five,
            cache_write_1h_tokens=one,
            day=timestamp[:10] if len(timestamp) >= 10 else "",
        )


def price_response(response: ResponseUsage) -> Decimal | None:
    """USD for one API response; 0 for the CLI's synthetic messages; None if the table
    does not know the model."""
    if response.model == SYNTHETIC_MODEL:
        return Decimal(0)
    return _price(response)


def _when(day: str) -> datetime | None:
    try:
        return datetime.fromisoformat(day).replace(tzinfo=UTC) if day else None
    except ValueError:
        return None


def price_with_table(response: ResponseUsage) -> Decimal | None:
    """The price genai-prices computes for this one response (its own full path)."""
    usage: dict = {
        "input_tokens": response.input_tokens,
        "output_tokens": response.output_tokens,
        "cache_read_input_tokens": response.cache_read_tokens,
        "cache_creation_input_tokens": response.cache_write_tokens,
    }
    five, one = response.cache_write_5m_tokens, response.cache_write_1h_tokens
    if five is not None and one is not None and five + one == response.cache_write_tokens:
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": five,
            "ephemeral_1h_input_tokens": one,
        }
    try:
        extracted = extract_usage({"model": response.model, "usage": usage}, provider_id=PROVIDER)
        if extracted.model is None:
            return None
        return extracted.calc_price(genai_request_timestamp=_when(response.day)).total_price
    except (LookupError, ValueError) as exc:
        log.debug("no price for %s: %s", response.model, exc)
        return None


# Backfilling thousands of transcripts prices millions of responses. Within one model,
# day and price tier a price is linear in each token count, so the table is asked once
# per (model, day, tier) for its per-token rates, and each response is a dot product.
# tests/test_real_shapes.py checks this against price_with_table on varied responses.


@functools.lru_cache(maxsize=4096)
def _tier_starts(model: str, day: str) -> tuple[int, ...] | None:
    """The input-token thresholds of the model's tiered prices; None: model unknown."""
    try:
        extracted = extract_usage(
            {"model": model, "usage": {"input_tokens": 0, "output_tokens": 0}},
            provider_id=PROVIDER,
        )
    except (LookupError, ValueError):
        return None
    if extracted.model is None:
        return None
    prices = extracted.model.get_prices(_when(day) or datetime.now(tz=UTC))
    starts = {
        tier.start
        for value in vars(prices).values()
        if isinstance(value, TieredPrices)
        for tier in value.tiers
    }
    return tuple(sorted(starts))


def _probe(model: str, day: str, prompt: int, **counts: int) -> Decimal | None:
    five, one = counts.get("five", 0), counts.get("one", 0)
    return price_with_table(
        ResponseUsage(
            model=model,
            input_tokens=prompt,
            output_tokens=counts.get("output", 0),
            cache_read_tokens=counts.get("read", 0),
            cache_write_tokens=five + one,
            cache_write_5m_tokens=five,
            cache_write_1h_tokens=one,
            day=day,
        )
    )


@functools.lru_cache(maxsize=4096)
def _rates(model: str, day: str, tier: int) -> tuple[Decimal, ...] | None:
    """USD per token (input, output, cache read, cache write 5m, cache write 1h) in one
    tier: each measured by the table on a request whose input falls in that tier."""
    starts = _tier_starts(model, day) or ()
    size = starts[tier - 1] + 1 if tier else (min(1000, starts[0]) if starts else 1000)
    size = max(size, 1)
    base = _probe(model, day, size)
    read = _probe(model, day, 0, read=size)
    five = _probe(model, day, 0, five=size)
    one = _probe(model, day, 0, one=size)
    with_output = _probe(model, day, size, output=1000)
    if None in (base, read, five, one, with_output):
        return None
    return (
        base / size,
        (with_output - base) / 1000,
        read / size,
        five / size,
        one / size,
    )


def _price(response: ResponseUsage) -> Decimal | None:
    starts = _tier_starts(response.model, response.day)
    if starts is None:
        return None
    prompt = response.input_tokens + response.cache_read_tokens + response.cache_write_tokens
    tier = sum(1 for start in starts if prompt > start)
    rates = _rates(response.model, response.day, tier)
    if rates is None:
        return price_with_table(response)
    five = response.cache_write_5m_tokens
    one = response.cache_write_1h_tokens
    if five is None or one is None or five + one != response.cache_write_tokens:
        five, one = response.cache_write_tokens, 0  # no split recorded: the 5-minute price
    return (
        response.input_tokens * rates[0]
        + response.output_tokens * rates[1]
        + response.cache_read_tokens * rates[2]
        + five * rates[3]
        + one * rates[4]
    )


@dataclass
class CostTally:
    """The running price of a set of responses, kept right as a response's usage grows
    (the CLI repeats a response's usage on each content block, sometimes growing)."""

    total: Decimal = Decimal(0)
    unpriced: int = 0  # responses whose model the table does not know
    models_unpriced: set[str] | None = None

    def replace(self, old: ResponseUsage | None, new: ResponseUsage) -> None:
        if old is not None:
            self._apply(old, -1)
        self._apply(new, 1)

    def _apply(self, response: ResponseUsage, sign: int) -> None:
        price = price_response(response)
        if price is None:
            self.unpriced += sign
            if sign > 0:
                self.models_unpriced = (self.models_unpriced or set()) | {response.model}
        else:
            self.total += sign * price

    @property
    def cost_usd(self) -> Decimal | None:
        """The whole price, or None when any response could not be priced: a run we
        cannot price in full is unknown, never shown as cheaper than it was."""
        if self.unpriced:
            return None
        return self.total.quantize(MICRO)
