"""Cost: an estimate before sending and the actual cost from Meta's pricing reports, priced by a rates file.

Meta charges per delivered template message, by the recipient's market (its country, found here from the number's
country calling code) and the template's category (docs/cost.md). The rates file (META_RATES_FILE, else the
sample shipped in this package, `meta_rates.json`, with its date) maps markets to their calling codes and rates;
the operator keeps it current. The estimate prices a campaign's rows by its template's category; the actual cost
prices the rows Meta reported billable (the `pricing` object of its status webhooks) and that were delivered.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path

import psycopg
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from sendonce.errors import ConfigError
from sendonce.repository import costs as repository

SAMPLE = Path(__file__).with_name("meta_rates.json")
CATEGORIES = ("marketing", "utility", "authentication")
# A template whose category is not known (not checked) is priced as marketing, the dearest.
ASSUMED_CATEGORY = "marketing"
MAX_RATES_BYTES = 1024 * 1024
CENT = Decimal("0.0001")
# Rows are counted by the first three digits of their E.164 number: calling codes are 1 to 3 digits and no code
# is the prefix of another, so three digits always name one.
PREFIX_DIGITS = 3


@dataclass(frozen=True, eq=False)  # hashed by identity: markets are cached per Rates
class Rates:
    """A rates file: per market, its calling codes and a rate per category, in one currency, as of a date."""

    currency: str
    effective: date
    source: str
    file: str
    markets: dict[str, dict[str, Decimal]]
    codes: dict[int, str]
    default: str

    def market(self, phone: str) -> str:
        """The market of an E.164 number (digits, no '+'), by its calling code; the default market otherwise."""
        return _market(self, phone[:PREFIX_DIGITS])

    def price(self, market: str, category: str | None) -> Decimal | None:
        """The rate of one message of `category` in `market`; None when the file has no such rate."""
        return self.markets[market].get((category or "").lower())

    def as_json(self) -> dict:
        return {"currency": self.currency, "effective": self.effective.isoformat(), "source": self.source,
                "file": self.file}


@lru_cache(maxsize=4096)
def _market(rates: Rates, prefix: str) -> str:
    for length in range(1, len(prefix) + 1):
        head = prefix[:length]
        if head.isdigit() and int(head) in COUNTRY_CODE_TO_REGION_CODE:
            return rates.codes.get(int(head), rates.default)
    return rates.default


def rates_file() -> Path:
    """META_RATES_FILE, else the sample shipped with sendonce."""
    configured = os.environ.get("META_RATES_FILE", "").strip()
    return Path(configured) if configured else SAMPLE


def load_rates(path: Path | None = None) -> Rates:
    """Read and check a rates file (META_RATES_FILE, else the sample); cached while the file is unchanged.

    Raises
    ------
    ConfigError
        The file cannot be read or is not a rates file; the message says what is wrong and where.
    """
    path = path or rates_file()
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"rates file {path}: {exc.strerror or exc}") from None
    if stat.st_size > MAX_RATES_BYTES:
        raise ConfigError(f"rates file {path} is over {MAX_RATES_BYTES // 1024} KB")
    return _load(str(path), stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _load(path: str, _mtime: int) -> Rates:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"), parse_float=Decimal, parse_int=Decimal)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"rates file {path} is not JSON: {exc}") from None
    return parse_rates(data, path)


def parse_rates(data: object, file: str) -> Rates:
    """Check a rates document (docs/cost.md) and return it as `Rates`; `ConfigError` says what is wrong."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"rates file {file}: {problem}")

    if not isinstance(data, dict) or not isinstance(data.get("markets"), dict) or not data["markets"]:
        raise fail('expected {"currency", "effective", "source", "default_market", "markets": {name: {...}}}')
    currency, source = data.get("currency"), data.get("source", "")
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
        raise fail("currency must be an ISO 4217 code such as USD")
    try:
        effective = date.fromisoformat(str(data.get("effective")))
    except ValueError:
        raise fail("effective must be the date of the rates, YYYY-MM-DD") from None
    default = data.get("default_market")
    if default not in data["markets"]:
        raise fail("default_market must name one of the markets (the rates of every other country)")
    markets: dict[str, dict[str, Decimal]] = {}
    codes: dict[int, str] = {}
    for name, market in data["markets"].items():
        if not isinstance(market, dict):
            raise fail(f"market {name!r} must be an object")
        rates = {}
        for category in CATEGORIES:
            rate = market.get(category)
            if rate is None:
                continue
            if not isinstance(rate, Decimal) or not rate.is_finite() or rate < 0:
                raise fail(f"market {name!r}: {category} must be a rate per message, a number from 0")
            rates[category] = rate
        if not rates:
            raise fail(f"market {name!r} has no rate ({', '.join(CATEGORIES)})")
        markets[name] = rates
        for code in market.get("calling_codes", []):
            if not (isinstance(code, str) and code.isdigit() and int(code) in COUNTRY_CODE_TO_REGION_CODE):
                raise fail(f"market {name!r}: {code!r} is not a country calling code (\"55\" for Brazil)")
            if int(code) in codes:
                raise fail(f"calling code {code} is in two markets: {codes[int(code)]!r} and {name!r}")
            codes[int(code)] = name
    return Rates(currency.upper(), effective, str(source)[:500], file, markets, codes, default)


