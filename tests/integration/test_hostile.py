#!/usr/bin/python3
"""volley bench and volley send against hostile SMTP servers (issue 20): a
server that sends replies out of turn (one behind its 354, one nobody asked
for), a reply code of 999, a 100 KB reply line. Each must end with a clear
error that names the server's fault and a sysexits code, without a crash,
and no row may be decided by a reply meant for another. Prints TAP."""

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

from vtest import VOLLEY, check, make_campaign, read_report, run_tests

# sysexits(3): what volley may end with (cli/exitcodes.h).
SYSEXITS = {0, 64, 65, 66, 69, 70, 71, 75, 78}


class Hostile:
    """A threaded SMTP server on 127.0.0.1 and a free port. `mode` says how
    it misbehaves, on its first `bad_conns` connections (None: on all):
      early    answers DATA with "354 go" and "250 early" in one write
      stray    answers the content with "250 ..." and "354 unsolicited" in
               one write
      greet    sends "250 unsolicited" in the same write as its greeting
      code999  answers MAIL with "999 weird"
      longline answers MAIL with a 100 KB line
    Otherwise it answers as a plain server. The content's final reply names
    the recipient it is for ("250 2.0.0 queued for RCPT"), so a row decided
    by another's reply shows in the report; `accepted` counts, by recipient,
    the contents it took with a 250."""

    def __init__(self, mode, bad_conns=None, pipelining=True):
        self.mode, self.bad_conns, self.pipelining = mode, bad_conns, pipelining
        self.lock = threading.Lock()
        self.conns = 0
        self.datas = 0     # DATA commands received
        self.contents = 0  # message contents received (final dot seen)
        self.accepted = {}
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.stopping = True
        try:
            self.ls.close()
        except OSError:
            pass

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                n = self.conns
            bad = self.bad_conns is None or n <= self.bad_conns
            threading.Thread(target=self._serve, args=(c, bad), daemon=True).start()

    def _serve(self, c, bad):
        c.settimeout(30)
        f = c.makefile("rb")
        rcpts = []
        try:
            c.sendall(b"220 hostile ESMTP\r\n" +
                      (b"250 unsolicited\r\n" if bad and self.mode == "greet" else b""))
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    c.sendall(b"250-hostile\r\n" +
                              (b"250-PIPELINING\r\n" if self.pipelining else b"") +
                              b"250 8BITMIME\r\n")
                elif verb == b"MAIL":
                    rcpts = []
                    if bad and self.mode == "code999":
                        c.sendall(b"999 weird\r\n")
                    elif bad and self.mode == "longline":
                        c.sendall(b"250 " + b"x" * 100000 + b"\r\n")
                    else:
                        c.sendall(b"250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    rcpts.append(line.split(b"<", 1)[1].split(b">", 1)[0].decode())
                    c.sendall(b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    with self.lock:
                        self.datas += 1
                    c.sendall(b"354 go\r\n250 early\r\n" if bad and self.mode == "early"
                              else b"354 go\r\n")
                    while True:
                        l = f.readline()
                        if not l or l == b".\r\n":
                            break
                    if not l:
                        return
                    who = ",".join(rcpts)
                    with self.lock:
                        self.contents += 1
                        for r in rcpts:
                            self.accepted[r] = self.accepted.get(r, 0) + 1
                    reply = b"250 2.0.0 queued for %s\r\n" % who.encode()
                    if bad and self.mode == "stray":
                        reply += b"354 unsolicited\r\n"
                    c.sendall(reply)
                elif verb == b"RSET":
                    c.sendall(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    c.sendall(b"221 2.0.0 bye\r\n")
                    return
                else:
                    c.sendall(b"500 5.5.2 what\r\n")
        except OSError:
            pass
        finally:
            f.close()
            c.close()


def bench(port, *args):
    p = subprocess.run([VOLLEY, "bench", "smtp://127.0.0.1:%d" % port, "-n", "3", "-c", "1",
                        "--json", "--timeout", "5000"] + list(args),
                       capture_output=True, text=True, timeout=120)
    out = None
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        pass
    return p.returncode, out, p.stdout + p.stderr


def campaign(tmp, name, srv):
    d = os.path.join(tmp, name)
    return d, make_campaign(d, name, 3, [{
        "name": "hostile", "domains": ["*"], "route": "smtp://127.0.0.1:%d" % srv.port,
        "max_connections": 1}])


def send(camp, until=None, timeout=120):
    """volley send; with until (a function), SIGTERM once it holds (every
    row tried once, say) and the rows are left deferred."""
    p = subprocess.Popen([VOLLEY, "send", camp, "--no-progress"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    if until:
        t0 = time.monotonic()
        while not until() and time.monotonic() - t0 < 30 and p.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)  # the results are recorded
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    try:
        out = p.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        p.kill()
        out = p.communicate()[0] + "\n(did not finish)"
    return p.returncode, out


def rows_of(d, name):
    path = os.path.join(d, ".volley", name, "report.csv")
    return read_report(path) if os.path.exists(path) else []


def per_row(rows):
    return json.dumps([(r["row"], r["email"], r["status"], r["attempts"], r["code"],
                        r["response"]) for r in rows])


def own_replies_only(rows):
    """No row carries a reply that names another row's address."""
    for r in rows:
        resp = r["response"]
        if "queued for" in resp and r["email"] not in resp:
            return False
    return True


def test_early_reply_bench(tmp):
    srv = Hostile("early")
    rc, out, text = bench(srv.port)
    srv.stop()
    o = (out or {}).get("outcomes", {})
    check("354 + early 250, bench: exit 75 (temporary failure), no crash", rc == 75, text)
    check("354 + early 250, bench: none delivered or rejected, 3 failed",
          o.get("delivered") == 0 and o.get("rejected") == 0 and o.get("failed") == 3, text)
    err = ((out or {}).get("first_failure") or {}).get("error", "")
    check("354 + early 250, bench: the error names the server's fault",
          "server sent a reply before the message content" in err and "250 early" in err,
          text)
    check("354 + early 250, bench: no content was sent", srv.contents == 0,
          "%d contents" % srv.contents)


def test_early_reply_send(tmp):
    """The first connection sends 354 and 250 early together: row 1 fails
    before its content went out and is sent again; every row ends delivered
    by its own reply, the server took each once."""
    srv = Hostile("early", bad_conns=1)
    d, camp = campaign(tmp, "early", srv)
    rc, out = send(camp)
    srv.stop()
    rows = rows_of(d, "early")
    check("354 + early 250 on the first connection, send: exit 0", rc == 0, out)
    by = {}
    for r in rows:
        by[r["status"]] = by.get(r["status"], 0) + 1
    check("send: 3 rows, each delivered, none bounced",
          len(rows) == 3 and by.get("delivered") == 3, per_row(rows))
    check("send: no row delivered by the early 250 or decided by another row's reply",
          all("early" not in r["response"] for r in rows) and own_replies_only(rows)
          and all("queued for " + r["email"] in r["response"] for r in rows), per_row(rows))
    check("send: the server took each row's content exactly once",
          sorted(srv.accepted.items()) == sorted((r["email"], 1) for r in rows),
          json.dumps(srv.accepted))
    check("send: the row that met the early reply was tried twice",
          sorted(int(r["attempts"]) for r in rows) == [1, 1, 2], per_row(rows))


def test_early_reply_send_always(tmp):
    """Every connection misbehaves: each row is tried, left deferred with the
    server's fault as its response; never delivered, never bounced."""
    srv = Hostile("early")
    d, camp = campaign(tmp, "always", srv)
    rc, out = send(camp, until=lambda: srv.datas >= 3)
    srv.stop()
    rows = rows_of(d, "always")
    # A send stopped by SIGTERM with rows left exits 75 (temporary failure: a
    # rerun resumes); it exited 0, as if done.
    check("354 + early 250 always, send stopped: exit 75, no crash",
          rc == 75, "exit %d\n%s" % (rc, out))
    check("send: 3 rows, all deferred, none delivered or bounced",
          len(rows) == 3 and all(r["status"] == "deferred" for r in rows), per_row(rows))
    check("send: each row's response names the server's fault",
          rows and all("server sent a reply before the message content" in r["response"]
                       for r in rows), per_row(rows))


def test_stray_reply(tmp):
    """A stray 354 behind the content's 250 (the reply that, shifted, made
    QUIT's answer a 354): the 250 stands, the connection ends, the message
    that had started on it fails untried; no reply is matched to another
    command."""
    for pipelining in (True, False):
        label = "pipelined" if pipelining else "lock-step"
        srv = Hostile("stray", pipelining=pipelining)
        rc, out, text = bench(srv.port)
        srv.stop()
        o = (out or {}).get("outcomes", {})
        check("stray 354, %s bench: exit 75, 2 delivered, 1 failed, none rejected" % label,
              rc == 75 and o.get("delivered") == 2 and o.get("failed") == 1
              and o.get("rejected") == 0, text)
        err = ((out or {}).get("first_failure") or {}).get("error", "")
        check("stray 354, %s bench: the error names the server's fault" % label,
              "354 unsolicited" in err and "server" in err, text)
        check("stray 354, %s bench: the server took 2 contents" % label, srv.contents == 2,
              "%d" % srv.contents)

    srv = Hostile("stray", bad_conns=1)
    d, camp = campaign(tmp, "stray", srv)
    rc, out = send(camp)
    srv.stop()
    rows = rows_of(d, "stray")
    check("stray 354 on the first connection, send: exit 0", rc == 0, out)
    check("send: 3 rows delivered, each by its own reply",
          len(rows) == 3 and all(r["status"] == "delivered" for r in rows)
          and all("queued for " + r["email"] in r["response"] for r in rows), per_row(rows))
    check("send: the server took each row's content exactly once",
          sorted(srv.accepted.items()) == sorted((r["email"], 1) for r in rows),
          json.dumps(srv.accepted))


def test_unsolicited_after_greeting(tmp):
    srv = Hostile("greet")
    rc, out, text = bench(srv.port)
    srv.stop()
    o = (out or {}).get("outcomes", {})
    err = ((out or {}).get("first_failure") or {}).get("error", "")
    check("250 behind the greeting, bench: exit 69 (unavailable), none delivered",
          rc == 69 and o.get("delivered") == 0 and o.get("failed") == 3, text)
    check("250 behind the greeting, bench: the error names the server's fault",
          "server sent a reply that no command asked for" in err and "unsolicited" in err,
          text)
    check("250 behind the greeting, bench: no MAIL got through", srv.datas == 0,
          "%d" % srv.datas)


def test_malformed_replies(tmp):
    for mode, what in (("code999", "reply code out of range"),
                       ("longline", "reply line too long")):
        srv = Hostile(mode)
        rc, out, text = bench(srv.port)
        srv.stop()
        o = (out or {}).get("outcomes", {})
        err = ((out or {}).get("first_failure") or {}).get("error", "")
        check("%s, bench: exit 75, 3 failed, none delivered or rejected" % mode,
              rc == 75 and o.get("failed") == 3 and o.get("delivered") == 0
              and o.get("rejected") == 0, text)
        check("%s, bench: the error says the server sent a malformed reply (%s)"
              % (mode, what), "server sent a malformed reply" in err and what in err, text)

        srv = Hostile(mode)
        d, camp = campaign(tmp, mode, srv)
        # Each row's MAIL has drawn the bad reply once: stop the send.
        rc, out = send(camp, until=lambda: srv.conns >= 3)
        srv.stop()
        rows = rows_of(d, mode)
        check("%s, send stopped: a sysexits code, no crash" % mode,
              rc in SYSEXITS, "exit %d\n%s" % (rc, out))
        check("%s, send: no row delivered or bounced; the tried ones say why" % mode,
              len(rows) == 3 and all(r["status"] in ("deferred", "queued") for r in rows)
              and any("malformed reply" in r["response"] for r in rows)
              and all("malformed reply" in r["response"] for r in rows
                      if r["status"] == "deferred"), per_row(rows))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        run_tests([test_early_reply_bench, test_early_reply_send, test_early_reply_send_always,
                   test_stray_reply, test_unsolicited_after_greeting, test_malformed_replies],
                  tmp)
