"""`campaign watch` redraws the numbers until the campaign ends."""

from __future__ import annotations

import threading

from sendonce.cli import main
from tests.helpers import phone


def test_watch_follows_a_campaign_to_its_end(make_campaign, graph, pg_conn, event_source, capsys):
    # Given a campaign of 30 being sent while it is watched
    graph.latency = 0.02
    campaign_id = make_campaign(*(phone(i) for i in range(30)))
    sending = threading.Thread(target=event_source.run_until_empty, kwargs={"timeout": 60})
    sending.start()

    # When it is watched (not a terminal: one line per change)
    code = main(["campaign", "watch", campaign_id, "--interval", "0.2"])
    sending.join()

    # Then it returned once nothing was pending, the last line saying so, and the lines show progress
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[-1].startswith("running   [##############################] 30/30  sent 30")
    done = [int(line.split("] ")[1].split("/")[0]) for line in lines]
    assert done == sorted(done) and done[-1] == 30


def test_watch_refuses_a_bad_interval(pg_conn, capsys):
    assert main(["campaign", "watch", "4d46271f-f3b4-4f5b-a2c7-6dbad447a845", "--interval", "0"]) == 2
    assert "--interval must be from 0.2 to 60 seconds" in capsys.readouterr().err
