#!/usr/bin/python3
"""Adaptive sending against servers with limits the providers file does not
state (issue 16), judged as a provider would judge volley: deferrals and
duplicates counted at the sink, not only final states.

- a sliding-window rate far below the configured one, generic rules, a generic
  "451 4.7.1 Rate limited" text: few deferrals, and a steady rate near the
  hidden one;
- a configured rate under the server's: no refusal at all;
- a server that refuses MAIL after 30 messages on a connection (450, generic
  rules, no cap configured): the cap is learned, connections are renewed;
- three workers on one Redis share what they learn.
Prints TAP."""

import json
import os
import subprocess
import tempfile
import time

from vtest import SANITIZED, VOLLEY, Sink, check, make_campaign, read_report, run_tests


def send(camp, timeout=300):
    p = subprocess.run([VOLLEY, "send", camp, "--no-progress", "--retry-base-ms", "200"],
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def refusals(st):
    return sum(st.get("rejected", {}).values())


def steady_rate(log, skip_s=3.0):
    """Messages a second the sink accepted after the first skip_s seconds (the
    time the controller is given to find the limit) until 95% of them were: the
    last few are the refused rows coming back after their retry backoff (a
    minute by default), which says nothing of the sending rate."""
    ts = sorted(m["t"] for m in log)
    if len(ts) < 10:
        return 0.0
    t0 = ts[0] + skip_s
    t1 = ts[int(len(ts) * 0.95) - 1]
    rest = [t for t in ts if t0 <= t <= t1]
    if len(rest) < 2 or rest[-1] <= rest[0]:
        return 0.0
    return (len(rest) - 1) / (rest[-1] - rest[0])


def max_in_window(log, window=1.0):
    ts = sorted(m["t"] for m in log)
    best, j = 0, 0
    for i, t in enumerate(ts):
        while ts[j] < t - window + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


def finished(d, cid, n):
    path = os.path.join(d, ".volley", cid, "report.csv")
    rows = read_report(path) if os.path.exists(path) else []
    return rows, len(rows) == n and all(r["status"] == "delivered" for r in rows)


def test_hidden_rate(tmp):
    hidden = 400 if not SANITIZED else 150
    n = 5000 if not SANITIZED else 1500
    d = os.path.join(tmp, "rate")
    sink = Sink(tmp, "--rate-limit", "%d/s" % hidden, name="rate")
    camp = make_campaign(d, "rate", n, [{
        "name": "p", "domains": ["*"], "route": "smtp://" + sink.addr, "rules": "generic",
        "max_connections": 8, "rate": "4000/s"}])
    rc, out = send(camp)
    st = sink.stop()
    log = sink.log()
    rows, ok = finished(d, "rate", n)
    check("hidden rate %d/s, configured 4000/s: exit 0, every row delivered" % hidden,
          rc == 0 and ok, out[-2000:])
    ref = refusals(st)
    check("hidden rate: deferrals at most 5%% of rows (%d of %d)" % (ref, n),
          ref <= n * 0.05 or SANITIZED, json.dumps(st))
    rate = steady_rate(log)
    check("hidden rate: steady rate %.0f/s at least 80%% of the hidden %d/s" % (rate, hidden),
          rate >= 0.8 * hidden or SANITIZED, "%.1f" % rate)
    dup = st.get("duplicates", {}).get("row", 0)
    check("hidden rate: no row accepted twice (%d)" % dup, dup == 0, json.dumps(st))


def test_configured_under_hidden(tmp):
    n = 3000 if not SANITIZED else 800
    d = os.path.join(tmp, "under")
    sink = Sink(tmp, "--rate-limit", "300/s", name="under")
    camp = make_campaign(d, "under", n, [{
        "name": "p", "domains": ["*"], "route": "smtp://" + sink.addr, "rules": "netease",
        "max_connections": 8, "rate": "250/s"}])
    rc, out = send(camp)
    st = sink.stop()
    log = sink.log()
    rows, ok = finished(d, "under", n)
    check("250/s against a 300-per-second server: exit 0, every row delivered",
          rc == 0 and ok, out[-2000:])
    # The GCRA bounds the tokens taken (250 + burst 12 in any second: test_limits.c);
    # what the server sees adds the jitter between a token and its MAIL, so it is
    # judged against the server's own limit.
    check("250/s against 300/s: not one refusal (%d), under 300 in every second (at most %d)"
          % (refusals(st), max_in_window(log)),
          refusals(st) == 0 and max_in_window(log) < 300, json.dumps(st))


def test_per_connection_cap(tmp):
    n = 1500 if not SANITIZED else 600
    d = os.path.join(tmp, "cap")
    sink = Sink(tmp, "--max-msgs-per-conn", "30", "--max-msgs-per-conn-reply",
                "450 4.7.0 too many messages on this connection", name="cap")
    camp = make_campaign(d, "cap", n, [{
        "name": "p", "domains": ["*"], "route": "smtp://" + sink.addr, "rules": "generic",
        "max_connections": 4}])
    t0 = time.monotonic()
    rc, out = send(camp, timeout=120)
    secs = time.monotonic() - t0
    st = sink.stop()
    rows, ok = finished(d, "cap", n)
    check("30 messages a connection, no cap configured: exit 0, every row delivered (%.1f s)"
          % secs, rc == 0 and ok, out[-2000:])
    ref = refusals(st)
    check("per-connection cap: deferrals at most 5%% of rows (%d of %d)" % (ref, n),
          ref <= n * 0.05, json.dumps(st))
    check("per-connection cap: connections renewed (%d opened)" % st.get("connections", 0),
          st.get("connections", 0) >= n // 30, json.dumps(st))


def test_three_workers_share(tmp):
    """Three workers on one Redis against one hidden rate: their sum stays within
    the bounds one worker keeps."""
    import test_workers as tw
    hidden = 300 if not SANITIZED else 120
    n = 4000 if not SANITIZED else 1200
    d, sock, url, redis = tw.private_redis(tmp, "share")
    sink = Sink(d, "--rate-limit", "%d/s" % hidden, name="share")
    camp = make_campaign(d, "share", n, [{
        "name": "p", "domains": ["*"], "route": "smtp://" + sink.addr, "rules": "generic",
        "max_connections": 9, "rate": "3000/s"}])
    r = subprocess.run([VOLLEY, "enqueue", camp, "--redis", url], capture_output=True, text=True)
    check("share: enqueue exit 0", r.returncode == 0, r.stdout + r.stderr)
    ws = [subprocess.Popen([VOLLEY, "worker", "--redis", url, "--retry-base-ms", "200"],
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True) for _ in range(3)]
    deadline = time.time() + 120
    counts = {}
    while time.time() < deadline:
        counts = tw.status_counts(url, "share")
        if int(counts.get("delivered", 0)) >= n:
            break
        time.sleep(0.2)
    for w in ws:
        w.terminate()
    for w in ws:
        w.communicate(timeout=30)
    st = sink.stop()
    log = sink.log()
    check("share: three workers deliver all %d rows" % n,
          int(counts.get("delivered", 0)) == n, json.dumps(counts))
    ref = refusals(st)
    # Under the sanitizers every reaction comes late (several times slower), so the
    # share of deferrals is not judged there, as the rates are not.
    check("share: deferrals at most 5%% of rows (%d of %d)" % (ref, n),
          ref <= n * 0.05 or SANITIZED, json.dumps(st))
    rate = steady_rate(log)
    check("share: steady rate %.0f/s at least 80%% of the hidden %d/s" % (rate, hidden),
          rate >= 0.8 * hidden or SANITIZED, "%.1f" % rate,
          todo="issue 16: three workers reach about 65% of the hidden rate (one reaches 87%)")
    dup = st.get("duplicates", {}).get("row", 0)
    check("share: no row accepted twice (%d)" % dup, dup == 0, json.dumps(st))
    redis.terminate()
    redis.wait(timeout=10)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        run_tests([test_configured_under_hidden, test_hidden_rate, test_per_connection_cap,
                   test_three_workers_share], tmp)
