"""Cost: the estimate at create (markets by calling code x the template's category x the rates file) and the actual
cost from the pricing Meta reports in its status webhooks, in status and export, agreeing with each other."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest
from sendonce import control, cost
from sendonce.cli import main
from sendonce.config import get_settings
from sendonce.errors import ConfigError
from sendonce.local.fake_graph import WABA_ID
from sendonce.local.gateway import stack_gateways

from tests.helpers import WEBHOOK_SECRET, phone, post_statuses, queue_rows, status_update

NUMBER = "106540352242922"
UK, BRAZIL = "447911123456", "5511987654321"
# Round rates, so every expected amount can be worked out by hand; Brazil falls to the default market.
RATES = {
    "currency": "USD", "effective": "2026-10-01", "source": "test", "default_market": "Other",
    "markets": {
        "India": {"calling_codes": ["91"], "marketing": 0.1, "utility": 0.01},
        "United Kingdom": {"calling_codes": ["44"], "marketing": 0.2, "utility": 0.02},
        "Other": {"marketing": 0.3, "utility": 0.03},
    },
}


@pytest.fixture
def rates(tmp_path, monkeypatch) -> dict:
    path = tmp_path / "rates.json"
    path.write_text(json.dumps(RATES))
    monkeypatch.setenv("META_RATES_FILE", str(path))
    return RATES


@pytest.fixture
def waba(graph, monkeypatch) -> str:
    monkeypatch.setenv("WHATSAPP_BUSINESS_ACCOUNT_ID", WABA_ID)
    get_settings.cache_clear()
    return WABA_ID


def _create(csv_path, *extra: str) -> list[str]:
    return ["campaign", "create", "--name", "Renewals", "--template", "order_update", "--language", "en_US",
            "--phone-number-id", NUMBER, "--contacts", str(csv_path), *extra]


def test_estimate_at_create_prices_each_market_in_the_templates_category(rates, waba, graph, pg_conn, aws,
                                                                        contacts_csv, capsys):
    # Given a utility template, and contacts in India (3), the UK (2) and Brazil (1, the default market)
    graph.add_template("order_update", "en_US", body="Hello {{1}}", category="UTILITY")
    numbers = [phone(1), phone(2), phone(3), UK, "447911123457", BRAZIL]
    csv_path = contacts_csv(["phone", "param1"], *([f"+{n}", "x"] for n in numbers))

    # When it is checked with --dry-run, then created
    assert main(_create(csv_path, "--dry-run")) == 0
    dry = capsys.readouterr().out
    assert main(_create(csv_path, "--json")) == 0
    created = json.loads(capsys.readouterr().out)

    # Then the estimate is 3 x 0.01 + 2 x 0.02 + 1 x 0.03, by market, with the rates' date, before any send
    estimate = created["cost"]["estimate"]
    assert (estimate["category"], estimate["category_assumed"], estimate["messages"], estimate["amount"]) == (
        "utility", False, 6, 0.1)
    assert [(m["market"], m["messages"], m["amount"]) for m in estimate["by_market"]] == [
        ("India", 3, 0.03), ("United Kingdom", 2, 0.04), ("Other", 1, 0.03)]
    assert created["cost"]["rates"]["effective"] == "2026-10-01"
    assert "cost: estimate USD 0.10 for 6 messages (utility; Meta's rates of 2026-10-01)" in dry
    # And status gives the same estimate, and no actual cost yet
    status = control.status(pg_conn, created["campaign_id"])
    assert status["cost"]["estimate"] == estimate
    assert (status["cost"]["actual"]["messages"], status["cost"]["actual"]["amount"]) == (0, 0.0)


def test_estimate_without_a_known_category_is_priced_as_marketing_and_said(rates, graph, pg_conn, aws, contacts_csv,
                                                                          capsys):
    csv_path = contacts_csv(["phone", "param1"], [phone(1), "x"], [UK, "y"])
    assert main(_create(csv_path)) == 0
    out = capsys.readouterr().out
    assert "cost: estimate USD 0.30 for 2 messages (marketing, category unknown: priced as marketing;" in out


def test_actual_cost_from_metas_pricing_webhooks_in_status_and_export(rates, waba, graph, pg_conn, event_source,
                                                                     monkeypatch, tmp_path, capsys):
    # Given a utility template, Meta posting its statuses (with pricing) to the stack's webhook under chaos
    # (held back, duplicated, retried), fates of every kind and two answers lost after Meta accepted the send
    monkeypatch.setenv("WHATSAPP_APP_SECRET", WEBHOOK_SECRET)
    graph.add_template("order_update", "en_US", body="Hello {{1}}", category="UTILITY")
    numbers = [phone(i) for i in range(1, 7)] + [UK, BRAZIL]
    fates = ["read", "read-direct", "delivered", "failed:131026", "sent", "read", "delivered", "read"]
    for number, fate in zip(numbers, fates, strict=True):
        graph.plan_statuses(number, fate)
    graph.plan(numbers[5], "drop")
    graph.plan(UK, "drop")
    with stack_gateways(handlers={"campaigns_api": None})["WebhookHttpApi"] as webhook_api:
        graph.post_statuses_to(webhook_api.url + "/webhook", WEBHOOK_SECRET, chaos=0.5, seed=3)
        csv_path = tmp_path / "c.csv"
        csv_path.write_text("phone,param1\n" + "".join(f"+{n},x\n" for n in numbers))
        assert main(_create(csv_path, "--json")) == 0
        campaign_id = json.loads(capsys.readouterr().out)["campaign_id"]
        event_source.run_until_empty(timeout=60)
        assert graph.wait_statuses_delivered(timeout=60)

    # Then the messages Meta delivered (or read) are charged at the utility rate of their market: India 3 of 6
    # (delivered, read, read direct; the lost-answer read one too: 4), the UK and Brazil ones
    rows = queue_rows(pg_conn, campaign_id)
    charged = [n for n in numbers if rows[n]["delivery_status"] in ("delivered", "read")]
    assert sorted(charged) == sorted([phone(1), phone(2), phone(3), phone(6), UK, BRAZIL])
    actual = control.status(pg_conn, campaign_id)["cost"]["actual"]
    assert (actual["messages"], actual["amount"], actual["unpriced"], actual["free"], actual["unreported"]) == (
        6, 0.09, 0, 0, 0)  # 4 x 0.01 + 0.02 + 0.03
    assert actual["by_category"] == [{"category": "utility", "messages": 6, "amount": 0.09}]
    # The sent-only and failed rows are not charged (Meta charges delivery), though their `sent` said billable
    for number in (phone(4), phone(5)):
        assert (rows[number]["billable"], rows[number]["pricing_category"]) == (True, "utility")
    assert rows[phone(4)]["delivery_status"] == "failed" and rows[phone(5)]["delivery_status"] is None

    # And the export's cost column adds up to the status' actual cost, row by row
    assert main(["campaign", "export", campaign_id]) == 0
    exported = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sum(Decimal(r["cost"]) for r in exported if r["cost"]) == Decimal("0.09")
    assert {r["phone"][1:] for r in exported if r["cost"]} == set(charged)
    assert {r["phone"][1:]: r["cost"] for r in exported}[UK] == "0.02"
    assert graph.accepted == dict.fromkeys(numbers, 1)


def test_free_and_unreported_deliveries_are_not_charged(rates, make_campaign, graph, pg_conn, event_source,
                                                         monkeypatch):
    monkeypatch.setenv("WHATSAPP_APP_SECRET", WEBHOOK_SECRET)
    numbers = [phone(i) for i in range(1, 6)]
    campaign_id = make_campaign(*numbers)
    event_source.run_until_empty(timeout=60)
    wamid = {n: r["whatsapp_message_id"] for n, r in queue_rows(pg_conn, campaign_id).items()}
    post_statuses([
        # billable dropped (newer Graph versions): a regular type is billable, a free one is not
        status_update(wamid[phone(1)], "delivered", 1, to=phone(1), pricing={"pricing_model": "PMP", "type": "regular",
                                                                             "category": "marketing"}),
        status_update(wamid[phone(2)], "delivered", 2, to=phone(2),
                      pricing={"pricing_model": "PMP", "type": "free_customer_service", "category": "service"}),
        # delivered without a pricing object; a malformed one; a later read that now says not billable
        status_update(wamid[phone(3)], "delivered", 3, to=phone(3)),
        status_update(wamid[phone(4)], "delivered", 4, to=phone(4), pricing={"billable": "yes", "category": 7}),
        status_update(wamid[phone(5)], "delivered", 5, to=phone(5), pricing={"billable": True, "category": "marketing"}),
        status_update(wamid[phone(5)], "read", 6, to=phone(5), pricing={"billable": False, "category": "marketing",
                                                                         "type": "free_entry_point"}),
    ])

    actual = control.status(pg_conn, campaign_id)["cost"]["actual"]
    assert (actual["messages"], actual["amount"], actual["free"], actual["unreported"]) == (1, 0.1, 2, 2)
    stored = pg_conn.execute(
        "SELECT pricing_category, pricing_type, billable FROM message_statuses WHERE whatsapp_message_id = %s",
        (wamid[phone(2)],)).fetchone()
    assert stored == ("service", "free_customer_service", False)


def test_a_broken_rates_file_is_named_and_status_still_answers(rates, make_campaign, graph, pg_conn, tmp_path,
                                                               monkeypatch):
    campaign_id = make_campaign(phone(1))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**RATES, "markets": {**RATES["markets"], "Also UK": {"calling_codes": ["44"],
                                                                                      "marketing": 1}}}))
    monkeypatch.setenv("META_RATES_FILE", str(broken))

    status = control.status(pg_conn, campaign_id)

    assert status["cost"] == {"error": f"rates file {broken}: calling code 44 is in two markets: "
                                       "'United Kingdom' and 'Also UK'"}
    assert status["recipients"] == 1


@pytest.mark.parametrize(("change", "problem"), [
    ({"currency": "dollars"}, "currency must be an ISO 4217 code"),
    ({"effective": "soon"}, "effective must be the date of the rates"),
    ({"default_market": "Mars"}, "default_market must name one of the markets"),
    ({"markets": {"Other": {"marketing": -1}}}, "market 'Other': marketing must be a rate per message"),
    ({"markets": {"Other": {"calling_codes": ["999"], "marketing": 1}}}, "'999' is not a country calling code"),
    ({"markets": {"Other": {"calling_codes": [], "service": 1}}}, "market 'Other' has no rate"),
])
def test_rates_file_problems_are_named(change, problem):
    data = json.loads(json.dumps({**RATES, **change}), parse_float=Decimal, parse_int=Decimal)
    with pytest.raises(ConfigError, match=problem):
        cost.parse_rates(data, "rates.json")


def test_the_shipped_sample_is_a_valid_rates_file_with_its_date():
    rates = cost.load_rates(cost.SAMPLE)
    assert rates.currency == "USD" and rates.effective.year >= 2025
    assert rates.market("5511987654321") == "Brazil" and rates.market("14155550100") == "North America"
    assert rates.market("6799912345") == rates.default == "Other"
