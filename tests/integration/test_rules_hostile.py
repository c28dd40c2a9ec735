#!/usr/bin/python3
"""`volley send` against servers that break the protocol with a reply that is no
failure where one was expected (250 to DATA instead of 354, 354 to RCPT).
They crashed send with SIGSEGV (issue 20): rl_decide
left its action unfilled and the worker formatted a garbage rule id. Now the
session refuses such a reply as one the command cannot draw, each row is
retried and then fails, and its response names the reply. (A code
outside 200-599 never reaches the rules: the reply reader refuses it and the
session ends as a protocol failure; ratelimit/test_rules.c covers rl_decide
for those.) Prints TAP."""

import asyncio
import os
import subprocess
import tempfile
import threading

from vtest import VOLLEY, check, make_campaign, read_report, run_tests


class HostileSMTP:
    """A tiny SMTP server on 127.0.0.1 and a free port, in a thread, that
    answers the command `verb` with `reply` and everything else as a
    well-behaved server would."""

    def __init__(self, verb, reply):
        self.verb, self.reply = verb, reply
        self.sessions = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.t = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.t.start()
        ready.wait(10)

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._session, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _session(self, reader, writer):
        self.sessions += 1
        writer.write(b"220 hostile.test ESMTP\r\n")
        in_data = False
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        writer.write(b"250 2.0.0 queued\r\n")
                    continue
                verb = line[:4].upper().decode("ascii", "replace")
                if verb == self.verb:
                    writer.write(self.reply.encode() + b"\r\n")
                elif verb == "EHLO":
                    writer.write(b"250-hostile.test\r\n250 8BITMIME\r\n")
                elif verb == "DATA":
                    in_data = True
                    writer.write(b"354 go ahead\r\n")
                elif verb == "QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 2.0.0 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    def stop(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.t.join(10)


def run_case(tmp, name, verb, reply):
    d = os.path.join(tmp, name)
    srv = HostileSMTP(verb, reply)
    n = 2
    camp = make_campaign(d, name, n, [{
        "name": "p", "domains": ["*"], "route": "smtp://127.0.0.1:%d" % srv.port,
        "max_connections": 1}])
    try:
        p = subprocess.run([VOLLEY, "send", camp, "--no-progress", "--retry-base-ms", "20"],
                           capture_output=True, text=True, timeout=120)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = None, "send did not finish in 120 s: %s" % e
    srv.stop()
    check("%s: %s answered %r: send exits with a sysexits code, no crash (rc %s)"
          % (name, verb, reply, rc), rc is not None and 0 <= rc < 128, out)
    path = os.path.join(d, ".volley", name, "report.csv")
    rows = read_report(path) if os.path.exists(path) else []
    check("%s: both rows failed in the end, after retries" % name,
          len(rows) == n and all(r["status"] == "failed" and int(r["attempts"]) > 1
                                 for r in rows), rows or out)
    # The engine refuses the reply as one the command cannot draw (RFC 5321 4.3.2), so it
    # never reaches the rules as a verdict; the response quotes it and names the command.
    code = reply.split()[0]
    check("%s: each row's response names the reply %s and the command it answered"
          % (name, code),
          len(rows) == n and all(('"%s ' % code) in r["response"]
                                 and ("answered %s" % verb) in r["response"] for r in rows),
          rows)


def test_data_250(tmp):
    run_case(tmp, "data250", "DATA", "250 2.0.0 ok")


def test_rcpt_354(tmp):
    run_case(tmp, "rcpt354", "RCPT", "354 go ahead")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        run_tests([test_data_250, test_rcpt_354], tmp)
