"""Classifying Graph API answers (docs/graph-errors.md) and building the template payload."""

from __future__ import annotations

import httpx
import pytest

from sendonce.callback import sign
from sendonce.errors import MalformedMessageError
from sendonce.models import ClaimedRow, Disposition, QueueMessage
from sendonce.whatsapp import read_response, template_payload

ROW = ClaimedRow(
    7, "4d46271f-f3b4-4f5b-a2c7-6dbad447a845", "919741771659", ("Asha",), "offer", "en_US", "1065",
    callback_data=sign("key", "4d46271f-f3b4-4f5b-a2c7-6dbad447a845", 7),
)


def _error(status: int, code: int) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": "m", "code": code, "error_data": {"details": "d"}}})


@pytest.mark.parametrize(
    ("status", "code", "disposition"),
    [
        (500, 131000, Disposition.RETRY),
        (429, 130429, Disposition.DEFER),
        (400, 131056, Disposition.DEFER),
        (400, 131049, Disposition.WAIT),
        (400, 130472, Disposition.FAILED),
        (400, 132016, Disposition.HALT),
        (400, 131048, Disposition.HALT),
        (400, 131026, Disposition.FAILED),
        (400, 131050, Disposition.FAILED),
        (401, 190, Disposition.HALT),
        (400, 132001, Disposition.HALT),
        (400, 999999, Disposition.FAILED),
        (503, 999999, Disposition.RETRY),
    ],
)
def test_read_response_classifies_by_error_code(status, code, disposition):
    result = read_response(_error(status, code))
    assert (result.disposition, result.code) == (disposition, code)
    assert "m (d)" in result.error


def test_read_response_success_returns_wamid():
    response = httpx.Response(200, json={"messages": [{"id": "wamid.X"}]})
    assert read_response(response).wamid == "wamid.X"


def test_read_response_success_without_wamid_is_ambiguous():
    assert read_response(httpx.Response(200, text="ok")).disposition is Disposition.AMBIGUOUS


def test_read_response_bare_gateway_error_is_retried():
    result = read_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert result.disposition is Disposition.RETRY and result.code is None


def test_template_payload_names_row_and_fills_body_parameters():
    payload = template_payload(ROW)
    assert payload["biz_opaque_callback_data"] == ROW.callback_data
    assert payload["to"] == "919741771659"
    assert payload["template"]["components"] == [{"type": "body", "parameters": [{"type": "text", "text": "Asha"}]}]


@pytest.mark.parametrize(
    "body",
    ["", "[]", '{"queue_id": "1"}', '{"queue_id": true, "campaign_id": "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"}',
     '{"queue_id": "-1", "campaign_id": "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"}',
     '{"queue_id": "0", "campaign_id": "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"}',
     # Beyond PostgreSQL's bigint: once these failed the whole batch's claim statement.
     '{"queue_id": "9223372036854775808", "campaign_id": "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"}',
     '{"queue_id": 99999999999999999999999, "campaign_id": "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"}',
     '{"queue_id": "\u0661", "campaign_id": "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"}',
     '{"queue_id": 1, "campaign_id": "4d46271f-f3b4-4f5b-a2c7-6dbad447a845", "enqueue_id": "' + "x" * 129 + '"}',
     '{"queue_id": 1, "campaign_id": "4d46271f-f3b4-4f5b-a2c7-6dbad447a845", "enqueue_id": ["a"]}'],
)
def test_queue_message_parse_rejects_malformed_bodies(body):
    with pytest.raises(MalformedMessageError):
        QueueMessage.parse(body, fallback_enqueue_id="m1")


def test_queue_message_parse_largest_bigint_is_accepted():
    body = '{"queue_id": "9223372036854775807", "campaign_id": "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"}'
    assert QueueMessage.parse(body, fallback_enqueue_id="m1").queue_id == 2**63 - 1


def test_queue_message_without_enqueue_id_is_keyed_by_sqs_message_id():
    message = QueueMessage.parse('{"queue_id": 5, "campaign_id": "4D46271F-F3B4-4F5B-A2C7-6DBAD447A845"}', "m1")
    assert (message.queue_id, message.campaign_id, message.enqueue_id) == (5, "4d46271f-f3b4-4f5b-a2c7-6dbad447a845", "m1")


def test_defer_seconds_pair_rate_backs_off_4_to_the_x_others_2_to_the_x():
    from sendonce.graph_errors import defer_seconds

    assert [defer_seconds(131056, attempt, 1) for attempt in (1, 2, 3, 4, 5, 6)] == [1, 4, 16, 64, 256, 900]
    assert [defer_seconds(130429, attempt, 1) for attempt in (1, 2, 3)] == [1, 2, 4]
    assert defer_seconds(130429, 3, 0) == 0