def money(amount: Decimal) -> float:
    """An amount for JSON: rounded to 1/100 of a cent."""
    return float(amount.quantize(CENT, rounding=ROUND_HALF_UP))


def estimate(rates: Rates, prefixes: Counter[str], category: str | None) -> dict:
    """The cost of sending every counted message (by the first digits of its number) in `category`.

    A template of unknown category is priced as marketing (`assumed`), the dearest; a category the rates file
    has no rate for in a market leaves those messages `unpriced`.
    """
    assumed = not category or category.lower() not in CATEGORIES
    category = ASSUMED_CATEGORY if assumed else category.lower()
    by_market: Counter[str] = Counter()
    for prefix, n in prefixes.items():
        by_market[_market(rates, prefix)] += n
    total, unpriced, markets = Decimal(0), 0, []
    for market, n in sorted(by_market.items(), key=lambda item: -item[1]):
        rate = rates.price(market, category)
        if rate is None:
            unpriced += n
        else:
            total += rate * n
        markets.append({"market": market, "messages": n, "rate": None if rate is None else float(rate),
                        "amount": None if rate is None else money(rate * n)})
    return {"category": category, "category_assumed": assumed, "messages": sum(by_market.values()),
            "amount": money(total), "unpriced": unpriced, "by_market": markets}


def actual(rates: Rates, charged: Iterable[tuple[str, str | None, int]]) -> dict:
    """The cost of the messages Meta reported billable and delivered: `charged` holds (prefix, category, count)."""
    total, unpriced, count = Decimal(0), 0, 0
    by_category: Counter[str] = Counter()
    amounts: dict[str, Decimal] = {}
    for prefix, category, n in charged:
        category = (category or "unknown").lower()
        count += n
        by_category[category] += n
        rate = rates.price(_market(rates, prefix), category)
        if rate is None:
            unpriced += n
            continue
        total += rate * n
        amounts[category] = amounts.get(category, Decimal(0)) + rate * n
    return {"messages": count, "amount": money(total), "unpriced": unpriced,
            "by_category": [{"category": c, "messages": n, "amount": money(amounts.get(c, Decimal(0)))}
                            for c, n in sorted(by_category.items())]}


def row_cost(rates: Rates, phone: str, category: str | None, charged: bool) -> Decimal | None:
    """One row's actual cost (the export's `cost`): its rate when charged, else None."""
    return rates.price(rates.market(phone), category) if charged else None


def estimate_contacts(phones: Iterable[str], category: str | None) -> dict:
    """The estimate of a contact list before anything is written (create, --dry-run): as `campaign_cost`,
    without `actual`."""
    try:
        rates = load_rates()
    except ConfigError as exc:
        return {"error": str(exc)}
    planned = Counter(phone[:PREFIX_DIGITS] for phone in phones)
    return {"currency": rates.currency, "rates": rates.as_json(), "estimate": estimate(rates, planned, category)}


def campaign_cost(conn: psycopg.Connection, campaign_id: str, category: str | None) -> dict:
    """A campaign's estimate (its planned rows in its template's `category`) and actual cost, from one query.

    A rates file that cannot be used is reported as {"error": ...}: the rest of the status still answers.
    """
    try:
        rates = load_rates()
    except ConfigError as exc:
        return {"error": str(exc)}
    found = repository.cost_rows(conn, campaign_id)
    planned: Counter[str] = Counter()
    for r in found:
        planned[r["prefix"]] += r["planned"]
    return {
        "currency": rates.currency,
        "rates": rates.as_json(),
        "estimate": estimate(rates, planned, category),
        "actual": {
            **actual(rates, ((r["prefix"], r["category"], r["charged"]) for r in found if r["charged"])),
            "free": sum(r["free"] for r in found),
            "unreported": sum(r["unreported"] for r in found),
        },
    }
