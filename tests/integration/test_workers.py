#!/usr/bin/python3
"""Resilience and shared limits: `volley send` killed with SIGKILL five times
and resumed; a Redis restart in the middle of a campaign run by `volley
worker`s; a provider rate held by three worker processes sharing one Redis;
`volley cancel` and `pause` of a campaign a worker is sending; `worker
--metrics`; the helper threads and the embedded Redis yield to the loop
thread. Prints TAP."""

import json
import os
import random
import re
import signal
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from vtest import (TSAN, VOLLEY, Sink, check, make_campaign, read_report, run_tests, scaled,
                   wait_up)


def dupes(log):
    rcpts = [r for m in log for r in m["rcpts"]]
    return rcpts, len(rcpts) - len(set(rcpts))


def test_kill9_and_resume(tmp):
    d = os.path.join(tmp, "kill9")
    sink = Sink(d if os.makedirs(d) is None else d)
    n, conns = scaled(20000), 10
    # About ten seconds of sending whatever n is: the five runs below last
    # six on average, so most of them are cut short by the kill (a fixed rate
    # let the scaled-down campaign under the sanitizers end after two).
    camp = make_campaign(d, "kill9", n, [{
        "name": "p", "domains": ["*"], "route": "smtp://" + sink.addr,
        "max_connections": conns, "rate": "%d/s" % (n // 10)}])
    rng = random.Random(42)
    kills = 0
    for _ in range(5):
        p = subprocess.Popen([VOLLEY, "send", camp, "--no-progress"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 2.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
    check("volley send was killed with SIGKILL mid-campaign (%d of 5 runs)" % kills, kills >= 3)
    r = subprocess.run([VOLLEY, "send", camp, "--no-progress"], capture_output=True, text=True,
                       timeout=300)
    check("the resumed send finishes: exit 0", r.returncode == 0, r.stdout + r.stderr)
    rows = read_report(os.path.join(d, ".volley", "kill9", "report.csv"))
    st = sink.stop()
    check("every one of %d rows is final and delivered" % n,
          len(rows) == n and all(x["status"] == "delivered" for x in rows),
          "%d rows, %d delivered" % (len(rows), sum(x["status"] == "delivered" for x in rows)))
    rcpts, dup = dupes(sink.log())
    # At most the messages in flight at each kill: conns x 2 per connection, plus
    # results received but not yet recorded in the same instant.
    bound = kills * conns * 4
    check("every row reached the sink; duplicates (%d) within the in-flight bound (%d)"
          % (dup, bound), len(set(rcpts)) == n and dup <= bound, st)


def redis_start(d, sock):
    """redis-server on sock, its log in d/redis-server.log (read by wait_up)."""
    with open(os.path.join(d, "redis-server.log"), "a") as log:
        return subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock,
                                 "--unixsocketperm", "700", "--dir", d, "--appendonly", "yes",
                                 "--appendfsync", "always", "--save", "", "--daemonize", "no"],
                                stdout=log, stderr=subprocess.STDOUT)


def redis_ping(sock):
    r = subprocess.run(["redis-cli", "-s", sock, "ping"], capture_output=True, text=True)
    return r.stdout.strip() == "PONG"


def private_redis(tmp, name):
    """A redis-server of the test's own on a unix socket under tmp/name/redis:
    (the test's directory, the socket, its redis:// URL, the process)."""
    d = os.path.join(tmp, name)
    rd = os.path.join(d, "redis")
    os.makedirs(rd)
    sock = os.path.join(rd, "redis.sock")
    redis = redis_start(rd, sock)
    up, why = wait_up(redis, lambda: redis_ping(sock), "redis-server",
                      os.path.join(rd, "redis-server.log"))
    check("%s: a private redis-server is up" % name, up, why)
    return d, sock, "unix://" + sock, redis


def status_state(url, cid):
    r = subprocess.run([VOLLEY, "status", cid, "--redis", url], capture_output=True, text=True)
    return r.stdout.splitlines()[0] if r.stdout else r.stderr


def status_counts(url, cid):
    """The campaign's counts from `volley status --json` ({} when it fails)."""
    out = subprocess.run([VOLLEY, "status", cid, "--redis", url, "--json"],
                         capture_output=True, text=True).stdout
    return json.loads(out)["counts"] if out else {}


def worker_sending(tmp, cid, n, rate):
    """A campaign of n rows at rate/s over 4 connections, enqueued on a
    private Redis, and a `volley worker` sending it once it has delivered
    rate rows. Returns (url, redis, sink, worker)."""
    d, sock, url, redis = private_redis(tmp, cid)
    sink = Sink(d)
    camp = make_campaign(d, cid, n, [{
        "name": "p", "domains": ["*"], "route": "smtp://" + sink.addr,
        "max_connections": 4, "rate": "%d/s" % rate}])
    subprocess.run([VOLLEY, "enqueue", camp, "--redis", url], check=True, capture_output=True)
    w = subprocess.Popen([VOLLEY, "worker", "--redis", url], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and int(status_counts(url, cid).get("delivered", 0)) < rate:
        time.sleep(0.1)
    return url, redis, sink, w


def test_redis_restart(tmp):
    d, sock, url, redis = private_redis(tmp, "restart")
    rd = os.path.dirname(sock)
    sink = Sink(d)
    n = scaled(6000)
    camp = make_campaign(d, "restart", n, [{
        "name": "p", "domains": ["*"], "route": "smtp://" + sink.addr,
        "max_connections": 6, "rate": "1500/s"}])
    r = subprocess.run([VOLLEY, "enqueue", camp, "--redis", url], capture_output=True, text=True)
    check("enqueue: exit 0", r.returncode == 0, r.stdout + r.stderr)
    workers = [subprocess.Popen([VOLLEY, "worker", "--redis", url, "--lease-ms", "3000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    time.sleep(1.5)
    subprocess.run(["redis-cli", "-s", sock, "shutdown"], capture_output=True)
    redis.wait(timeout=20)
    time.sleep(1.0)
    redis = redis_start(rd, sock)
    up, why = wait_up(redis, lambda: redis_ping(sock), "redis-server",
                      os.path.join(rd, "redis-server.log"))
    check("Redis restarted on the same socket with its data", up, why)
    deadline = time.time() + 120
    state = ""
    while time.time() < deadline:
        state = status_state(url, "restart")
        if state.endswith(": done"):
            break
        time.sleep(0.5)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    errs = "".join(w.communicate(timeout=30)[1] for w in workers)
    check("the workers reconnected and finished the campaign", state.endswith(": done"),
          state + "\n" + errs)
    check("the workers saw Redis go and come back", "unavailable" in errs and
          errs.count("Redis connected") >= 3, errs)
    out = subprocess.run([VOLLEY, "report", "restart", "--redis", url, "--format", "csv"],
                         capture_output=True, text=True).stdout
    rows = out.strip().splitlines()[1:]
    delivered = sum(1 for line in rows if ",delivered," in line)
    st = sink.stop()
    rcpts, dup = dupes(sink.log())
    check("nothing lost: all %d rows delivered, each reached the sink" % n,
          delivered == n and len(set(rcpts)) == n, "%d delivered, %d distinct at the sink"
          % (delivered, len(set(rcpts))))
    check("duplicates (%d) no more than the messages in flight at the restart" % dup,
          dup <= 2 * 6 * 2 * 2, st)
    redis.terminate()
    redis.wait(timeout=20)


def test_shared_rate(tmp):
    d, sock, url, redis = private_redis(tmp, "rate")
    sink = Sink(d)
    R, burst, secs = 100, 10, 30
    n = R * (secs + 8)
    camp = make_campaign(d, "rate", n, [{
        "name": "p", "domains": ["*"], "route": "smtp://" + sink.addr,
        "max_connections": 6, "rate": "%d/s" % R, "burst": burst}])
    subprocess.run([VOLLEY, "enqueue", camp, "--redis", url], check=True, capture_output=True)
    workers = [subprocess.Popen([VOLLEY, "worker", "--redis", url], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for _ in range(3)]
    time.sleep(secs + 4)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait(timeout=30)
    out = subprocess.run([VOLLEY, "report", "rate", "--redis", url, "--format", "json"],
                         capture_output=True, text=True).stdout
    import json
    from datetime import datetime
    times = []
    for line in out.splitlines():
        o = json.loads(line)
        if o["status"] == "delivered" and o["first_attempt_at"]:
            t = datetime.fromisoformat(o["first_attempt_at"].replace("Z", "+00:00"))
            times.append(t.timestamp())
    times.sort()
    ok = len(times) > R * secs
    if ok:
        t0 = times[0] + 2.0  # past the initial burst
        in_window = sum(1 for t in times if t0 <= t < t0 + secs)
        rate = in_window / secs
        # The most in any 1-second window, anywhere.
        worst, j = 0, 0
        for i in range(len(times)):
            while times[i] - times[j] >= 1.0:
                j += 1
            worst = max(worst, i - j + 1)
    check("3 workers on one Redis held %d/s within 3%% over %d s (measured %.1f/s)"
          % (R, secs, rate if ok else 0), ok and abs(rate - R) <= 0.03 * R,
          "%d deliveries" % len(times))
    # Attempt times are stamped when the result is recorded, a few ms after the
    # token was taken, so allow that jitter's worth on top of R x 1 s + burst.
    check("no 1-second window above R + burst (worst %d, limit %d)%s"
          % (worst if ok else -1, R + burst, " # skip under TSan" if TSAN else ""),
          ok and (worst <= R + burst + 5 or TSAN))
    sink.stop()
    redis.terminate()
    redis.wait(timeout=20)


def test_cancel_running(tmp):
    """volley cancel while a worker sends: every row ends final, the rows the
    worker had claimed but not sent included, and sending stops."""
    n = 3000
    url, redis, sink, w = worker_sending(tmp, "cxl", n, 200)
    r = subprocess.run([VOLLEY, "cancel", "cxl", "--redis", url], capture_output=True, text=True)
    check("cancel: exit 0", r.returncode == 0, r.stdout + r.stderr)
    deadline, counts = time.time() + 30, {}
    while time.time() < deadline:
        counts = status_counts(url, "cxl")
        if int(counts.get("final", 0)) >= n:
            break
        time.sleep(0.3)
    time.sleep(1.0)
    st = sink.stop()
    w.send_signal(signal.SIGTERM)
    w.communicate(timeout=30)
    delivered, cancelled = int(counts.get("delivered", 0)), int(counts.get("cancelled", 0))
    check("every row final after the cancel: %d delivered + %d cancelled = %d"
          % (delivered, cancelled, n), delivered + cancelled == n and delivered >= 100 and
          cancelled > 0,
          json.dumps(counts))
    check("sending stopped: the sink took only the delivered rows (%d)" % st["messages"],
          st["messages"] == delivered and delivered < 1000, json.dumps(st))
    redis.terminate()
    redis.wait(timeout=20)


def test_pause_running(tmp):
    """volley pause while a worker sends: sending stops within a second or
    two, rows the worker had claimed included (they go back to the due set,
    not to the sink); resume sends the rest, each row once."""
    n = 600
    # A slow rate, so that the rows a worker claims ahead (three windows of
    # 4 connections) would take seconds to send after the pause.
    url, redis, sink, w = worker_sending(tmp, "pz", n, 40)
    r = subprocess.run([VOLLEY, "pause", "pz", "--redis", url], capture_output=True, text=True)
    check("pause: exit 0", r.returncode == 0, r.stdout + r.stderr)
    time.sleep(2.0)
    at_pause = int(status_counts(url, "pz").get("delivered", 0))
    time.sleep(3.0)
    later = status_counts(url, "pz")
    check("nothing is sent while paused (%d delivered 2 s after the pause, %s 3 s later)"
          % (at_pause, later.get("delivered")),
          int(later.get("delivered", 0)) == at_pause and at_pause < n, json.dumps(later))
    r = subprocess.run([VOLLEY, "resume", "pz", "--redis", url], capture_output=True, text=True)
    check("resume: exit 0", r.returncode == 0, r.stdout + r.stderr)
    deadline, counts = time.time() + 90, {}
    while time.time() < deadline:
        counts = status_counts(url, "pz")
        if int(counts.get("final", 0)) >= n:
            break
        time.sleep(0.3)
    w.send_signal(signal.SIGTERM)
    w.communicate(timeout=30)
    st = sink.stop()
    rcpts, dup = dupes(sink.log())
    check("after resume every row is delivered, each once (%s delivered, %d duplicates)"
          % (counts.get("delivered"), dup),
          int(counts.get("delivered", 0)) == n and len(set(rcpts)) == n and dup == 0,
          json.dumps(counts) + " " + json.dumps(st))
    redis.terminate()
    redis.wait(timeout=20)


def test_worker_holds_off_stopped_campaign(tmp):
    """A campaign whose run stops on an error a person must fix (here: its
    rows wait for a provider the providers file no longer has) is not served
    again at every scan: the worker says so once and holds it off for a
    minute. It re-served it every 2 s, which for a provider that refused the
    login meant a failed login every 2 s."""
    d, sock, url, redis = private_redis(tmp, "holdoff")
    camp = make_campaign(d, "ho", 100, [{
        "name": "alpha", "domains": ["*"], "route": "smtp://127.0.0.1:9", "max_connections": 1}])
    subprocess.run([VOLLEY, "enqueue", camp, "--redis", url], check=True, capture_output=True)
    with open(os.path.join(d, "providers.json"), "w") as f:
        json.dump([{"name": "beta", "domains": ["*"], "route": "smtp://127.0.0.1:9"}], f)
    w = subprocess.Popen([VOLLEY, "worker", "--redis", url], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(7.0)  # three scans and more
    w.send_signal(signal.SIGTERM)
    err = w.communicate(timeout=30)[1]
    said = err.count("queued for provider \"alpha\"")
    check("worker: the stopped campaign is reported once in 7 s, held off for a minute "
          "(reported %d times)" % said,
          said == 1 and "trying it again in 60 s" in err, err)
    redis.terminate()
    redis.wait(timeout=20)


def test_cancel_before_ingest_ends(tmp):
    """Rows that arrive after a cancel (here: a second enqueue after the first
    stopped at 64 rows) are cancelled on arrival, and the report names each
    row's address, provider and why, whichever way it was cancelled."""
    d, sock, url, redis = private_redis(tmp, "cxlingest")
    n = 100
    camp = make_campaign(d, "cxi", n, [{"name": "p\\q", "domains": ["*"],
                                        "route": "smtp://127.0.0.1:9"}])
    run = lambda *a: subprocess.run([VOLLEY] + list(a) + ["--redis", url], capture_output=True,
                                    text=True)
    r = run("enqueue", camp, "--limit", "64")
    check("cancel/ingest: first enqueue of 64 rows", r.returncode == 0, r.stderr)
    r = run("cancel", "cxi")
    check("cancel/ingest: cancel exit 0", r.returncode == 0, r.stdout + r.stderr)
    r = run("enqueue", camp)
    check("cancel/ingest: the rest enqueued", r.returncode == 0, r.stderr)
    out = os.path.join(d, "cxi.csv")
    r = run("report", "cxi", "--format", "csv", "-o", out)
    check("cancel/ingest: report exit 0", r.returncode == 0, r.stderr)
    rows = read_report(out) if r.returncode == 0 else []
    late = [x for x in rows if int(x["row"]) > 64]
    check("cancel/ingest: all %d rows cancelled, each with its address and provider" % n,
          len(rows) == n and all(x["status"] == "cancelled" and x["email"].endswith("@163.com")
                                 and x["provider"] == "p\\q" for x in rows),
          json.dumps(rows[:2] + late[:1]))
    check("cancel/ingest: rows that came after the cancel say so",
          len(late) == n - 64 and all(x["response"] == "the campaign was cancelled"
                                      for x in late) and rows[0]["response"] == "",
          json.dumps(rows[:1] + late[:1]))
    redis.terminate()
    redis.wait(timeout=20)


def test_older_layout(tmp):
    """A campaign left in Redis by a volley that stored rows one by one is
    refused with a clear message, never misread."""
    d, sock, url, redis = private_redis(tmp, "older")
    camp = make_campaign(d, "old", 10, [{"name": "p", "domains": ["*"],
                                         "route": "smtp://127.0.0.1:9"}])
    cli = ["redis-cli", "-s", sock]
    subprocess.run(cli + ["HSET", "{c:old}:meta", "id", "old", "state", "running", "path", camp,
                          "created_ms", "1", "ingested", "1"], check=True, capture_output=True)
    subprocess.run(cli + ["SADD", "volley:campaigns", "old"], check=True, capture_output=True)
    r = subprocess.run([VOLLEY, "enqueue", camp, "--redis", url], capture_output=True, text=True)
    check("enqueue over an older layout: exit 65 and says why",
          r.returncode == 65 and "older volley" in r.stderr, (r.returncode, r.stderr))
    w = subprocess.Popen([VOLLEY, "worker", "--redis", url], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(4.5)  # two scans of volley:campaigns
    w.send_signal(signal.SIGTERM)
    err = w.communicate(timeout=30)[1]
    check("a worker skips it, saying so once", err.count("older volley") == 1 and
          "serving campaign old" not in err, err)
    redis.terminate()
    redis.wait(timeout=20)


SCHED_BATCH = 3  # sched.h


def sched_policy(pid, tid=None):
    """A task's scheduling policy (field 41 of /proc/PID/task/TID/stat), or
    None once it is gone."""
    try:
        with open("/proc/%d/task/%d/stat" % (pid, tid or pid)) as f:
            return int(f.read().rsplit(")", 1)[1].split()[38])
    except (OSError, IndexError, ValueError):
        return None


def test_helpers_yield_to_loop(tmp):
    """While `volley send` runs, its embedded redis-server and the threads
    that render are batch threads (common/prio.h), and the loop thread is
    not: the helpers must not preempt the thread that bounds sending."""
    d = os.path.join(tmp, "prio")
    os.makedirs(d)
    sink = Sink(d)
    n = scaled(20000)
    # A burst of 100: grants under 32 rows render on the loop (worker.c
    # RENDER_MIN_ITEM), and the default burst of a scaled-down rate is 20.
    camp = make_campaign(d, "prio", n, [{
        "name": "p", "domains": ["*"], "route": "smtp://" + sink.addr,
        "max_connections": 10, "rate": "%d/s" % (n // 5), "burst": 100}])
    p = subprocess.Popen([VOLLEY, "send", camp, "--no-progress"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    seen = {"redis": None, "render": 0, "render_batch": 0, "loop": None}
    deadline = time.time() + 60
    while p.poll() is None and time.time() < deadline:
        kids = subprocess.run(["pgrep", "-P", str(p.pid), "redis-server"],
                              capture_output=True, text=True).stdout.split()
        if kids:
            seen["redis"] = sched_policy(int(kids[0]))
        try:
            tids = [int(t) for t in os.listdir("/proc/%d/task" % p.pid)]
        except OSError:
            break
        # The render threads name themselves when they first render.
        render = []
        for t in tids:
            try:
                with open("/proc/%d/task/%d/comm" % (p.pid, t)) as f:
                    if f.read().strip() == "volley-render":
                        render.append(sched_policy(p.pid, t))
            except OSError:
                pass
        if len(render) > seen["render"]:
            seen["render"] = len(render)
            seen["render_batch"] = sum(x == SCHED_BATCH for x in render)
        loop = sched_policy(p.pid)
        if loop is not None:
            seen["loop"] = loop
        if seen["redis"] is not None and seen["render"] >= 1:
            break
        time.sleep(0.05)
    err = p.communicate(timeout=120)[1]
    sink.stop()
    check("the send finishes: exit 0", p.returncode == 0, err)
    check("the embedded redis-server runs as SCHED_BATCH", seen["redis"] == SCHED_BATCH,
          json.dumps(seen))
    check("render threads run as SCHED_BATCH, the loop thread does not",
          seen["render"] >= 1 and seen["render_batch"] == seen["render"] and
          seen["loop"] not in (None, SCHED_BATCH), json.dumps(seen))


def test_redis_password_hidden(tmp):
    """A password in --redis does not stay in /proc/PID/cmdline, and one kept in
    VOLLEY_REDIS_PASSWORD_FILE works as well (issue 20)."""
    rd = os.path.join(tmp, "redis-auth")
    os.makedirs(rd)
    sock = os.path.join(rd, "redis.sock")
    with open(os.path.join(rd, "redis-server.log"), "a") as log:
        redis = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock,
                                  "--dir", rd, "--save", "", "--requirepass", "s3cr@t/pw"],
                                 stdout=log, stderr=subprocess.STDOUT)

    def clients():
        r = subprocess.run(["redis-cli", "-s", sock, "--no-auth-warning", "-a", "s3cr@t/pw",
                            "client", "list"], capture_output=True, text=True)
        return len([l for l in r.stdout.splitlines() if "cmd=" in l])
    up, why = wait_up(redis, lambda: clients() >= 1, "redis-server",
                      os.path.join(rd, "redis-server.log"))
    check("password: a redis-server with requirepass is up", up, why)

    def run_worker(url, env, name):
        e = dict(os.environ)
        e.update(env)
        w = subprocess.Popen([VOLLEY, "worker", "--redis", url], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=e)
        deadline = time.time() + 10
        while time.time() < deadline and w.poll() is None and clients() < 2:
            time.sleep(0.05)
        try:
            with open("/proc/%d/cmdline" % w.pid, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmdline = "(exited)"
        connected = clients() >= 2 and w.poll() is None
        w.send_signal(signal.SIGTERM)
        err = w.communicate(timeout=30)[1]
        check("password: %s: the worker authenticates" % name, connected, err)
        return cmdline, err
    # '/' is percent-encoded in a unix:// URL (it would start the path there).
    cmdline, err = run_worker("unix://:s3cr@t%2Fpw@" + sock, {}, "in the URL")
    check("password in the URL: not in /proc/PID/cmdline, starred there",
          "s3cr" not in cmdline and ":***********@" in cmdline, cmdline)
    check("password in the URL: a warning names the better ways, not the password",
          "VOLLEY_REDIS_PASSWORD" in err and "s3cr" not in err, err)
    pwfile = os.path.join(tmp, "redis-pw")
    with open(pwfile, "w") as f:
        f.write("s3cr@t/pw\n")
    cmdline, err = run_worker("unix://" + sock, {"VOLLEY_REDIS_PASSWORD_FILE": pwfile},
                              "VOLLEY_REDIS_PASSWORD_FILE")
    check("password file: no warning", "warning" not in err, err)
    r = subprocess.run([VOLLEY, "worker", "--redis", "unix://" + sock],
                       capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, VOLLEY_REDIS_PASSWORD_FILE=pwfile + ".missing"))
    check("password file missing: exit 78, the file named",
          r.returncode == 78 and "redis-pw.missing" in r.stderr, "%d %s" % (r.returncode, r.stderr))
    redis.terminate()
    redis.wait(timeout=10)


def test_redis_lost_its_data(tmp):
    """A Redis that restarts empty mid-campaign: send stops with exit 69 and says
    the campaign vanished (it ended as done, exit 0, after 704 of 2,000 rows);
    and an ingest over a campaign's leftover keys without its meta refuses
    rather than sending rows again (issue 20)."""
    d, sock, url, redis = private_redis(tmp, "lost")
    rd = os.path.dirname(sock)
    sink = Sink(d)
    n = 2000
    camp = make_campaign(d, "lost", n, [{
        "name": "p", "domains": ["*"], "route": "smtp://" + sink.addr,
        "max_connections": 4, "rate": "400/s"}])
    p = subprocess.Popen([VOLLEY, "send", camp, "--redis", url, "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and int(status_counts(url, "lost").get("delivered", 0)) < 200:
        time.sleep(0.05)
    subprocess.run(["redis-cli", "-s", sock, "shutdown", "nosave"], capture_output=True)
    redis.wait(timeout=20)
    shutil.rmtree(os.path.join(rd, "appendonlydir"), ignore_errors=True)
    redis = redis_start(rd, sock)
    up, why = wait_up(redis, lambda: redis_ping(sock), "redis-server",
                      os.path.join(rd, "redis-server.log"))
    check("lost data: Redis restarted empty", up, why)
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    st = sink.stop()
    check("lost data: send stops with exit 69, not done", p.returncode == 69,
          "exit %s\n%s%s" % (p.returncode, out, err))
    check("lost data: the message says the campaign vanished from Redis",
          "vanished from Redis" in err and "{c:lost}:meta" in err, err)
    check("lost data: it stopped sending (not all %d rows went out)" % n,
          st.get("accepted", st.get("messages", 0)) < n, json.dumps(st)[:400])

    # Leftover keys without their meta: an ingest must notice.
    subprocess.run(["redis-cli", "-s", sock, "hset", "{c:lost}:count", "total", "5"],
                   capture_output=True, check=True)
    subprocess.run(["redis-cli", "-s", sock, "del", "{c:lost}:meta"], capture_output=True)
    r = subprocess.run([VOLLEY, "send", camp, "--redis", url, "--no-progress"],
                       capture_output=True, text=True, timeout=60)
    check("leftover keys: send refuses (exit 65) and names the missing meta",
          r.returncode == 65 and "{c:lost}:meta" in r.stderr and "twice" in r.stderr,
          "exit %d\n%s" % (r.returncode, r.stderr))
    redis.terminate()
    redis.wait(timeout=10)


def test_report_in_new_state_dir(tmp):
    """send --redis writes report.csv into a state directory whose parents do not
    exist yet, and a report it cannot write is not exit 0 (issue 20)."""
    d, sock, url, redis = private_redis(tmp, "deep")
    sink = Sink(d)
    camp = make_campaign(d, "deep", 5, [{"name": "p", "domains": ["*"],
                                         "route": "smtp://" + sink.addr}])
    with open(camp) as f:
        c = json.load(f)
    c["state_dir"] = "state/a/b"
    with open(camp, "w") as f:
        json.dump(c, f)
    r = subprocess.run([VOLLEY, "send", camp, "--redis", url, "--no-progress"],
                       capture_output=True, text=True, timeout=60)
    rows = read_report(os.path.join(d, "state", "a", "b", "report.csv")) \
        if os.path.exists(os.path.join(d, "state", "a", "b", "report.csv")) else []
    check("state dir with missing parents: exit 0 and a report of 5 rows",
          r.returncode == 0 and len(rows) == 5, r.stdout + r.stderr)
    # A state directory that cannot be made (a file is in the way).
    with open(os.path.join(d, "blocked"), "w") as f:
        f.write("x")
    c["state_dir"] = "blocked/sub"
    c["id"] = "deep2"
    with open(camp, "w") as f:
        json.dump(c, f)
    r = subprocess.run([VOLLEY, "send", camp, "--redis", url, "--no-progress"],
                       capture_output=True, text=True, timeout=60)
    check("report cannot be written: exit 73, the directory named, the summary still printed",
          r.returncode == 73 and "blocked/sub" in r.stderr and "delivered" in r.stdout,
          "exit %d\n%s%s" % (r.returncode, r.stdout, r.stderr))
    sink.stop()
    redis.terminate()
    redis.wait(timeout=10)


def test_metrics(tmp):
    """volley worker --metrics serves Prometheus text that counts what it did."""
    d, sock, url, redis = private_redis(tmp, "metrics")
    sink = Sink(d, "--reject-rcpt", "^bad[0-9]+@")
    n = 300
    camp = make_campaign(d, "met", n, [{
        "name": "p\"q", "domains": ["*"], "route": "smtp://" + sink.addr,
        "max_connections": 3, "rate": "100/s"}], bad_every=30)
    subprocess.run([VOLLEY, "enqueue", camp, "--redis", url], check=True, capture_output=True)
    bad = subprocess.run([VOLLEY, "worker", "--redis", url, "--metrics", "nowhere"],
                         capture_output=True, text=True, timeout=30)
    check("--metrics with a bad address: usage error naming it",
          bad.returncode == 64 and "HOST:PORT" in bad.stderr, bad.stderr)
    w = subprocess.Popen([VOLLEY, "worker", "--redis", url, "--metrics", "127.0.0.1:0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = w.stderr.readline()
    m = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", line)
    check("the worker prints where its metrics are", m is not None, line)
    gauges = ("volley_worker_in_flight", "volley_worker_backlog", "volley_worker_connections",
              "volley_worker_max_connections")
    def has_gauges(text):
        return all(re.search(r'^%s\{campaign="met",provider="p\\"q"\} \d+$' % g, text, re.M)
                   for g in gauges)
    # The gauges exist while the campaign is served (about 3 s at 100/s).
    body, seen, deadline = "", "", time.time() + 60
    while m and time.time() < deadline:
        with urllib.request.urlopen(m.group(1), timeout=10) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = resp.read().decode()
        if has_gauges(body):
            seen = body
        if 'status="delivered"} %d' % (n - n // 30) in body:
            break
        time.sleep(0.2)
    check("Prometheus text format", m is not None and ctype.startswith("text/plain; version=0.0.4"),
          ctype if m else "")
    check("results counted by campaign, provider (escaped) and status",
          'volley_worker_results_total{campaign="met",provider="p\\"q",status="delivered"} %d'
          % (n - n // 30) in body and
          'volley_worker_results_total{campaign="met",provider="p\\"q",status="bounced"} %d'
          % (n // 30) in body, body)
    check("gauges per provider while it sends: in flight, backlog, connections, ceiling",
          has_gauges(seen), body)
    if m:
        try:
            urllib.request.urlopen(m.group(1).replace("/metrics", "/other"), timeout=10)
            code = 200
        except urllib.error.HTTPError as e:
            code = e.code
        check("other paths: 404", code == 404, code)
    w.send_signal(signal.SIGTERM)
    w.communicate(timeout=30)
    sink.stop()
    redis.terminate()
    redis.wait(timeout=20)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        run_tests([test_redis_password_hidden, test_redis_lost_its_data,
                   test_report_in_new_state_dir, test_kill9_and_resume, test_redis_restart,
                   test_shared_rate,
                   test_cancel_before_ingest_ends,
                   test_cancel_running, test_pause_running, test_older_layout, test_metrics,
                   test_helpers_yield_to_loop, test_worker_holds_off_stopped_campaign], tmp)
