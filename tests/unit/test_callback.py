"""biz_opaque_callback_data: only this deployment's signed data names a row."""

from __future__ import annotations

import pytest

from sendonce.callback import sign, verify

CAMPAIGN = "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"


def test_callback_signed_data_verifies_to_campaign_and_row():
    assert verify("key-a", sign("key-a", CAMPAIGN, 42)) == (CAMPAIGN, 42)


@pytest.mark.parametrize(
    "data",
    [
        "42",  # a bare row id: what another tool (or this project's first version) sends
        sign("key-b", CAMPAIGN, 42),  # another deployment (staging, another stack on the same app)
        sign("key-a", CAMPAIGN, 42).replace(":42:", ":43:"),  # tampered row
        sign("key-a", CAMPAIGN, 42).replace(CAMPAIGN, "5d46271f-f3b4-4f5b-a2c7-6dbad447a845"),  # tampered campaign
        f"sendonce:1:{CAMPAIGN}:99999999999999999999:" + "0" * 32,  # beyond bigint
        f"sendonce:1:{CAMPAIGN}:9223372036854775808:" + "0" * 32,
        None,
        12,
        "",
        "x" * 10_000,
    ],
)
def test_callback_foreign_or_tampered_data_names_no_row(data):
    assert verify("key-a", data) is None
