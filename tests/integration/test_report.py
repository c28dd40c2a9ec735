#!/usr/bin/python3
"""Integration tests of `volley report`, `status`, `pause|resume|cancel` and
`suppress` against a private redis-server (unix socket, no TCP). The worker is
not involved: the tests write the keys of scheduler/keys.h themselves, then
check what volley prints and what it changes. Prints TAP."""

import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback

from vtest import decode_result, encode_result, stored_result, wait_up

SRCDIR = os.environ.get("SRCDIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
VOLLEY = os.environ.get("VOLLEY") or os.path.join(SRCDIR, "build", "cli", "volley")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
TMP = tempfile.mkdtemp(prefix="volley-report-test-")
PROCS = []


class Redis:
    """A tiny RESP client over a unix socket (no redis-py on the machine)."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.f = self.s.makefile("rb")

    @staticmethod
    def encode(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def read(self):
        line = self.f.readline()
        if not line:
            raise EOFError("redis closed the connection")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data.decode("utf-8", "replace")
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError("bad reply %r" % line)

    def __call__(self, *args):
        self.s.sendall(self.encode(*args))
        return self.read()

    def pipeline(self, cmds):
        self.s.sendall(b"".join(self.encode(*c) for c in cmds))
        return [self.read() for _ in cmds]

    def close(self):
        self.f.close()
        self.s.close()


class Server:
    """redis-server on a unix socket in dir; appendonly when asked (for the
    embedded-redis tests, which reuse its data directory)."""

    def __init__(self, dirpath, appendonly=False, sockname="test.sock"):
        os.makedirs(dirpath, exist_ok=True)
        self.sock = os.path.join(dirpath, sockname)
        args = [REDIS_SERVER, "--port", "0", "--unixsocket", self.sock, "--dir", dirpath,
                "--daemonize", "no", "--save", ""]
        if appendonly:
            args += ["--appendonly", "yes"]
        # Its log goes to a file so that a server that cannot start says why.
        errpath = os.path.join(dirpath, "redis-server.log")
        with open(errpath, "a") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        PROCS.append(self.proc)

        def ping():
            r = Redis(self.sock)
            try:
                return r("PING") == "PONG"
            finally:
                r.close()
        up, why = wait_up(self.proc, ping, "redis-server", errpath)
        if not up:
            raise AssertionError(why)
        self.url = "unix://" + self.sock

    def client(self):
        return Redis(self.sock)

    def stop(self):
        if self.proc.poll() is None:
            try:
                r = self.client()
                r.s.sendall(Redis.encode("SHUTDOWN"))
                r.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def volley(*args, env=None, cwd=None):
    """Run volley; (exit code, stdout, stderr). Output is decoded without
    newline translation, so CRLF record ends stay visible."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([VOLLEY] + list(args), capture_output=True, env=e, timeout=120, cwd=cwd)
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8", "replace")


res = encode_result


def reskey(k, row):
    """The results hash of a row (scheduler/keys.h: 64 rows a hash)."""
    return "%s:res:%d" % (k, row // 64)


def reskeys(k, n):
    """Every results hash of a campaign of n rows."""
    return [reskey(k, row) for row in range(0, n + 1, 64)]


T0 = 1795256130123  # 2026-11-21T10:15:30.123Z


def blob(lines):
    """A batch blob (scheduler/keys.h): row, provider and fields per line."""
    return "".join("%d\t%s\t%s\n" % (n, p, json.dumps(f)) for n, p, f in lines)


def fill_campaign(r, cid="c1"):
    """A campaign of 8 rows following scheduler/keys.h. Row 6 is not ingested
    yet. Row 7 has not been tried (its batch part is due now, provider
    netease); row 4 is retried later on its own (provider rest); row 8 was
    tried once and is leased to a worker."""
    k = "{c:%s}" % cid
    r("DEL", *reskeys(k, 8), *[k + s for s in (":meta", ":retry", ":count", ":providers",
                                               ":due:netease", ":due:rest", ":lease", ":batch",
                                               ":batches", ":state")])
    r("HSET", k + ":meta", "id", cid, "state", "running", "total", 8, "ingested", 1,
      "created_ms", T0 - 60000, "started_ms", T0, "email_col", 0,
      "columns", json.dumps(["email", "name"]))
    rows = {
        1: res("a@163.com", "netease", "delivered", 1, 250, "2.0.0", "Mail OK queued as x",
               T0, T0),
        2: res("b@126.com", "netease", "bounced", 1, 550, "5.1.1",
               "User not found: \"b\", sorry\r\nsecond line", T0 + 500, T0 + 500),
        3: res("c@example.org", "rest", "delivered", 2, 250, "2.0.0", "Ok <queued>",
               T0 + 100, T0 + 2000),
        4: res("d@example.org", "rest", "deferred", 1, 451, "4.7.1",
               "Try again later & slowly", T0 + 1000, T0 + 1000),
        5: res("bad-address", "", "rejected", 0, 0, "", "invalid address"),
        8: res("h@yeah.net", "netease", "deferred", 1, 421, "4.4.2", "HL:ICC 连接过多",
               T0 + 1500, T0 + 1500),
    }
    for n, v in rows.items():
        r("HSET", reskey(k, n), n, v)
    for n in (4, 8):  # retried on their own: their results so far, for claims
        r("HSET", k + ":retry", n, rows[n])
    r("HSET", k + ":batch", "1-5", blob([(1, "netease", ["a@163.com", "A"]),
                                         (2, "netease", ["b@126.com", "B"]),
                                         (3, "rest", ["c@example.org", "C"]),
                                         (4, "rest", ["d@example.org", "D"])]))
    r("HSET", k + ":batch", "7-8", blob([(7, "netease", ["g@163.com", "G"]),
                                         (8, "netease", ["h@yeah.net", "H"])]))
    r("ZADD", k + ":batches", 1, "1-5", 7, "7-8")
    for n in (1, 2, 3, 5):
        r("BITFIELD", k + ":state", "SET", "u2", "#%d" % n, 2)
    for n in (4, 8):
        r("BITFIELD", k + ":state", "SET", "u2", "#%d" % n, 1)
    r("HSET", k + ":count", "total", 8, "delivered", 2, "bounced", 1, "rejected", 1,
      "final", 4, "attempts", 7, "deferred", 2)
    r("SADD", k + ":providers", "netease", "rest")
    r("ZADD", k + ":due:rest", T0 + 3600000 * 24 * 3650, "1-5:4")  # far in the future
    r("ZADD", k + ":due:netease", 0, "7-8/1")                      # due now
    r("ZADD", k + ":lease", T0 + 60000, "7-8:8|netease")
    now = int(time.time() * 1000)
    r("HSET", "{p:netease}:suspend", "until", now + 3600000, "reason", "451 MI:SFQ quota")
    r("HSET", "{p:netease}:learned", "connections", 2, "messages_per_connection", 20)
    r("SADD", "volley:campaigns", cid)


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


SRV = None


@test
def report_csv_columns_quoting_and_times():
    r = SRV.client()
    fill_campaign(r)
    rc, out, err = volley("report", "c1", "--redis", SRV.url, "--format", "csv")
    assert rc == 0, (rc, err)
    rows = list(csv.reader(io.StringIO(out, newline="")))
    assert rows[0] == ["row", "email", "provider", "status", "attempts", "code",
                       "enhanced_code", "response", "first_attempt_at", "last_attempt_at"], rows[0]
    assert len(rows) == 9, len(rows)
    by = {int(x[0]): x for x in rows[1:]}
    assert by[1][1:8] == ["a@163.com", "netease", "delivered", "1", "250", "2.0.0",
                          "Mail OK queued as x"], by[1]
    assert by[1][8] == "2026-11-21T10:15:30.123Z", by[1][8]
    assert by[3][9] == "2026-11-21T10:15:32.123Z", by[3][9]
    assert by[2][7] == "User not found: \"b\", sorry\r\nsecond line", repr(by[2][7])
    assert by[5][3] == "rejected" and by[5][8] == "" and by[5][9] == "", by[5]
    assert by[6][3] == "pending" and by[6][1] == "", by[6]
    assert by[8][7] == "HL:ICC 连接过多", by[8]
    # A row not tried yet: address and provider from its batch.
    assert by[7][1:5] == ["g@163.com", "netease", "pending", "0"], by[7]
    assert "\r\n" in out and out.startswith("row,email,"), out[:40]


@test
def report_unreadable_result_and_escapes():
    """A result volley cannot read (here one of an older layout) shows as
    "unknown" with a note and does not stop the report; tabs and backslashes
    in a reply survive their escaping in Redis."""
    r = SRV.client()
    fill_campaign(r)
    k = "{c:c1}"
    r("HSET", reskey(k, 3), 3, json.dumps({"email": "c@example.org", "status": "delivered"}))
    r("HSET", reskey(k, 1), 1, res("a@163.com", "netease", "delivered", 1, 250, "2.0.0",
                                   "queued\tas \\x\\", T0, T0))
    rc, out, err = volley("report", "c1", "--redis", SRV.url, "--format", "csv")
    assert rc == 0, (rc, err)
    by = {int(x[0]): x for x in list(csv.reader(io.StringIO(out, newline="")))[1:]}
    assert len(by) == 8, by
    assert by[3][3] == "unknown" and "unreadable" in by[3][7], by[3]
    assert by[1][7] == "queued\tas \\x\\", repr(by[1][7])
    assert by[2][3] == "bounced" and by[4][3] == "deferred", (by[2], by[4])
    fill_campaign(r)  # the tests after this one read c1 as fill_campaign leaves it


@test
def report_group_fields():
    """Rows recorded together are stored as one field of lines (keys.h:
    "gR"); the report reads them as it reads a row's own field, and a row's
    own field wins over a line for it."""
    r = SRV.client()
    fill_campaign(r)
    k = "{c:c1}"
    rc, before, err = volley("report", "c1", "--redis", SRV.url, "--format", "csv")
    assert rc == 0, (rc, err)
    rows = {n: r("HGET", reskey(k, n), n) for n in (1, 2, 3)}
    r("HDEL", reskey(k, 1), 1, 2, 3)
    r("HSET", reskey(k, 1), "g1", "".join("%d\t%s\n" % (n, v) for n, v in rows.items()))
    rc, after, err = volley("report", "c1", "--redis", SRV.url, "--format", "csv")
    assert rc == 0, (rc, err)
    assert after == before, (before, after)
    r("HSET", reskey(k, 2), 2, res("b@126.com", "netease", "cancelled"))
    rc, out, err = volley("report", "c1", "--redis", SRV.url, "--format", "csv")
    by = {int(x[0]): x for x in list(csv.reader(io.StringIO(out, newline="")))[1:]}
    assert rc == 0 and by[2][3] == "cancelled" and by[1][3] == "delivered", (rc, err, by)
    fill_campaign(r)


@test
def report_json_lines_types():
    rc, out, err = volley("report", "c1", "--redis", SRV.url, "--format", "json")
    assert rc == 0, (rc, err)
    lines = out.splitlines()
    assert len(lines) == 8, len(lines)
    objs = [json.loads(x) for x in lines]
    keys = ["row", "email", "provider", "status", "attempts", "code", "enhanced_code",
            "response", "first_attempt_at", "last_attempt_at"]
    for o in objs:
        assert list(o.keys()) == keys, o.keys()
        assert isinstance(o["code"], int) and isinstance(o["attempts"], int)
    assert objs[1]["response"] == "User not found: \"b\", sorry\r\nsecond line"
    assert objs[0]["first_attempt_at"] == "2026-11-21T10:15:30.123Z"
    assert objs[4]["first_attempt_at"] is None and objs[4]["last_attempt_at"] is None
    assert objs[5]["status"] == "pending" and objs[5]["row"] == 6


@test
def report_text_summary():
    rc, out, err = volley("report", "c1", "--redis", SRV.url)
    assert rc == 0, (rc, err)
    def count(state):
        m = re.search(r"^\s+%s\s+(\d+)" % state, out, re.M)
        assert m, (state, out)
        return int(m.group(1))
    assert count("delivered") == 2 and count("bounced") == 1 and count("rejected") == 1
    assert count("pending") == 2 and count("deferred") == 2, out   # rows 6, 7; rows 4, 8
    assert re.search(r"^\s+netease\s+4\s+1\s+1\s+0\s+0\s+2$", out, re.M), out
    assert re.search(r"^\s+\(none\)\s+2\s+0\s+0\s+0\s+1\s+1$", out, re.M), out
    assert re.search(r"^\s+rest\s+2\s+1\s+0\s+0\s+0\s+1$", out, re.M), out
    assert re.search(r"^\s+550\s+1\n\s+1\s+5\.1\.1 User not found", out, re.M), out
    assert re.search(r"^\s+250\s+2$", out, re.M), out
    # 2 delivered between the first attempt (T0) and the last (T0 + 2 s).
    assert re.search(r"throughput\s+1\.0 delivered/s", out), out


@test
def report_html_self_contained_and_escaped():
    rc, out, err = volley("report", "c1", "--redis", SRV.url, "--format", "html")
    assert rc == 0, (rc, err)
    assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    assert "Try again later &amp; slowly" in out and "&quot;b&quot;" in out
    assert "<queued>" not in out and "src=" not in out and "href=" not in out
    assert "Mail OK queued" in out   # in the code table, not the undelivered rows
    assert "a@163.com" not in out    # delivered rows are not listed
    assert "b@126.com" in out


@test
def report_output_file_atomic():
    path = os.path.join(TMP, "out", "report.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("old")
    rc, out, err = volley("report", "c1", "--redis", SRV.url, "--format", "csv", "-o", path)
    assert rc == 0, (rc, err)
    assert out == "", out
    assert os.listdir(os.path.dirname(path)) == ["report.csv"], os.listdir(os.path.dirname(path))
    with open(path, newline="") as f:
        assert len(list(csv.reader(f))) == 9
    # A failed report leaves the old file alone and no temporary behind.
    rc, out, err = volley("report", "nope", "--redis", SRV.url, "-o", path)
    assert rc == 66, (rc, err)
    assert os.listdir(os.path.dirname(path)) == ["report.csv"]


@test
def errors_exit_codes():
    rc, out, err = volley("report", "nope", "--redis", SRV.url)
    assert rc == 66 and "unknown campaign" in err, (rc, err)
    rc, out, err = volley("status", "nope", "--redis", SRV.url)
    assert rc == 66, (rc, err)
    rc, out, err = volley("cancel", "nope", "--redis", SRV.url)
    assert rc == 66, (rc, err)
    rc, out, err = volley("report", "c1", "--redis", "unix://" + TMP + "/no.sock")
    assert rc == 69, (rc, err)
    rc, out, err = volley("report", "c1", "--redis", SRV.url, "--format", "xml")
    assert rc == 64, (rc, err)
    rc, out, err = volley("report")
    assert rc == 64, (rc, err)
    # A campaign of an older Redis layout: its results would all read as
    # pending, so the report refuses it.
    r = SRV.client()
    r("HSET", "{c:old}:meta", "id", "old", "state", "done", "total", 1, "schema", "2")
    rc, out, err = volley("report", "old", "--redis", SRV.url)
    assert rc == 65 and "older volley" in err, (rc, err)
    for cmd in ("report", "status", "pause", "resume", "cancel", "suppress"):
        rc, out, err = volley(cmd, "--help")
        assert rc == 0 and "usage: volley " + cmd in out, (cmd, rc, out, err)


@test
def status_text_and_json():
    r = SRV.client()
    fill_campaign(r)
    rc, out, err = volley("status", "c1", "--redis", SRV.url, "--json")
    assert rc == 0, (rc, err)
    st = json.loads(out)
    assert st["state"] == "running" and st["total"] == 8, st
    assert st["pending"] == 2 and st["due_now"] == 1 and st["leased"] == 1, st
    assert st["counts"]["delivered"] == 2 and st["counts"]["final"] == 4, st
    p = {x["name"]: x for x in st["providers"]}
    assert p["netease"]["due_now"] == 1 and p["netease"]["scheduled_later"] == 0, p
    assert p["rest"]["due_now"] == 0 and p["rest"]["scheduled_later"] == 1, p
    assert p["netease"]["suspend_reason"] == "451 MI:SFQ quota", p
    assert p["rest"]["suspended_until"] is None, p
    assert p["netease"]["learned"]["connections"] == 2, p
    assert st["stop_reason"] is None
    r("HSET", "{c:c1}:meta", "stop_reason", "553 authentication required (netease)")
    rc, out, err = volley("status", "c1", "--redis", SRV.url)
    assert rc == 0, (rc, err)
    assert "pending    2 (due now 1, scheduled later 1)" in out, out
    assert "leased     1" in out, out
    assert "SUSPENDED until" in out and "451 MI:SFQ quota" in out, out
    assert "553 authentication required" in out, out
    assert "connections=2" in out, out


@test
def status_counts_rows_left_in_returned_parts():
    """A batch part given back after a stop or a kill still says how many
    rows it had; status counts those still to send from the state bits and
    the blob (it showed rows already delivered as pending)."""
    r = SRV.client()
    fill_campaign(r, "c3")
    k = "{c:c3}"
    # Batch 1-5: netease's rows 1 and 2 are final; rest's row 3 is final and
    # row 4 is retried on its own. Their parts, given back whole:
    r("ZADD", k + ":due:netease", 0, "1-5/2")
    r("ZADD", k + ":lease", T0 + 60000, "1-5/2|rest")
    # Batch 9-10, not tried yet (state 0): both rows count.
    r("HSET", k + ":batch", "9-10", blob([(9, "netease", ["i@163.com", "I"]),
                                          (10, "netease", ["j@163.com", "J"])]))
    r("ZADD", k + ":due:netease", T0 + 3600000 * 24 * 3650, "9-10/2")
    rc, out, err = volley("status", "c3", "--redis", SRV.url, "--json")
    assert rc == 0, (rc, err)
    st = json.loads(out)
    # fill_campaign's 2 pending and 1 leased, the two rows of 9-10; nothing of 1-5.
    assert st["pending"] == 4 and st["due_now"] == 1 and st["leased"] == 1, st
    p = {x["name"]: x for x in st["providers"]}
    assert p["netease"]["due_now"] == 1 and p["netease"]["scheduled_later"] == 2, p


@test
def pause_resume_cancel():
    r = SRV.client()
    fill_campaign(r)
    rc, out, err = volley("pause", "c1", "--redis", SRV.url)
    assert rc == 0, (rc, err)
    assert r("HGET", "{c:c1}:meta", "state") == "paused"
    rc, out, err = volley("resume", "c1", "--redis", SRV.url)
    assert rc == 0, (rc, err)
    assert r("HGET", "{c:c1}:meta", "state") == "running"
    rc, out, err = volley("cancel", "c1", "--redis", SRV.url)
    assert rc == 0, (rc, err)
    assert r("HGET", "{c:c1}:meta", "state") == "cancelled"
    assert r("ZCARD", "{c:c1}:due:rest") == 0 and r("ZCARD", "{c:c1}:due:netease") == 0
    assert r("ZCARD", "{c:c1}:lease") == 1, "leased rows are left to their worker"
    r4 = decode_result(r("HGET", "{c:c1}:res:0", 4))
    assert r4["status"] == "cancelled" and r4["code"] == 451 and r4["attempts"] == 1, r4
    assert r4["response"] == "Try again later & slowly", r4
    assert r("HEXISTS", "{c:c1}:retry", 4) == 0, "a final row leaves retry"
    assert decode_result(r("HGET", "{c:c1}:res:0", 7))["status"] == "cancelled"
    r7 = decode_result(r("HGET", "{c:c1}:res:0", 7))
    assert r7["email"] == "g@163.com" and r7["provider"] == "netease", r7
    assert decode_result(r("HGET", "{c:c1}:res:0", 8))["status"] == "deferred", "left to its worker"
    assert r("HGET", "{c:c1}:count", "cancelled") == "2", r("HGETALL", "{c:c1}:count")
    assert r("HGET", "{c:c1}:count", "final") == "6"
    rc, out, err = volley("resume", "c1", "--redis", SRV.url)
    assert rc == 64 and "cancelled" in err, (rc, err)
    assert r("HGET", "{c:c1}:meta", "state") == "cancelled"
    rc, out, err = volley("cancel", "c1", "--redis", SRV.url)
    assert rc == 0, (rc, err)
    assert r("HGET", "{c:c1}:count", "cancelled") == "2", "cancelling twice counts once"


@test
def cancel_many_rows_in_batches():
    r = SRV.client()
    k = "{c:big}"
    n = 2500
    r("DEL", k + ":meta", k + ":retry", k + ":count", k + ":due:rest", k + ":providers",
      k + ":batch", k + ":batches", k + ":state", *reskeys(k, n))
    r("HSET", k + ":meta", "id", "big", "state", "running", "total", n, "ingested", 1,
      "email_col", 0)
    r("HSET", k + ":count", "total", n)
    r("SADD", k + ":providers", "rest")
    cmds = []
    for f in range(1, n + 1, 64):
        l = min(n, f + 63)
        bid = "%d-%d" % (f, l)
        cmds.append(("HSET", k + ":batch", bid,
                     blob([(i, "rest", ["u%d@example.org" % i]) for i in range(f, l + 1)])))
        cmds.append(("ZADD", k + ":batches", f, bid))
        cmds.append(("ZADD", k + ":due:rest", f, "%s/%d" % (bid, l - f + 1)))
    r.pipeline(cmds)
    rc, out, err = volley("cancel", "big", "--redis", SRV.url)
    assert rc == 0, (rc, err)
    assert "2500 waiting rows cancelled" in out, out
    assert r("HGET", k + ":count", "cancelled") == str(n)
    assert r("HGET", k + ":meta", "finished_ms") is not None
    rc, out, err = volley("report", "big", "--redis", SRV.url, "--format", "csv")
    assert rc == 0, (rc, err)
    assert out.count(",cancelled,") == n, out.count(",cancelled,")


def run_rss(args, outpath):
    """Run volley with stdout to a file; its peak RSS in kB."""
    with open(outpath, "w") as f:
        p = subprocess.Popen([VOLLEY] + args, stdout=f, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode()
        p.stderr.close()
    assert p.returncode == 0, (p.returncode, err)
    return ru.ru_maxrss


@test
def report_streams_in_bounded_memory():
    """60,000 rows with 200-byte replies (about 20 MB of results) cost the
    report no more memory than 3,000 rows do."""
    r = SRV.client()
    def fill(cid, n):
        k = "{c:%s}" % cid
        r("DEL", k + ":meta", *reskeys(k, n))
        r("HSET", k + ":meta", "id", cid, "state", "done", "total", n, "ingested", 1)
        text = "x" * 180
        for start in range(1, n + 1, 5000):
            cmds = [("HSET", reskey(k, i), i,
                     res("user%d@example.org" % i, "p%d" % (i % 7), "delivered", 1, 250,
                         "2.0.0", "%s %d" % (text, i % 50), T0 + i, T0 + i))
                    for i in range(start, min(n, start + 4999) + 1)]
            r.pipeline(cmds)
    fill("small", 3000)
    fill("large", 60000)
    out = os.path.join(TMP, "rss.out")
    results = {}
    for fmt in ("csv", "text"):
        small = run_rss(["report", "small", "--redis", SRV.url, "--format", fmt], out)
        large = run_rss(["report", "large", "--redis", SRV.url, "--format", fmt], out)
        results[fmt] = (small, large)
        # Under the sanitizers (.ci/run sets VOLLEY_SANITIZED) the allocator
        # keeps freed memory in quarantine, so RSS says nothing about streaming.
        if os.environ.get("VOLLEY_SANITIZED") != "1":
            assert large < small + 4096, (fmt, small, large)
    with open(out) as f:
        txt = f.read()
    assert re.search(r"^\s+delivered\s+60000\s", txt, re.M), txt
    assert re.search(r"^\s+250\s+60000$", txt, re.M), txt
    run_rss(["report", "large", "--redis", SRV.url, "--format", "csv"], out)
    with open(out, newline="") as f:
        rows = sum(1 for _ in csv.reader(f))
    assert rows == 60001, rows


@test
def report_pending_rows_among_many_batches():
    """The report asks Redis for several batches of results ahead; a batch
    with rows not tried yet makes it look their addresses up in between.
    5,300 rows, with untried rows in the first, a middle and the last of its
    batches, come out complete and in order."""
    r = SRV.client()
    cid, n = "many", 5300
    k = "{c:%s}" % cid
    r("DEL", *reskeys(k, n), *[k + s for s in (":meta", ":batch", ":batches")])
    r("HSET", k + ":meta", "id", cid, "state", "running", "total", n, "ingested", 1,
      "email_col", 0, "columns", json.dumps(["email"]))
    untried = {3, 999, 1000, 1001, 2500, 2501, 4999, 5300}
    cmds = []
    for i in range(1, n + 1):
        if i not in untried:
            cmds.append(("HSET", reskey(k, i), i,
                         res("u%d@example.org" % i, "p", "delivered", 1, 250, "2.0.0",
                             "ok %d" % i, T0 + i, T0 + i)))
    for f in range(1, n + 1, 64):
        l = min(n, f + 63)
        cmds.append(("HSET", k + ":batch", "%d-%d" % (f, l),
                     blob([(i, "p", ["u%d@example.org" % i]) for i in range(f, l + 1)])))
        cmds.append(("ZADD", k + ":batches", f, "%d-%d" % (f, l)))
    r.pipeline(cmds)
    rc, out, err = volley("report", cid, "--redis", SRV.url, "--format", "csv")
    assert rc == 0, err
    rows = list(csv.reader(io.StringIO(out)))[1:]
    assert [int(x[0]) for x in rows] == list(range(1, n + 1))
    for x in rows:
        i = int(x[0])
        assert x[1] == "u%d@example.org" % i, x
        assert x[3] == ("pending" if i in untried else "delivered"), x
        assert i in untried or x[7] == "ok %d" % i, x


@test
def ingest_refuses_a_batch_across_rows_in():
    """Two ingests that cut batches differently (only possible when they run
    at once): a batch straddling the rows already in (meta rows_in) is
    refused with a clear error before the call writes anything, and a batch
    that ends by rows_in is left out."""
    r = SRV.client()
    k = "{c:strad}"
    r("DEL", *[k + s for s in (":meta", ":batch", ":batches", ":count", ":providers",
                               ":state", ":due:p")], *reskeys(k, 130))
    r("HSET", k + ":meta", "id", "strad", "state", "running", "email_col", 0, "rows_in", 40)
    with open(os.path.join(SRCDIR, "scheduler", "lua", "ingest.lua")) as f:
        script = f.read()
    def call(*batches):
        keys = [k + s for s in (":meta", ":batch", ":count", ":providers", ":state",
                                ":batches", ":due:p")] + [reskey(k, 0), reskey(k, 64),
                                                          reskey(k, 128)]
        argv = [len(batches), 1, 0, "p"]
        for f, l in batches:
            blob_ = blob([(i, "p", ["u%d@example.org" % i]) for i in range(f, l + 1)])
            argv += ["%d-%d" % (f, l), 0, blob_, 1, 1, l - f + 1, 0]
        return r("EVAL", script, len(keys), *keys, *argv)
    try:
        call((65, 128), (1, 64))
        assert False, "a batch across rows_in was accepted"
    except RuntimeError as e:
        assert "overlap" in str(e) and "1-64" in str(e), e
    assert r("HLEN", k + ":batch") == 0 and r("ZCARD", k + ":due:p") == 0, "nothing written"
    assert r("HGET", k + ":meta", "rows_in") == "40"
    assert call((1, 40), (41, 64)) == 24, "1-40 is in already, 41-64 is new"
    assert r("HGET", k + ":meta", "rows_in") == "64"
    assert r("HGET", k + ":count", "total") == "24"


@test
def record_run_of_rows_and_rows_already_final():
    """record.lua's run path: a group whose rows ascend unbroken, none
    deferred, comes with a tally and is applied a byte of state bits at a
    time; sent again it changes nothing; a run with a row already final
    falls back to the per-row path, which skips that row."""
    r = SRV.client()
    k = "{c:run}"
    r("DEL", *[k + s for s in (":meta", ":count", ":state", ":lease", ":retry", ":due:p")],
      *reskeys(k, 64))
    r("HSET", k + ":meta", "id", "run", "state", "running", "ingested", 1)
    r("HSET", k + ":count", "total", 10)
    with open(os.path.join(SRCDIR, "scheduler", "lua", "record.lua")) as f:
        script = f.read()
    keys = [k + s for s in (":lease", ":retry", ":count", ":meta", ":state", ":due:p")] + \
        [reskey(k, 0)]

    def call(first, letters, tally):
        # Batch 3-12; rows first, first + 1, ... with the given letters.
        rows = list(range(first, first + len(letters)))
        lst = "".join(chr(48 + row - 3) + c for row, c in zip(rows, letters))
        lines = "".join("%d\t%s\n" % (row, encode_result(
            "u%d@example.org" % row, "p", "delivered", attempts=1, code=250)) for row in rows)
        return r("EVAL", script, len(keys), *keys, T0, 1, 0, 0, "3-12", 7, lst, lines, tally)

    def bits(row):
        return r("BITFIELD", k + ":state", "GET", "u2", "#%d" % row)[0]

    assert call(5, "DDdBD", "B1D3d1") == 5
    assert [bits(row) for row in range(3, 13)] == [0, 0, 2, 2, 2, 2, 2, 0, 0, 0]
    assert r("HMGET", k + ":count", "delivered", "bounced", "final", "attempts") == \
        ["4", "1", "5", "4"]
    fields = r("HKEYS", reskey(k, 0))
    assert fields == ["g5"], fields
    assert stored_result(SRV.sock, "run", 9)["code"] == 250
    assert call(5, "DDdBD", "B1D3d1") == 0, "a run sent again applies nothing"
    assert r("HGET", k + ":count", "final") == "5"
    # Row 11 final already: rows 10 and 12 only, each in a field of its own.
    r("BITFIELD", k + ":state", "SET", "u2", "#11", 2)
    assert bits(11) == 2 and bits(10) == 0 and bits(12) == 0
    assert call(10, "DDD", "D3") == 2
    assert [bits(row) for row in (10, 11, 12)] == [2, 2, 2]
    assert r("HGET", k + ":count", "final") == "7"
    assert sorted(r("HKEYS", reskey(k, 0))) == ["10", "12", "g5"]


@test
def suppress_import_csv_and_lines():
    r = SRV.client()
    r("DEL", "volley:suppress")
    r("SADD", "volley:suppress", "known@example.org")
    path = os.path.join(TMP, "unsub.csv")
    with open(path, "w") as f:
        f.write("# exported from the shop\nname,Email,reason\n"
                "Ann,Ann@Example.ORG,unsubscribed\n"
                "Known,KNOWN@example.org,complaint\n"
                "\"Smith, Bob\",bob@example.net,\"said \"\"stop\"\"\"\n"
                "Bad,not-an-address,x\n"
                "# a comment\n"
                "Dup,ann@example.org,again\n")
    rc, out, err = volley("suppress", "import", path, "--redis", SRV.url)
    assert rc == 0, (rc, err)
    assert "2 added, 2 already suppressed, 1 invalid" in out, out
    assert "unsub.csv:6:" in err and "not-an-address" in err, err
    members = set(r("SMEMBERS", "volley:suppress"))
    assert members == {"known@example.org", "ann@example.org", "bob@example.net"}, members
    lst = os.path.join(TMP, "list.txt")
    with open(lst, "w") as f:
        f.write("# one per line\nCarol@Example.com\n\nbob@example.net\nfoo@@bar\n")
    rc, out, err = volley("suppress", "import", lst, env={"VOLLEY_REDIS": SRV.url})
    assert rc == 0, (rc, err)
    assert "1 added, 1 already suppressed, 1 invalid" in out, out
    assert "VOLLEY_REDIS" in err and "list.txt:5:" in err, err
    assert r("SISMEMBER", "volley:suppress", "carol@example.com") == 1
    rc, out, err = volley("suppress", "check", "CAROL@example.com", "--redis", SRV.url)
    assert rc == 0 and "is suppressed" in out, (rc, out)
    rc, out, err = volley("suppress", "check", "dave@example.com", "--redis", SRV.url)
    assert rc == 1 and "not suppressed" in out, (rc, out)
    rc, out, err = volley("suppress", "list", "--redis", SRV.url)
    assert rc == 0 and set(out.split()) == members | {"carol@example.com"}, out
    rc, out, err = volley("suppress", "import", os.path.join(TMP, "missing.csv"),
                          "--redis", SRV.url)
    assert rc == 66, (rc, err)


@test
def suppress_import_batches():
    r = SRV.client()
    r("DEL", "volley:suppress")
    path = os.path.join(TMP, "many.txt")
    with open(path, "w") as f:
        for i in range(2500):
            f.write("User%d@Example.com\n" % i)
    rc, out, err = volley("suppress", "import", path, "--redis", SRV.url)
    assert rc == 0 and "2500 added, 0 already suppressed, 0 invalid" in out, (rc, out, err)
    assert r("SCARD", "volley:suppress") == 2500
    assert r("SISMEMBER", "volley:suppress", "user2499@example.com") == 1


@test
def suppress_redis_unavailable():
    rc, out, err = volley("suppress", "list", env={"VOLLEY_REDIS": "unix://" + TMP + "/none.sock"})
    assert rc == 69, (rc, err)


@test
def campaign_file_with_embedded_redis():
    d = os.path.join(TMP, "camp")
    os.makedirs(d, exist_ok=True)
    cfile = os.path.join(d, "campaign.json")
    with open(cfile, "w") as f:
        json.dump({"id": "emb", "recipients": "r.csv", "template": "t.json",
                   "state_dir": "state"}, f)
    rc, out, err = volley("status", cfile)
    assert rc == 66 and "has never been sent" in err and "state" in err, (rc, err)
    # Fill the state directory the way `send` would leave it: an appendonly Redis.
    srv = Server(os.path.join(d, "state"), appendonly=True)
    fill_campaign(srv.client(), "emb")
    srv.stop()
    rc, out, err = volley("report", cfile, "--format", "csv")
    assert rc == 0, (rc, err)
    assert len(list(csv.reader(io.StringIO(out, newline="")))) == 9
    rc, out, err = volley("pause", cfile)
    assert rc == 0, (rc, err)
    rc, out, err = volley("status", cfile, "--json")
    assert rc == 0 and json.loads(out)["state"] == "paused", (rc, out, err)
    # With --redis, a campaign file stands for its id.
    srv = Server(os.path.join(d, "state"), appendonly=True)
    rc, out, err = volley("status", cfile, "--redis", srv.url, "--json")
    srv.stop()
    assert rc == 0 and json.loads(out)["id"] == "emb", (rc, out, err)
    rc, out, err = volley("report", os.path.join(d, "missing.json"))
    assert rc == 66, (rc, err)
    # While a `send` runs the campaign's server (here: one on its socket),
    # pause and status talk to it and leave it running.
    srv = Server(os.path.join(d, "state"), appendonly=True, sockname="redis.sock")
    try:
        rc, out, err = volley("resume", cfile)
        assert rc == 0, (rc, out, err)
        assert srv.client()("HGET", "{c:emb}:meta", "state") == "running"
        # The campaign file named relative to the current directory (the
        # state directory is then relative too): the same server.
        rc, out, err = volley("status", "campaign.json", "--json", cwd=d)
        assert rc == 0 and json.loads(out)["state"] == "running", (rc, out, err)
        assert srv.proc.poll() is None, "the running server was stopped"
    finally:
        srv.stop()


def main():
    global SRV
    print("1..%d" % len(TESTS))
    failed = 0
    try:
        SRV = Server(os.path.join(TMP, "redis"))
        for i, t in enumerate(TESTS, 1):
            try:
                t()
                print("ok %d - %s" % (i, t.__name__))
            except Exception:
                failed += 1
                print("not ok %d - %s" % (i, t.__name__))
                for line in traceback.format_exc().splitlines():
                    print("# " + line)
            sys.stdout.flush()
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
