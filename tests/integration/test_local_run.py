"""`sendonce local run` and `local up` as a user runs them: the console script in a process of its own."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SENDONCE = str(Path(sys.executable).with_name("sendonce"))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """The run's TMPDIR: short, since PostgreSQL's Unix socket path in it must fit in 107 bytes (pytest's tmp_path
    under a parallel worker, /tmp/pytest-of-root/pytest-N/popen-gw1/<test name>/..., does not leave room)."""
    folder = Path(tempfile.mkdtemp(prefix="so-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _environ(tmp: Path, **extra: str) -> dict[str, str]:
    """A user's environment: nothing of the test run's (no AWS endpoints, no DATABASE_URL unless given)."""
    keep = ("PATH", "HOME", "LANG", "PYENV_VERSION", "VIRTUAL_ENV")
    environ = {k: v for k, v in os.environ.items() if k in keep}
    return {**environ, "TMPDIR": str(tmp), **extra}


def _session_processes(session: int) -> list[str]:
    """Processes still alive in a session: what a stopped run left behind."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(stat.parent.name)
    return found


def _processes_using(folder: Path) -> list[str]:
    """Processes whose command line names `folder` (an embedded PostgreSQL started by pg_ctl outlives its session)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(folder) in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found


def test_local_run_with_chaos_sends_each_recipient_once_and_counts_true(short_tmp, pg_server):
    # Given a fresh database (DATABASE_URL is used when set), as a user would point the run at one
    environ = _environ(short_tmp, DATABASE_URL=pg_server())

    # When `sendonce local run --contacts 500 --chaos --json` runs
    done = subprocess.run([SENDONCE, "local", "run", "--contacts", "500", "--chaos", "--json"], env=environ,
                          capture_output=True, text=True, timeout=400)

    # Then it proves exactly once: nobody twice, nothing pending, every row ended, the counters equal Meta's record
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({k: report[k] for k in ("elapsed_s", "faults", "kills", "accepted_histogram")}))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (report["duplicates"], report["pending"], report["counters_match"]) == (0, 0, True)
    assert report["sent"] + report["failed"] == report["recipients"] == 500
    assert report["accepted_sends"] == report["sent"]
    # and the faults it promises were injected
    faults = report["faults"]
    assert faults.get("graph drop", 0) > 0 and faults.get("graph 131056", 0) > 0 and faults.get("webhook retried", 0) > 0
    assert "sent " in done.stderr  # the progress line


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_local_run_stopped_mid_run_leaves_nothing_running_or_on_disk(short_tmp, how):
    # Given a run on embedded defaults (its own PostgreSQL), in a session of its own as a terminal would start it
    environ = _environ(short_tmp)
    run = subprocess.Popen([SENDONCE, "local", "run", "--contacts", "5000", "--chaos"], env=environ,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # When it is sending (a progress line with something sent), and the user stops it
        for line in run.stderr:
            if line.strip().startswith("sent ") and not line.strip().startswith("sent 0 "):
                break
        stopped_at = time.monotonic()
        if how == "ctrl-c":
            os.killpg(run.pid, signal.SIGINT)  # the terminal signals the whole foreground process group
        else:
            run.send_signal(signal.SIGTERM)
        run.wait(timeout=30)
        took = time.monotonic() - stopped_at
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    time.sleep(0.5)  # children reaped by init

    # Then it stopped within seconds, and nothing is left: no process of its session, no PostgreSQL, no files
    print(f"stopped in {took:.1f} s")
    assert run.returncode == 130 and took < 15
    assert _session_processes(run.pid) == []
    assert _processes_using(Path(environ["TMPDIR"])) == []
    assert list(Path(environ["TMPDIR"]).iterdir()) == []


def test_local_up_serves_every_command_and_the_api_until_stopped(short_tmp, tmp_path):
    # Given `sendonce local up`, and the export lines it printed
    environ = _environ(short_tmp)
    up = subprocess.Popen([SENDONCE, "local", "up"], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)
    try:
        exported = {}
        for line in up.stdout:
            if line.startswith("export "):
                name, _, value = line[len("export "):].strip().partition("=")
                exported[name] = shlex.split(value)[0]
            if line.startswith("# Ctrl-C"):
                break
        shell = {**environ, **exported}
        contacts = tmp_path / "contacts.csv"
        contacts.write_text("phone,param1\n+91 97417 71659,Asha\n919741771660,Ravi\n")

        # When a campaign is created with the CLI against it, and followed until it is completed
        created = subprocess.run(
            [SENDONCE, "campaign", "create", "--name", "by hand", "--template", "order_update", "--language", "en_US",
             "--phone-number-id", "106540352242922", "--contacts", str(contacts), "--json"],
            env=shell, capture_output=True, text=True, timeout=60,
        )
        assert created.returncode == 0, created.stderr
        campaign_id = json.loads(created.stdout)["campaign_id"]
        deadline = time.monotonic() + 60
        while True:
            status = json.loads(subprocess.run([SENDONCE, "campaign", "status", campaign_id, "--json"], env=shell,
                                               capture_output=True, text=True, timeout=30).stdout)
            if status["status"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(1)

        # Then the stack sent it, and the HTTP API answers for it
        assert (status["status"], status["sent"]) == ("completed", 2)
        import httpx

        listed = httpx.get(f"{exported['SENDONCE_API_URL']}/campaigns/{campaign_id}", timeout=10).json()
        assert listed["sent"] == 2
    finally:
        # and Ctrl-C stops it and leaves nothing
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=30)
    time.sleep(0.5)
    assert up.returncode == 130
    assert _session_processes(up.pid) == []
    assert list(Path(environ["TMPDIR"]).iterdir()) == []
