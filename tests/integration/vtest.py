"""Shared helpers of volley's integration tests: paths from meson's
environment, TAP output, a volley-sink process and campaign fixtures."""

import csv
import json
import os
import re
import socket
import signal
import subprocess
import sys
import time

SRCDIR = os.environ.get("SRCDIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
BUILDDIR = os.environ.get("BUILDDIR", os.path.join(SRCDIR, "build"))
VOLLEY = os.environ.get("VOLLEY", os.path.join(BUILDDIR, "cli", "volley"))
SINK = os.environ.get("VOLLEY_SINK", os.path.join(BUILDDIR, "bench", "volley-sink"))

# Under the sanitizers (.ci/run sets VOLLEY_SANITIZED=1) volley runs several
# times slower and its allocator keeps freed memory: the large campaigns are
# scaled down, and memory bounds are not judged there.
SANITIZED = os.environ.get("VOLLEY_SANITIZED") == "1"
# ThreadSanitizer (CI's third pass, with VOLLEY_SANITIZED too) slows every
# memory access: checks of timing within milliseconds are not judged there.
TSAN = os.environ.get("VOLLEY_TSAN") == "1"


def scaled(n):
    """n rows, or a tenth of them (at least 500) under the sanitizers."""
    return max(500, n // 10) if SANITIZED else n


_results = []


def check(name, cond, detail="", todo=None):
    """Print one TAP line; the detail of a failure as comments. todo (a reason)
    marks a known gap, tracked in an open issue: TAP's "# TODO", which a failure
    does not fail (scripts/count-tests counts it as skipped), so the figure is
    still printed on every run."""
    _results.append(bool(cond) or todo is not None)
    # Only a failure carries the directive: meson reads "ok ... # TODO" as an
    # unexpected pass, which fails the test program.
    print("%s %d - %s%s" % ("ok" if cond else "not ok", len(_results), name,
                            " # TODO " + todo if todo and not cond else ""))
    if not cond and detail != "":
        for line in str(detail).splitlines()[-40:]:
            print("#   " + line)
    sys.stdout.flush()


def run_tests(tests, tmp):
    """Run each test function; an exception is a failure, not an abort."""
    for t in tests:
        try:
            t(tmp)
        except Exception:
            import traceback
            check(t.__name__ + " ran to the end", False, traceback.format_exc())
    print("1..%d" % len(_results))
    sys.exit(0 if all(_results) else 1)


def wait_up(proc, ready, what, errpath=None, timeout=10.0):
    """Wait until ready() is true for a server a test started; (True, "") or
    (False, why), why carrying the server's own words: its exit status and the
    end of its stderr (read from errpath, where the caller sent it), so that a
    server that cannot start (a missing shared library, a port in use) is
    reported as such and not as a connection refused later on."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        try:
            if ready():
                return True, ""
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        why = "%s did not come up within %.0f s" % (what, timeout)
    else:
        why = "%s exited with status %d before it came up" % (what, proc.returncode)
    if errpath:
        try:
            with open(errpath, errors="replace") as f:
                err = f.read().strip()
        except OSError:
            err = ""
        if err:
            why += "; its stderr:\n" + err[-4000:]
    return False, why


class Sink:
    """A volley-sink on 127.0.0.1 and a free port (or at listen); stats and log
    read at stop."""

    def __init__(self, tmp, *args, name=None, env=None, listen="127.0.0.1:0"):
        name = name or "sink-%d" % time.monotonic_ns()
        self.stats_path = os.path.join(tmp, name + "-stats.json")
        self.log_path = os.path.join(tmp, name + "-log.jsonl")
        e = dict(os.environ)
        e.update(env or {})
        self.p = subprocess.Popen([SINK, "--listen", listen, "--stats", self.stats_path,
                                   "--log", self.log_path, "--max-seconds", "600"] + list(args),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=e)
        line = self.p.stdout.readline()
        if not line.startswith("listening "):
            self.p.kill()
            _, err = self.p.communicate(timeout=10)
            raise AssertionError("volley-sink %s did not start (status %s): %s"
                                 % (" ".join(args), self.p.returncode, (line + err).strip()))
        self.addr = line.split()[1]
        self.port = int(self.addr.rsplit(":", 1)[1])

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.communicate(timeout=30)
        with open(self.stats_path) as f:
            return json.load(f)

    def log(self):
        with open(self.log_path) as f:
            return [json.loads(l) for l in f if l.strip()]


def make_campaign(d, cid, n, providers, bad_every=0, domain="163.com"):
    """A campaign of n rows (every bad_every-th address 'badN@'), a small text
    template and the given providers list. Returns the campaign file's path."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "recipients.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "name"])
        for i in range(1, n + 1):
            local = ("bad%d" % i) if bad_every and i % bad_every == 0 else ("user%d" % i)
            w.writerow(["%s@%s" % (local, domain), "Name %d" % i])
    with open(os.path.join(d, "template.json"), "w") as f:
        json.dump({"from": "Sender <news@example.com>", "subject": "Hello {{name}}",
                   "text": "Dear {{name}},\nrow {{row}} of {{campaign}}.\n"}, f)
    with open(os.path.join(d, "providers.json"), "w") as f:
        json.dump(providers, f)
    path = os.path.join(d, "campaign.json")
    with open(path, "w") as f:
        json.dump({"id": cid, "recipients": "recipients.csv", "template": "template.json",
                   "providers": "providers.json"}, f)
    return path


def read_report(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# A row's result as stored in Redis (scheduler/result.h): ten tab-separated
# columns, text columns with backslash, tab, CR and LF escaped.
RESULT_COLUMNS = ("status", "attempts", "code", "enhanced", "first", "last", "host",
                  "provider", "email", "response")
_ESC = {"\\": "\\\\", "\t": "\\t", "\r": "\\r", "\n": "\\n"}
_UNESC = {"\\": "\\", "t": "\t", "r": "\r", "n": "\n"}


def encode_result(email, provider, status, attempts=0, code=0, enhanced="", response="",
                  first=0, last=0, host=""):
    v = {"email": email, "provider": provider, "status": status, "attempts": attempts,
         "code": code, "enhanced": enhanced, "response": response, "first": first,
         "last": last, "host": host}
    return "\t".join("".join(_ESC.get(c, c) for c in str(v[k])) for k in RESULT_COLUMNS)


def decode_result(s):
    """A stored result as a dict (numbers as ints), or None if s is not one."""
    cols = s.split("\t")
    if len(cols) != len(RESULT_COLUMNS):
        return None
    out = {}
    for k, c in zip(RESULT_COLUMNS, cols):
        c = re.sub(r"\\(.)", lambda m: _UNESC.get(m.group(1), m.group(1)), c)
        out[k] = int(c) if k in ("attempts", "code", "first", "last") else c
    return out


def redis_call(sock, *args):
    """One command to the redis-server on unix socket sock; its reply
    (bulk strings as str, arrays as lists)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        a = [str(x).encode() for x in args]
        s.sendall(b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in a))
        f = s.makefile("rb")

        def read():
            line = f.readline()
            t, v = line[:1], line[1:-2]
            if t == b"*":
                return [read() for _ in range(int(v))] if int(v) >= 0 else None
            if t == b"$":
                return f.read(int(v) + 2)[:-2].decode() if int(v) >= 0 else None
            if t == b":":
                return int(v)
            if t == b"-":
                raise RuntimeError(v.decode())
            return v.decode()
        return read()


def stored_result(sock, cid, row):
    """Row's result in campaign cid's results hash (scheduler/keys.h): its own
    field, or its line in a group's field. A dict (decode_result), or None."""
    kv = redis_call(sock, "HGETALL", "{c:%s}:res:%d" % (cid, row // 64))
    fields = dict(zip(kv[::2], kv[1::2]))
    if str(row) in fields:
        return decode_result(fields[str(row)])
    for k, v in fields.items():
        if k.startswith("g"):
            for line in v.splitlines():
                r, _, res = line.partition("\t")
                if r == str(row):
                    return decode_result(res)
    return None
