#!/usr/bin/python3
"""End-to-end tests of `volley send`: CSV -> embedded Redis -> render -> send ->
record -> report, against volley-sink (plain and in NetEase fault modes).
Prints TAP."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from vtest import SRCDIR, VOLLEY, Sink, check, make_campaign, read_report, run_tests, scaled


def send(campaign, *args, timeout=240):
    p = subprocess.run([VOLLEY, "send", campaign, "--no-progress"] + list(args),
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def test_example(tmp):
    d = os.path.join(tmp, "example")
    shutil.copytree(os.path.join(SRCDIR, "examples"), d,
                    ignore=shutil.ignore_patterns(".volley"))
    if not os.path.exists(os.path.join(d, "dkim", "rsa2025.key")):
        subprocess.run([os.path.join(SRCDIR, "scripts", "make-example-dkim")], check=True,
                       capture_output=True)
        shutil.copytree(os.path.join(SRCDIR, "examples", "dkim"), os.path.join(d, "dkim"),
                        dirs_exist_ok=True)
    sink = Sink(tmp)
    with open(os.path.join(d, "providers.json")) as f:
        provs = json.load(f)
    for p in provs:
        p["route"] = "smtp://" + sink.addr
    with open(os.path.join(d, "providers.json"), "w") as f:
        json.dump(provs, f)
    camp = os.path.join(d, "campaign.json")
    rc, out = send(camp)
    check("example campaign: send exits 0", rc == 0, out)
    state = os.path.join(d, ".volley", "spring-2025")
    report = os.path.join(state, "report.csv")
    check("report.csv written into the state directory", os.path.exists(report), out)
    rows = read_report(report) if os.path.exists(report) else []
    check("report has exactly the columns of the contract",
          rows and list(rows[0].keys()) == ["row", "email", "provider", "status", "attempts",
                                            "code", "enhanced_code", "response",
                                            "first_attempt_at", "last_attempt_at"],
          rows[:1])
    delivered = [r for r in rows if r["status"] == "delivered"]
    check("every example row delivered (20)", len(rows) == 20 and len(delivered) == 20,
          json.dumps([(r["row"], r["status"], r["response"]) for r in rows], ensure_ascii=False))
    rc2, out2 = send(camp)
    st = sink.stop()
    check("a second send resumes: exit 0", rc2 == 0, out2)
    check("nothing was sent twice: the sink accepted 20 messages", st["messages"] == 20,
          json.dumps(st))
    log = sink.log()
    rcpts = sorted(r for m in log for r in m["rcpts"])
    check("each delivered address accepted exactly once",
          len(rcpts) == len(set(rcpts)) == 20, rcpts)
    check("the summary is printed", "delivered" in out and "report:" in out, out)


def test_netease_faults(tmp):
    d = os.path.join(tmp, "faults")
    os.makedirs(d)
    # The sink answers as NetEase does past its limits: 421 HL:ICC past 5
    # connections, 450 MI:DMC past 20 messages on one, 451 MI:SFQ past 200
    # messages in any second, 550 for unknown users.
    sink = Sink(d, "--max-conn", "5", "--max-msgs-per-conn", "20", "--max-rate", "200",
                "--reject-rcpt", "^bad[0-9]+@")
    n, bad_every = scaled(5000), 50
    # Configured above the first two limits (volley must learn them) and at
    # NetEase's documented sending rate with a small burst, so that no second
    # passes 200. The built-in rule pauses a sender 15 minutes on MI:SFQ; a
    # rule of the user's own, checked first, shortens that for the test.
    camp = make_campaign(d, "faults", n, [{
        "name": "netease", "domains": ["163.com"], "route": "smtp://" + sink.addr,
        "max_connections": 8, "max_messages_per_connection": 50, "rate": "180/s",
        "burst": 10, "rules_base": "netease",
        "rules": [{"id": "test-mi-sfq", "code": "451", "text": "MI:SFQ", "action": "pause",
                   "scope": "sender", "until": "2s",
                   "why": "the test's sink counts per second, not per 15 minutes"}]}],
        bad_every=bad_every)
    rc, out = send(camp)
    st = sink.stop()
    check("fault campaign: send exits 0", rc == 0, out)
    rows = read_report(os.path.join(d, ".volley", "faults", "report.csv"))
    by = {}
    for r in rows:
        by.setdefault(r["status"], 0)
        by[r["status"]] += 1
    nbad = n // bad_every
    check("every row final: %d delivered, %d bounced" % (n - nbad, nbad),
          len(rows) == n and by.get("delivered") == n - nbad and by.get("bounced") == nbad,
          json.dumps(by))
    log = sink.log()
    rcpts = [r for m in log for r in m["rcpts"]]
    check("each delivered row accepted by the sink exactly once",
          len(rcpts) == len(set(rcpts)) == n - nbad, "%d accepted, %d unique"
          % (len(rcpts), len(set(rcpts))))
    rej = st["rejected"]
    check("the limits were learnt: 421 HL:ICC and 450 MI:DMC hit a bounded number of times",
          rej["max_conn"] < 60 and rej["max_msgs_per_conn"] < 120, json.dumps(rej))
    check("the shared rate kept every second under 200: 451 MI:SFQ hit at most a few times",
          rej["max_rate"] <= 5, json.dumps(rej))
    # What was learnt is shared through Redis (every worker and the next run
    # start from it), and status shows it.
    p = subprocess.run([VOLLEY, "status", camp, "--json"], capture_output=True, text=True,
                       timeout=60)
    learned = {}
    if p.returncode == 0:
        provs = {x["name"]: x for x in json.loads(p.stdout)["providers"]}
        learned = provs.get("netease", {}).get("learned") or {}
    # 450 MI:DMC always comes (50 configured, 20 allowed); 421 HL:ICC only if
    # the pool happened to open more than 5 connections at once. The ceiling is
    # lowered to 0.7 of the connections open (ratelimit/ctl.h: a sawtooth that
    # stays above 80% of the provider's limit), so it may stay one above 5 until
    # the next refusal; the refusals counted above bound how often that costs.
    check("the learnt ceilings are in Redis: messages per connection <= 20, and "
          "connections below the 8 configured if 421 HL:ICC came",
          0 < learned.get("messages_per_connection", 0) <= 20
          and (rej["max_conn"] == 0 or 0 < learned.get("connections", 0) < 8),
          "%s\nrejected: %s" % (p.stdout + p.stderr, json.dumps(rej)))
    bounced = [r for r in rows if r["status"] == "bounced"]
    check("bounces carry the reply (550 5.1.1 Invalid User)",
          all(r["code"] == "550" and "Invalid User" in r["response"] for r in bounced),
          bounced[:2])


def test_retries_keep_their_history(tmp):
    """Rows deferred by a 451 are retried on their own; each retry starts
    from the row's result so far (scheduler/keys.h, {c:ID}:retry), so a row
    tried three times reports 3 attempts and the time of its first."""
    d = os.path.join(tmp, "retries")
    os.makedirs(d)
    sink = Sink(d, "--random-4xx", "0.1", "--seed", "7")
    n = 300
    camp = make_campaign(d, "retries", n, [{
        "name": "flaky", "domains": ["163.com"], "route": "smtp://" + sink.addr,
        "max_connections": 4}])
    rc, out = send(camp, "--retry-base-ms", "50")
    st = sink.stop()
    check("retries: send exits 0", rc == 0, out)
    rows = read_report(os.path.join(d, ".volley", "retries", "report.csv"))
    check("retries: every row delivered in the end",
          len(rows) == n and all(r["status"] == "delivered" for r in rows),
          json.dumps([r for r in rows if r["status"] != "delivered"][:3]))
    again = [r for r in rows if int(r["attempts"]) > 1]
    # Every 451 the sink gave cost one row one attempt (one recipient a
    # message), and every delivery one more.
    tries = sum(int(r["attempts"]) for r in rows)
    check("retries: the attempts add up to the sink's deliveries and 451s "
          "(%d rows tried again)" % len(again),
          len(again) > 10 and tries == st["messages"] + st["rejected"]["random_4xx"],
          "%d attempts; sink %s" % (tries, json.dumps(st)))
    check("retries: a row tried again keeps the time of its first attempt",
          all(r["first_attempt_at"] < r["last_attempt_at"] for r in again),
          json.dumps(again[:3]))


def test_trial_then_full_send(tmp):
    """send --limit 40 (a trial) and then send of the whole campaign: the
    second finishes, every row once. The trial cut its last batch at row 40;
    the full run must not add rows 1-40 again under a batch 1-64 (it did, and
    then waited for 140 rows of 100)."""
    d = os.path.join(tmp, "trial")
    os.makedirs(d)
    sink = Sink(d)
    n = 100
    camp = make_campaign(d, "trial", n, [{
        "name": "p", "domains": ["*"], "route": "smtp://" + sink.addr, "max_connections": 4}])
    rc, out = send(camp, "--limit", "40")
    check("trial: send --limit 40 exits 0", rc == 0, out)
    try:
        rc, out = send(camp, timeout=60)
    except subprocess.TimeoutExpired:
        rc, out = -1, "the full send did not finish"
    st = sink.stop()
    check("trial: the full send exits 0", rc == 0, out)
    rows = read_report(os.path.join(d, ".volley", "trial", "report.csv"))
    check("trial: %d rows, all delivered, the sink took each once" % n,
          len(rows) == n and all(r["status"] == "delivered" for r in rows) and
          st["messages"] == n, "%d rows; sink %s" % (len(rows), json.dumps(st)))


def test_sink_started_late(tmp):
    """A send started before its server listens: 20 connections refused at
    once are one failed round, not twenty failures, so the route backs off
    for a second rather than being suspended for five minutes, and the send
    finishes soon after the server comes up, every row once."""
    d = os.path.join(tmp, "late")
    os.makedirs(d)
    with socket.socket() as s:  # a free port, nobody listening on it yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n = 200
    camp = make_campaign(d, "late", n, [{
        "name": "p", "domains": ["*"], "route": "smtp://127.0.0.1:%d" % port,
        "max_connections": 20}])
    p = subprocess.Popen([VOLLEY, "send", camp, "--no-progress"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    time.sleep(2.0)
    sink = Sink(d, listen="127.0.0.1:%d" % port)
    try:
        out, rc = p.communicate(timeout=90)[0], p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, rc = p.communicate()[0] + "\n(still sending 90 s later)", -1
    st = sink.stop()
    check("late server: the send finishes within 90 s, exit 0", rc == 0, out)
    rows = read_report(os.path.join(d, ".volley", "late", "report.csv")) if rc == 0 else []
    check("late server: %d rows delivered, the sink took each once" % n,
          len(rows) == n and all(r["status"] == "delivered" for r in rows) and
          st["messages"] == n, "%d rows; sink %s" % (len(rows), json.dumps(st)))


def test_renamed_provider(tmp):
    """Rows queued for a provider that the providers file then renames: the
    next send stops at once with exit 78 and names the provider (it waited
    for ever), the rows stay queued, and with the name put back a send
    delivers them, each once."""
    d = os.path.join(tmp, "renamed")
    os.makedirs(d)
    sink = Sink(d)
    n = 200
    provs = [{"name": "alpha", "domains": ["*"], "route": "smtp://" + sink.addr,
              "max_connections": 2, "rate": "50/s"}]
    camp = make_campaign(d, "renamed", n, provs)
    p = subprocess.Popen([VOLLEY, "send", camp, "--no-progress"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    with open(os.path.join(d, "providers.json"), "w") as f:
        json.dump([dict(provs[0], name="beta")], f)
    rc, out = send(camp, timeout=60)
    check("renamed: send exits 78 and names the provider the rows wait for",
          rc == 78 and '"alpha"' in out and "providers file" in out, out)
    with open(os.path.join(d, "providers.json"), "w") as f:
        json.dump(provs, f)
    rc, out = send(camp, timeout=120)
    st = sink.stop()
    rcpts = [r for m in sink.log() for r in m["rcpts"]]
    check("renamed: with the name put back the send finishes, every row once",
          rc == 0 and len(set(rcpts)) == n and len(rcpts) - len(set(rcpts)) <= 2 * 4,
          out + json.dumps(st))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        run_tests([test_example, test_netease_faults, test_retries_keep_their_history,
                   test_trial_then_full_send, test_sink_started_late,
                   test_renamed_provider], tmp)
