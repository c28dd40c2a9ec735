#!/usr/bin/python3
"""Integration tests of `volley bench` against three independent servers:
volley-sink, postfix's smtp-sink and Python's aiosmtpd. Exact counts: what
volley says it delivered is what the server accepted. Also TLS with
certificates made here (verified, wrong host name, unknown CA, implicit TLS)
and AUTH (success, 535). Prints TAP."""

import json
import os
import socket
import subprocess
import tempfile
import time

from vtest import SRCDIR, VOLLEY, Sink, check, run_tests, wait_up


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def bench(url, *args, env=None, timeout=120):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([VOLLEY, "bench", url, "--json"] + list(args), capture_output=True,
                       text=True, env=e, timeout=timeout)
    out = None
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else None
    except (ValueError, IndexError):
        pass
    return p.returncode, out, p.stdout + p.stderr


def test_volley_sink(tmp):
    for args, label in ((["-c", "10", "-n", "3000", "-s", "1500"], "pipelined BDAT"),
                        (["-c", "7", "-n", "1001", "-s", "3000", "--no-chunking"], "pipelined DATA"),
                        (["-c", "3", "-n", "200", "--no-pipelining"], "lock-step"),
                        (["-c", "5", "-n", "500", "-r", "3", "--no-chunking"], "3 recipients"),
                        # 6 MB messages overflow the socket buffer: the engine's
                        # first write is partial and the rest is queued.
                        (["-c", "2", "-n", "4", "-s", "6000000"], "6 MB BDAT"),
                        (["-c", "2", "-n", "4", "-s", "6000000", "--no-chunking"],
                         "6 MB DATA")):
        sink = Sink(tmp)
        rc, out, text = bench("smtp://" + sink.addr, "--no-tls", *args)
        st = sink.stop()
        n = int(args[args.index("-n") + 1])
        r = int(args[args.index("-r") + 1]) if "-r" in args else 1
        check("volley-sink %s: exit 0, %d delivered" % (label, n),
              rc == 0 and out and out["outcomes"]["delivered"] == n, text)
        check("volley-sink %s: the sink accepted exactly %d messages, %d recipients"
              % (label, n, n * r),
              st["messages"] == n and st["recipients"] == n * r, json.dumps(st))
        if label == "pipelined DATA":
            log = sink.log()
            check("PIPELINING on the wire: every transaction's commands in one read",
                  len(log) == n and all(m["cmd_reads"] == 1 for m in log),
                  str([m["cmd_reads"] for m in log][:20]))
        if label.startswith("6 MB"):
            sizes = [m["size"] for m in sink.log()]
            check("%s: every message arrived whole (%s bytes)" % (label, sizes[:1]),
                  len(sizes) == n and len(set(sizes)) == 1 and sizes[0] >= 6000000, sizes)
        if label == "lock-step":
            log = sink.log()
            check("lock-step on the wire: MAIL, RCPT, DATA in separate reads",
                  len(log) == n and all(m["cmd_reads"] >= 3 for m in log),
                  str([m["cmd_reads"] for m in log][:20]))


def test_smtp_sink(tmp):
    pf = subprocess.run([os.path.join(SRCDIR, "scripts", "get-postfix")], capture_output=True,
                        text=True)
    check("postfix's smtp-sink is unpacked (scripts/get-postfix)", pf.returncode == 0,
          pf.stderr)
    if pf.returncode:
        return
    sbin = pf.stdout.strip()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.path.join(sbin, "..", "lib", "postfix")
    dump = os.path.join(tmp, "dump")
    os.makedirs(dump)
    os.chmod(tmp, 0o777)
    os.chmod(dump, 0o777)
    port = free_port()
    cmd = [os.path.join(sbin, "smtp-sink")]
    if os.getuid() == 0:
        cmd += ["-u", "nobody"]
    # -d: one file per mail transaction, so the count is exact.
    cmd += ["-d", os.path.join(dump, "%H%M%S."), "127.0.0.1:%d" % port, "100"]
    errpath = os.path.join(tmp, "smtp-sink.stderr")
    with open(errpath, "w") as err:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    up, why = wait_up(p, lambda: socket.create_connection(("127.0.0.1", port),
                                                          timeout=0.2).close() or True,
                      "postfix's smtp-sink", errpath)
    check("postfix's smtp-sink started", up, why)
    if not up:
        p.kill()
        p.wait(timeout=10)
        return
    n = 700
    rc, out, text = bench("smtp://127.0.0.1:%d" % port, "-c", "10", "-n", str(n), "-s", "1200")
    time.sleep(0.3)
    p.terminate()
    p.wait(timeout=10)
    files = os.listdir(dump)
    with open(errpath, errors="replace") as f:
        sink_err = f.read()
    check("smtp-sink: exit 0, %d delivered" % n,
          rc == 0 and out and out["outcomes"]["delivered"] == n,
          text + ("\nsmtp-sink's stderr:\n" + sink_err if sink_err else ""))
    check("smtp-sink: exactly %d transactions dumped" % n, len(files) == n, len(files))


AIOSMTPD_SERVER = r"""
import asyncio, sys, threading, signal
from aiosmtpd.controller import Controller
class H:
    def __init__(self): self.n = 0; self.rcpts = 0
    async def handle_DATA(self, server, session, envelope):
        self.n += 1; self.rcpts += len(envelope.rcpt_tos)
        return '250 OK'
h = H()
c = Controller(h, hostname='127.0.0.1', port=int(sys.argv[1]))
c.start()
print('ready', flush=True)
sys.stdin.read()
c.stop()
print('%d %d' % (h.n, h.rcpts), flush=True)
"""


def test_aiosmtpd(tmp):
    port = free_port()
    p = subprocess.Popen(["/usr/bin/python3", "-c", AIOSMTPD_SERVER, str(port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    ready = p.stdout.readline().strip()
    check("aiosmtpd started", ready == "ready", p.stderr.read() if ready != "ready" else "")
    if ready != "ready":
        return
    n = 400
    rc, out, text = bench("smtp://127.0.0.1:%d" % port, "-c", "4", "-n", str(n), "-s", "2000",
                          "-r", "2")
    p.stdin.close()
    counts = p.stdout.readline().split()
    p.wait(timeout=20)
    check("aiosmtpd: exit 0, %d delivered" % n,
          rc == 0 and out and out["outcomes"]["delivered"] == n, text)
    check("aiosmtpd: accepted exactly %d messages, %d recipients" % (n, 2 * n),
          counts == [str(n), str(2 * n)], counts)


def test_tls(tmp):
    certs = os.path.join(tmp, "certs")
    subprocess.run(["sh", os.path.join(SRCDIR, "tests", "support", "gen-certs.sh"), certs],
                   check=True)
    # A certificate for another name, signed by the same CA.
    subprocess.run(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-keyout wrong.key -out wrong.csr -subj /CN=wrong.example 2>/dev/null && "
        "printf 'subjectAltName=DNS:wrong.example\\n' > wrong.ext && "
        "openssl x509 -req -in wrong.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
        "-out wrong.pem -days 30 -extfile wrong.ext 2>/dev/null",
        shell=True, cwd=certs, check=True)
    ca = os.path.join(certs, "ca.pem")
    tls = ["--tls-cert", os.path.join(certs, "server.pem"),
           "--tls-key", os.path.join(certs, "server.key")]

    sink = Sink(tmp, *tls, "--require-tls")
    rc, out, text = bench("smtp://" + sink.addr, "-c", "3", "-n", "60", "--ca-file", ca)
    st = sink.stop()
    check("STARTTLS verified against the test CA: 60 delivered",
          rc == 0 and out["outcomes"]["delivered"] == 60 and st["messages"] == 60
          and st["tls_handshakes"] >= 3, text + json.dumps(st))

    sink = Sink(tmp, *tls)
    rc, out, text = bench("smtp://localhost:%d" % sink.port, "-c", "2", "-n", "10",
                          "--ca-file", ca)
    sink.stop()
    check("STARTTLS by host name 'localhost': delivered", rc == 0, text)

    sink = Sink(tmp, *tls)
    rc, out, text = bench("smtp://" + sink.addr, "-c", "2", "-n", "10")
    st = sink.stop()
    check("unknown CA (system store): refused, exit 69, nothing sent",
          rc == 69 and out["outcomes"]["failed"] == 10 and st["messages"] == 0
          and "certificate" in out["first_failure"]["error"], text)

    sink = Sink(tmp, *tls)
    rc, out, text = bench("smtp://" + sink.addr, "-c", "2", "-n", "10", "--ca-file",
                          os.path.join(certs, "other-ca.pem"))
    sink.stop()
    check("a CA that did not sign the certificate: refused with the reason",
          rc == 69 and "unable to get local issuer" in out["first_failure"]["error"], text)

    sink = Sink(tmp, "--tls-cert", os.path.join(certs, "wrong.pem"),
                "--tls-key", os.path.join(certs, "wrong.key"))
    rc, out, text = bench("smtp://" + sink.addr, "-c", "1", "-n", "5", "--ca-file", ca)
    sink.stop()
    check("wrong host name: refused with the reason",
          rc == 69 and "mismatch" in out["first_failure"]["error"], text)

    sink = Sink(tmp, *tls, "--implicit-tls")
    rc, out, text = bench("smtps://" + sink.addr, "-c", "3", "-n", "30", "--ca-file", ca)
    st = sink.stop()
    check("implicit TLS (smtps): 30 delivered", rc == 0 and st["messages"] == 30, text)

    sink = Sink(tmp, *tls, "--auth-user", "alice", env={"VOLLEY_SINK_PASSWORD": "right pw"})
    rc, out, text = bench("smtp://alice@" + sink.addr, "-c", "2", "-n", "20", "--ca-file", ca,
                          env={"VOLLEY_SMTP_PASSWORD": "right pw"})
    st = sink.stop()
    check("AUTH after STARTTLS: 20 delivered", rc == 0 and st["messages"] == 20, text)
    log = sink.log()
    check("the sink saw TLS and AUTH on every message",
          all(m["tls"] and m["auth"] for m in log) and len(log) == 20, log[:2])

    sink = Sink(tmp, *tls, "--auth-user", "alice", env={"VOLLEY_SINK_PASSWORD": "right pw"})
    rc, out, text = bench("smtp://alice@" + sink.addr, "-c", "2", "-n", "20", "--ca-file", ca,
                          env={"VOLLEY_SMTP_PASSWORD": "wrong pw"})
    st = sink.stop()
    check("AUTH with a wrong password: 535, exit 69, nothing accepted",
          rc == 69 and out["first_failure"]["code"] == 535 and st["messages"] == 0, text)
    check("the password appears nowhere in volley's output", "wrong pw" not in text, text)

    sink = Sink(tmp, *tls, "--auth-user", "alice", env={"VOLLEY_SINK_PASSWORD": "right pw"})
    rc, out, text = bench("smtp://alice:right%20pw@" + sink.addr, "-c", "1", "-n", "3",
                          "--ca-file", ca)
    sink.stop()
    check("a password in the URL works but is warned about",
          rc == 0 and "warning" in text and "visible" in text, text)


def test_faults(tmp):
    sink = Sink(tmp, "--reject-rcpt", "^user[0-9]*7@")
    rc, out, text = bench("smtp://" + sink.addr, "--no-tls", "-c", "4", "-n", "160")
    st = sink.stop()
    rej = out["outcomes"]["rejected"] if out else -1
    check("550 for matching recipients: rejected and delivered add up, exit 75",
          rc == 75 and rej > 0 and out["outcomes"]["delivered"] + rej == 160
          and st["messages"] == out["outcomes"]["delivered"]
          and st["rejected"]["reject_rcpt"] == rej, text + json.dumps(st))

    sink = Sink(tmp, "--drop-mid-data", "0.2", "--seed", "7")
    rc, out, text = bench("smtp://" + sink.addr, "--no-tls", "-c", "4", "-n", "200",
                          "--no-chunking")
    st = sink.stop()
    o = out["outcomes"] if out else {}
    check("connections dropped mid-DATA: never counted as delivered",
          out and o["delivered"] == st["messages"] and o["delivered"] + o["failed"] +
          o["unknown"] == 200 and o["failed"] + o["unknown"] > 0, text + json.dumps(st))

    port = free_port()
    rc, out, text = bench("smtp://127.0.0.1:%d" % port, "-c", "3", "-n", "10")
    check("refused connection: every message failed at connect, exit 69",
          rc == 69 and out["outcomes"]["failed"] == 10
          and out["first_failure"]["stage"] == "connect", text)


def test_helo(tmp):
    """--helo goes on the wire as it is: CR/LF in it put an injected MAIL FROM
    after EHLO (issue 20). It must be a domain or an address literal."""
    for bad in ("x\r\nMAIL FROM:<a@b>", "a b", ""):
        p = subprocess.run([VOLLEY, "bench", "--helo", bad, "smtp://127.0.0.1:1"],
                           capture_output=True, text=True, timeout=30)
        check("--helo %r: usage error, exit 64, the message names --helo" % bad,
              p.returncode == 64 and "--helo" in p.stderr, p.stdout + p.stderr)
    sink = Sink(tmp)
    for good in ("bench.example.com", "[127.0.0.1]", "[IPv6:::1]"):
        rc, out, text = bench("smtp://" + sink.addr, "--no-tls", "-c", "1", "-n", "2",
                              "--helo", good)
        check("--helo %s: accepted, 2 delivered" % good,
              rc == 0 and out and out["outcomes"]["delivered"] == 2, text)
    sink.stop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        run_tests([test_volley_sink, test_smtp_sink, test_aiosmtpd, test_tls, test_faults,
                   test_helo], tmp)
