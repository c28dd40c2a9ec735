#!/usr/bin/python3
"""Integration tests of bench/volley-sink, driven by Python's smtplib and raw
sockets. Prints TAP. Needs $VOLLEY_SINK (set by meson) or a build directory."""

import base64
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import traceback

SRCDIR = os.environ.get("SRCDIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
SINK = os.environ.get("VOLLEY_SINK") or os.path.join(SRCDIR, "build", "bench", "volley-sink")
TMP = tempfile.mkdtemp(prefix="volley-sink-test-")
CERTS = os.path.join(TMP, "certs")
PROCS = []


class Sink:
    """A running volley-sink on 127.0.0.1 and a port it picked."""

    def __init__(self, *args, env=None):
        self.log = os.path.join(TMP, "log-%d.jsonl" % len(PROCS))
        self.stats = os.path.join(TMP, "stats-%d.json" % len(PROCS))
        cmd = [SINK, "--listen", "127.0.0.1:0", "--log", self.log, "--stats", self.stats,
               "--max-seconds", "60"] + list(args)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=full_env, text=True)
        PROCS.append(self.proc)
        first = self.proc.stdout.readline()
        if not first.startswith("listening 127.0.0.1:"):
            raise AssertionError("unexpected first line %r; stderr: %s"
                                 % (first, self.proc.stderr.read()))
        self.port = int(first.rsplit(":", 1)[1])

    def smtp(self, **kw):
        return smtplib.SMTP("127.0.0.1", self.port, timeout=10, **kw)

    def sock(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return s

    def log_lines(self):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def stop(self):
        """SIGTERM; returns the statistics (file and last stdout line agree)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, "exit %s: %s" % (self.proc.returncode, err)
        last = out.strip().splitlines()[-1]
        with open(self.stats) as f:
            st = json.load(f)
        assert json.loads(last) == st, "stdout stats differ from the file"
        return st


def read_reply(f):
    """One (multi-line) reply from a socket file: (code, [texts])."""
    texts = []
    while True:
        line = f.readline()
        if not line:
            raise EOFError("connection closed")
        line = line.decode("utf-8", "replace").rstrip("\r\n")
        texts.append(line[4:])
        if len(line) < 4 or line[3] != "-":
            return int(line[:3]), texts


def greet(s, name="tester"):
    f = s.makefile("rb")
    code, _ = read_reply(f)
    assert code == 220, code
    s.sendall(b"EHLO %s\r\n" % name.encode())
    code, ext = read_reply(f)
    assert code == 250, code
    return f, ext


def cmd(s, f, line):
    s.sendall(line.encode() + b"\r\n")
    return read_reply(f)


MSG = (b"From: a@example.com\r\nTo: b@example.com\r\nMessage-ID: <m1@example.com>\r\n"
       b"Subject: test\r\n\r\nHello.\r\n.leading dot\r\n")


# ---- tests ----

def t_plain_log_stats():
    sk = Sink()
    with sk.smtp() as c:
        c.ehlo("tester")
        assert c.has_extn("pipelining") and c.has_extn("chunking") and c.has_extn("8bitmime")
        assert c.has_extn("smtputf8") and c.has_extn("enhancedstatuscodes")
        assert not c.has_extn("starttls") and not c.has_extn("auth")
        c.sendmail("a@example.com", ["b@example.com", "c@example.com"], MSG)
        c.sendmail("<>", ["d@example.com"], b"Subject: no id\r\n\r\nbody\r\n")
    lines = sk.log_lines()
    st = sk.stop()
    assert len(lines) == 2, lines
    one = lines[0]
    assert one["from"] == "a@example.com" and one["rcpts"] == ["b@example.com", "c@example.com"]
    assert one["message_id"] == "<m1@example.com>", one
    assert one["size"] == len(MSG), (one["size"], len(MSG))  # dot-stuffing undone
    assert one["tls"] is False and one["auth"] is False
    assert lines[1]["message_id"] is None and lines[1]["from"] == ""
    assert lines[0]["conn"] == lines[1]["conn"]
    assert st["messages"] == 2 and st["recipients"] == 3 and st["connections"] == 1, st
    assert st["bytes"] == len(MSG) + len(b"Subject: no id\r\n\r\nbody\r\n"), st


def t_extensions_switched_off():
    sk = Sink("--no-pipelining", "--no-chunking", "--no-8bitmime", "--no-smtputf8",
              "--hostname", "mx.test")
    with sk.smtp() as c:
        code, text = c.ehlo("tester")
        assert code == 250 and text.startswith(b"mx.test"), text
        for ext in ("pipelining", "chunking", "8bitmime", "smtputf8"):
            assert not c.has_extn(ext), ext
        assert c.has_extn("size")
        code, _ = c.mail("a@example.com", ["BODY=8BITMIME"])
        assert code == 555, code
        c.rset()
        code, _ = c.docmd("BDAT 3 LAST")
        assert code == 500, code
    sk.stop()


def t_size_limit():
    sk = Sink("--size-limit", "100")
    with sk.smtp() as c:
        c.ehlo("tester")
        assert c.esmtp_features["size"] == "100", c.esmtp_features
        code, _ = c.mail("a@example.com", ["SIZE=101"])
        assert code == 552, code
        # Without SIZE= the content itself is measured.
        c.rset()
        assert c.mail("a@example.com")[0] == 250
        assert c.rcpt("b@example.com")[0] == 250
        code, _ = c.data(b"X: " + b"y" * 200 + b"\r\n\r\n")
        assert code == 552, code
        c.sendmail("a@example.com", ["b@example.com"], b"Subject: small\r\n\r\nok\r\n")
    st = sk.stop()
    assert st["messages"] == 1 and st["rejected"]["size"] == 2, st


def make_certs():
    if not os.path.exists(os.path.join(CERTS, "server.pem")):
        subprocess.run(["sh", os.path.join(SRCDIR, "tests/support/gen-certs.sh"), CERTS],
                       check=True)


def client_ctx():
    make_certs()
    ctx = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))
    return ctx


def tls_args():
    make_certs()
    return ["--tls-cert", os.path.join(CERTS, "server.pem"),
            "--tls-key", os.path.join(CERTS, "server.key")]


def t_starttls():
    sk = Sink(*tls_args())
    with sk.smtp(local_hostname="tester") as c:
        c.ehlo()
        assert c.has_extn("starttls")
        c.starttls(context=client_ctx())  # verifies the chain and "localhost"? see below
        c.ehlo()
        assert not c.has_extn("starttls")
        c.sendmail("a@example.com", ["b@example.com"], MSG)
    lines = sk.log_lines()
    st = sk.stop()
    assert len(lines) == 1 and lines[0]["tls"] is True, lines
    assert st["tls_handshakes"] == 1, st


def t_starttls_hostname_verified():
    # smtplib verifies against the host it connected to; connect by name so
    # the certificate's DNS:localhost is what gets checked.
    sk = Sink(*tls_args())
    c = smtplib.SMTP("localhost", sk.port, timeout=10)
    c.ehlo("tester")
    c.starttls(context=client_ctx())
    assert c.sock.version() in ("TLSv1.2", "TLSv1.3"), c.sock.version()
    c.quit()
    # An unrelated CA must be refused.
    ctx = ssl.create_default_context(cafile=os.path.join(CERTS, "other-ca.pem"))
    c = smtplib.SMTP("localhost", sk.port, timeout=10)
    c.ehlo("tester")
    try:
        c.starttls(context=ctx)
        raise AssertionError("an unknown CA was accepted")
    except ssl.SSLCertVerificationError:
        pass
    c.close()
    st = sk.stop()
    assert st["tls_handshakes"] == 1 and st["tls_failures"] == 1, st


def t_starttls_injection_dropped():
    sk = Sink(*tls_args())
    s = sk.sock()
    f, _ = greet(s)
    # A command pipelined after STARTTLS in clear must not be executed.
    s.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n")
    code, _ = read_reply(f)
    assert code == 220, code
    ts = client_ctx().wrap_socket(s, server_hostname="localhost")
    tf = ts.makefile("rb")
    ts.sendall(b"NOOP\r\n")
    code, _ = read_reply(tf)
    assert code == 250, code  # not the reply to the injected MAIL
    ts.sendall(b"MAIL FROM:<a@example.com>\r\n")
    code, _ = read_reply(tf)
    assert code == 503, code  # EHLO again first: state was reset
    ts.close()
    sk.stop()


def t_implicit_tls():
    sk = Sink("--implicit-tls", *tls_args())
    with smtplib.SMTP_SSL("localhost", sk.port, timeout=10, context=client_ctx()) as c:
        c.ehlo("tester")
        assert not c.has_extn("starttls")
        c.sendmail("a@example.com", ["b@example.com"], MSG)
    lines = sk.log_lines()
    sk.stop()
    assert len(lines) == 1 and lines[0]["tls"] is True, lines


def t_require_tls():
    sk = Sink("--require-tls", *tls_args())
    with sk.smtp() as c:
        c.ehlo("tester")
        code, msg = c.mail("a@example.com")
        assert code == 530 and b"5.7.0" in msg, (code, msg)
        c.starttls(context=client_ctx())
        c.ehlo("tester")
        code, _ = c.mail("a@example.com")
        assert code == 250, code
    st = sk.stop()
    assert st["rejected"]["tls_required"] == 1, st


def t_auth():
    pwfile = os.path.join(TMP, "pw")
    with open(pwfile, "w") as f:
        f.write("s3cret pass\n")
    sk = Sink("--auth-user", "alice", "--auth-password-file", pwfile)
    with sk.smtp() as c:
        c.ehlo("tester")
        assert c.has_extn("auth") and "PLAIN" in c.esmtp_features["auth"]
        code, msg = c.mail("a@example.com")
        assert code == 530 and b"5.7.0" in msg, (code, msg)
        c.user, c.password = "alice", "wrong"
        try:
            c.auth("PLAIN", c.auth_plain)
            raise AssertionError("a wrong password was accepted")
        except smtplib.SMTPAuthenticationError as e:
            assert e.smtp_code == 535 and b"5.7.8" in e.smtp_error, e
        c.user, c.password = "alice", "s3cret pass"
        code, _ = c.auth("PLAIN", c.auth_plain)
        assert code == 235, code
        c.sendmail("a@example.com", ["b@example.com"], MSG)
    with sk.smtp() as c:  # AUTH LOGIN, with the challenges
        c.ehlo("tester")
        c.user, c.password = "alice", "s3cret pass"
        code, _ = c.auth("LOGIN", c.auth_login, initial_response_ok=False)
        assert code == 235, code
    lines = sk.log_lines()
    st = sk.stop()
    assert lines[0]["auth"] is True, lines
    assert st["rejected"]["auth"] == 1 and st["rejected"]["auth_required"] == 1, st


def t_auth_env_and_tls_only():
    sk = Sink("--auth-user", "bob", *tls_args(), env={"VOLLEY_SINK_PASSWORD": "pw"})
    with sk.smtp() as c:
        c.ehlo("tester")
        assert not c.has_extn("auth")  # not offered in clear when TLS is possible
        code, _ = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0bob\0pw").decode())
        assert code == 538, code
        c.starttls(context=client_ctx())
        c.ehlo("tester")
        assert c.has_extn("auth")
        c.login("bob", "pw")
    sk.stop()
    # The password never appears in the process's command line.
    assert "pw" not in " ".join(sk.proc.args[1:])


def t_max_conn():
    sk = Sink("--max-conn", "2")
    held = [sk.sock() for _ in range(2)]
    for s in held:
        code, _ = read_reply(s.makefile("rb"))
        assert code == 220
    extra = sk.sock()
    f = extra.makefile("rb")
    code, text = read_reply(f)
    assert code == 421 and text[0].startswith("4.4.5 HL:ICC"), (code, text)
    assert f.read() == b"", "the refused connection stays open"
    for s in held:
        s.close()
    time.sleep(0.2)
    again = sk.sock()
    code, _ = read_reply(again.makefile("rb"))
    assert code == 220, code
    again.close()
    st = sk.stop()
    assert st["rejected"]["max_conn"] == 1 and st["max_concurrent"] >= 3, st


def t_max_msgs_per_conn():
    sk = Sink("--max-msgs-per-conn", "2")
    with sk.smtp() as c:
        c.ehlo("tester")
        for _ in range(2):
            c.sendmail("a@example.com", ["b@example.com"], MSG)
        code, msg = c.mail("a@example.com")
        assert code == 450 and msg.startswith(b"4.7.0 MI:DMC"), (code, msg)
        assert c.noop()[0] == 250  # still connected
    with sk.smtp() as c:  # a new connection starts afresh
        c.sendmail("a@example.com", ["b@example.com"], MSG)
    st = sk.stop()
    assert st["messages"] == 3 and st["rejected"]["max_msgs_per_conn"] == 1, st


def t_max_rcpts_per_conn():
    sk = Sink("--max-rcpts-per-conn", "3")
    with sk.smtp() as c:
        c.ehlo("tester")
        c.mail("a@example.com")
        for i in range(3):
            assert c.rcpt("r%d@example.com" % i)[0] == 250
        code, msg = c.rcpt("r4@example.com")
        assert code == 450 and msg.startswith(b"4.7.0 RP:DRC"), (code, msg)
    st = sk.stop()
    assert st["rejected"]["max_rcpts_per_conn"] == 1, st


def t_max_rate():
    sk = Sink("--max-rate", "5")
    with sk.smtp() as c:
        c.ehlo("tester")
        codes = []
        for _ in range(8):
            code, msg = c.mail("a@example.com")
            codes.append(code)
            if code == 451:
                assert msg.startswith(b"4.7.0 MI:SFQ"), msg
            c.rset()
        assert codes.count(250) == 5 and codes.count(451) == 3, codes
        time.sleep(1.1)
        assert c.mail("a@example.com")[0] == 250
    st = sk.stop()
    assert st["rejected"]["max_rate"] == 3, st


def t_reject_rcpt():
    sk = Sink("--reject-rcpt", "^(bad|gone)@")
    with sk.smtp() as c:
        c.ehlo("tester")
        c.mail("a@example.com")
        code, msg = c.rcpt("bad@example.com")
        assert code == 550 and msg == b"5.1.1 Invalid User", (code, msg)
        assert c.rcpt("good@example.com")[0] == 250
        assert c.rcpt("gone@example.com")[0] == 550
    st = sk.stop()
    assert st["rejected"]["reject_rcpt"] == 2, st


def t_random_4xx():
    sk = Sink("--random-4xx", "1")
    with sk.smtp() as c:
        c.ehlo("tester")
        code, msg = c.mail("a@example.com")
        assert code == 451 and b"local error in processing" in msg, (code, msg)
    sk.stop()
    # At 0.5 with a seed, both outcomes occur and the run repeats exactly.
    runs = []
    for _ in range(2):
        sk = Sink("--random-4xx", "0.5", "--seed", "42")
        with sk.smtp() as c:
            c.ehlo("tester")
            codes = []
            for _ in range(20):
                codes.append(c.mail("a@example.com")[0])
                c.rset()
        sk.stop()
        runs.append(codes)
    assert runs[0] == runs[1], runs
    assert 250 in runs[0] and 451 in runs[0], runs[0]


def t_delay():
    sk = Sink("--delay-ms", "300")
    t0 = time.monotonic()
    with sk.smtp() as c:  # greeting
        t1 = time.monotonic()
        c.noop()
        t2 = time.monotonic()
    sk.stop()
    assert t1 - t0 >= 0.25 and t2 - t1 >= 0.25, (t1 - t0, t2 - t1)
    assert t2 - t1 < 5, t2 - t1


def t_drop_mid_data():
    sk = Sink("--drop-mid-data", "1")
    s = sk.sock()
    f, _ = greet(s)
    assert cmd(s, f, "MAIL FROM:<a@example.com>")[0] == 250
    assert cmd(s, f, "RCPT TO:<b@example.com>")[0] == 250
    assert cmd(s, f, "DATA")[0] == 354
    try:
        s.sendall(b"Subject: x\r\n\r\nfirst part\r\n")
        time.sleep(0.1)
        s.sendall(b"rest\r\n.\r\n")
        rest = f.read()
    except (ConnectionResetError, BrokenPipeError):
        rest = b""
    assert rest == b"", "got a reply after the drop: %r" % rest
    st = sk.stop()
    assert st["messages"] == 0 and st["rejected"]["drop_mid_data"] == 1, st


def t_pipelined_batch_one_read():
    sk = Sink()
    s = sk.sock()
    f, _ = greet(s)
    s.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
              b"RCPT TO:<c@example.com>\r\nDATA\r\n")
    codes = [read_reply(f)[0] for _ in range(4)]
    assert codes == [250, 250, 250, 354], codes
    # Content, final dot and the next transaction in one write (as volley does).
    s.sendall(MSG + b".\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n")
    codes = [read_reply(f)[0] for _ in range(4)]
    assert codes == [250, 250, 250, 354], codes
    s.sendall(MSG + b".\r\n")
    assert read_reply(f)[0] == 250
    # Lock-step for contrast: three reads.
    for line in ("MAIL FROM:<a@example.com>", "RCPT TO:<e@example.com>", "DATA"):
        cmd(s, f, line)
    s.sendall(MSG + b".\r\n")
    assert read_reply(f)[0] == 250
    s.sendall(b"QUIT\r\n")
    assert read_reply(f)[0] == 221
    lines = sk.log_lines()
    sk.stop()
    assert [m["cmd_reads"] for m in lines] == [1, 1, 3], lines
    assert lines[0]["rcpts"] == ["b@example.com", "c@example.com"]


def t_pipelined_replies_one_write():
    # The replies to one read leave in one write: with the client's socket
    # buffer read only after a pause, all four arrive; reading them with a
    # single recv right after the first byte shows they were not trickled.
    sk = Sink()
    s = sk.sock()
    f, _ = greet(s)
    s.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nNOOP\r\nRSET\r\n")
    s.setblocking(True)
    data = s.recv(65536)
    assert data.count(b"\r\n") == 4, data
    s.close()
    sk.stop()


def t_bdat():
    sk = Sink()
    s = sk.sock()
    f, ext = greet(s)
    assert "CHUNKING" in ext
    s.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT %d LAST\r\n"
              % len(MSG) + MSG)
    codes = [read_reply(f)[0] for _ in range(3)]
    assert codes == [250, 250, 250], codes
    # Two chunks, the header split between them.
    half = 30
    s.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT %d\r\n" % half
              + MSG[:half])
    codes = [read_reply(f)[0] for _ in range(3)]
    assert codes == [250, 250, 250], codes
    s.sendall(b"BDAT %d LAST\r\n" % (len(MSG) - half) + MSG[half:])
    assert read_reply(f)[0] == 250
    # BDAT without a transaction: the chunk is consumed, then refused.
    s.sendall(b"BDAT 5 LAST\r\nhelloNOOP\r\n")
    assert read_reply(f)[0] == 503
    assert read_reply(f)[0] == 250
    s.close()
    lines = sk.log_lines()
    st = sk.stop()
    assert [m["size"] for m in lines] == [len(MSG), len(MSG)], lines
    assert [m["message_id"] for m in lines] == ["<m1@example.com>"] * 2, lines
    assert lines[0]["cmd_reads"] == 1, lines
    assert st["messages"] == 2 and st["bytes"] == 2 * len(MSG), st


def t_garbage_and_limits():
    sk = Sink()
    s = sk.sock()
    f, _ = greet(s)
    assert cmd(s, f, "FROB")[0] == 500
    assert cmd(s, f, "X" * 10000)[0] == 500
    assert cmd(s, f, "RCPT TO:<a@example.com>")[0] == 503
    assert cmd(s, f, "DATA")[0] == 503
    assert cmd(s, f, "MAIL FROM:a-bare@example.com")[0] == 250
    assert cmd(s, f, "MAIL FROM:<x@example.com>")[0] == 503  # nested
    assert cmd(s, f, "DATA")[0] == 554  # no recipients
    assert cmd(s, f, "RSET")[0] == 250
    assert cmd(s, f, "MAIL FROM:<x@example.com> FROB=1")[0] == 555
    assert cmd(s, f, "BDAT nonsense")[0] == 501
    s.sendall(bytes(range(256)) * 4 + b"\r\n\0\0\r\n")
    s.sendall(b"NOOP\r\n")
    # Whatever came back for the garbage, the NOOP's 250 comes last.
    s.settimeout(2)
    buf = b""
    while not buf.endswith(b"250 2.0.0 Ok\r\n"):
        chunk = s.recv(65536)
        assert chunk, "closed on garbage"
        buf += chunk
    s.close()
    # Still serving.
    with sk.smtp() as c:
        c.sendmail("a@example.com", ["b@example.com"], MSG)
    st = sk.stop()
    assert st["messages"] == 1, st


def t_many_connections():
    sk = Sink()
    socks = []
    try:
        for _ in range(300):
            socks.append(sk.sock())
        for s in socks:
            assert s.recv(100).startswith(b"220 ")
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    st = sk.stop()
    assert st["connections"] == 300 and st["max_concurrent"] == 300, st


def t_exit_after_messages():
    sk = Sink("--exit-after-messages", "2")
    with sk.smtp() as c:
        c.ehlo("tester")
        c.sendmail("a@example.com", ["b@example.com"], MSG)
        c.sendmail("a@example.com", ["b@example.com"], MSG)
    sk.proc.wait(timeout=5)  # exits by itself once the client left
    st = sk.stop()
    assert st["messages"] == 2, st


def t_usage_errors():
    r = subprocess.run([SINK, "--max-conn", "x"], capture_output=True, text=True)
    assert r.returncode == 64 and "--max-conn" in r.stderr, r
    r = subprocess.run([SINK, "--auth-user", "u"], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "VOLLEY_SINK_PASSWORD"})
    assert r.returncode == 78, r
    r = subprocess.run([SINK, "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
                       capture_output=True, text=True)
    assert r.returncode == 78 and "/nonexistent.pem" in r.stderr, r


def send_fast(port, n, conns=1, mail_from="a@example.com"):
    """Offer n messages as fast as the replies come, over conns connections
    in turn, pipelining MAIL RCPT DATA. Returns the (code, text) of every MAIL,
    in order, and the wall-clock seconds it took."""
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        f, _ = greet(s)
        socks.append((s, f))
    out = []
    t0 = time.monotonic()
    for i in range(n):
        s, f = socks[i % conns]
        body = (b"Message-ID: <fast%d@example.com>\r\nX-Volley-Row: c/%d\r\n\r\nhi\r\n.\r\n"
                % (i, i))
        s.sendall(b"MAIL FROM:<%s>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n" % mail_from.encode())
        code, text = read_reply(f)
        out.append((code, text[0]))
        r2, _ = read_reply(f)
        r3, _ = read_reply(f)
        if code == 250:
            assert r2 == 250 and r3 == 354, (r2, r3)
            s.sendall(body)
            assert read_reply(f)[0] == 250
        else:
            # RCPT and DATA without a transaction: 503 both.
            assert r2 == 503 and r3 == 503, (code, r2, r3)
    for s, f in socks:
        s.sendall(b"QUIT\r\n")
        s.close()
    return out, time.monotonic() - t0


def max_in_window(times, per):
    """The most times in any window [t, t + per)."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + per - 1e-9:
            j += 1
        best = max(best, j - i)
    return best


def t_rate_limit():
    sk = Sink("--rate-limit", "50/s")
    out, secs = send_fast(sk.port, 200, conns=2)
    lines = sk.log_lines()
    st = sk.stop()
    codes = [c for c, _ in out]
    refused = [t for c, t in out if c != 250]
    assert refused and all(t == "4.7.1 Rate limited, try again later" for t in refused), refused[:3]
    assert set(codes) == {250, 451}, set(codes)
    acc = codes.count(250)
    assert len(lines) == acc == st["messages"], (len(lines), acc, st)
    assert st["rejected"]["max_rate"] == len(refused), st
    # Sliding: no window of one second anywhere holds more than 50 (the log's
    # t is when the MAIL was admitted, in ms).
    assert max_in_window([l["t"] for l in lines], 1.0) <= 50, max_in_window(
        [l["t"] for l in lines], 1.0)
    # ... and the limit is used: at least 50 a second over the run, minus the
    # first window's fill.
    assert acc >= 50 * int(secs), (acc, secs)


def t_rate_limit_reply_and_short_period():
    # A NetEase-like reply and a 100 ms period; refused attempts do not count,
    # so hammering while refused does not push the window on.
    sk = Sink("--rate-limit", "5/100ms", "--rate-reply", "451 MI:SFQ too fast")
    with sk.smtp() as c:
        c.ehlo("tester")
        codes = []
        for _ in range(30):
            code, msg = c.mail("a@example.com")
            codes.append(code)
            if code == 451:
                assert msg == b"MI:SFQ too fast", msg
            else:
                c.rset()
        assert codes[:5] == [250] * 5 and 451 in codes, codes
        time.sleep(0.15)
        assert c.mail("a@example.com")[0] == 250
    lines = sk.log_lines()
    st = sk.stop()
    assert st["rejected"]["max_rate"] == codes.count(451), st
    assert lines == [], "RSET transactions are not logged"


def t_rate_reply_421_closes():
    sk = Sink("--rate-limit", "1/min", "--rate-reply", "421 HL:IFC slow down")
    s = sk.sock()
    f, _ = greet(s)
    assert cmd(s, f, "MAIL FROM:<a@example.com>")[0] == 250
    assert cmd(s, f, "RSET")[0] == 250
    code, text = cmd(s, f, "MAIL FROM:<a@example.com>")
    assert code == 421 and text == ["HL:IFC slow down"], (code, text)
    assert f.read() == b"", "a 421 closes the connection"
    sk.stop()


def t_quota():
    sk = Sink("--quota", "20/2s", "--quota-reply", "451 MI:SFQ quota")
    t0 = time.monotonic()
    out, _ = send_fast(sk.port, 40)
    codes = [c for c, _ in out]
    # The first 20 pass, then every MAIL is refused until the window ends.
    assert codes[:20] == [250] * 20 and codes[20:] == [451] * 20, codes
    assert all(t == "MI:SFQ quota" for c, t in out if c == 451)
    assert time.monotonic() - t0 < 1.5, "too slow to test the window"
    time.sleep(max(0, 2.1 - (time.monotonic() - t0)))
    out2, _ = send_fast(sk.port, 25)
    codes2 = [c for c, _ in out2]
    assert codes2[:20] == [250] * 20 and codes2[20:] == [451] * 5, codes2
    st = sk.stop()
    assert st["messages"] == 40 and st["rejected"]["quota"] == 25, st
    # Same Message-ID and row again in the second window: duplicates.
    assert st["duplicates"] == {"message_id": 20, "row": 20}, st


def t_quota_default_reply():
    sk = Sink("--quota", "1/min")
    with sk.smtp() as c:
        c.ehlo("tester")
        assert c.mail("a@example.com")[0] == 250
        c.rset()
        code, msg = c.mail("a@example.com")
        assert code == 451 and msg == b"4.7.1 Sender quota exceeded, try again later", (code, msg)
    sk.stop()


def t_max_msgs_per_conn_reply():
    sk = Sink("--max-msgs-per-conn", "3", "--max-msgs-per-conn-reply",
              "450 4.7.0 too many messages on this connection")
    with sk.smtp() as c:
        c.ehlo("tester")
        for _ in range(3):
            c.sendmail("a@example.com", ["b@example.com"], MSG)
        for _ in range(2):  # refused again and again, the connection open
            code, msg = c.mail("a@example.com")
            assert code == 450 and msg == b"4.7.0 too many messages on this connection", msg
        assert c.noop()[0] == 250
    with sk.smtp() as c:  # a new connection accepts again
        c.sendmail("a@example.com", ["b@example.com"], MSG)
    st = sk.stop()
    assert st["messages"] == 4 and st["rejected"]["max_msgs_per_conn"] == 2, st
    assert st["duplicates"]["message_id"] == 3 and st["duplicates"]["row"] == 0, st


def t_max_conn_reply():
    sk = Sink("--max-conn", "1", "--max-conn-reply", "421 4.7.0 too many connections")
    held = sk.sock()
    assert read_reply(held.makefile("rb"))[0] == 220
    extra = sk.sock()
    f = extra.makefile("rb")
    code, text = read_reply(f)
    assert code == 421 and text == ["4.7.0 too many connections"], (code, text)
    assert f.read() == b""
    held.close()
    st = sk.stop()
    assert st["rejected"]["max_conn"] == 1, st


def t_defer_all():
    sk = Sink("--defer-all")
    with sk.smtp() as c:
        c.ehlo("tester")
        for _ in range(3):
            code, msg = c.mail("a@example.com")
            assert code == 451 and msg.startswith(b"4.3.2 "), (code, msg)
    st = sk.stop()
    assert st["rejected"]["defer_all"] == 3 and st["messages"] == 0, st

    sk = Sink("--defer-all-for", "700ms", "--defer-reply", "451 4.3.2 come back later")
    t0 = time.monotonic()
    with sk.smtp() as c:
        c.ehlo("tester")
        code, msg = c.mail("a@example.com")
        assert code == 451 and msg == b"4.3.2 come back later", (code, msg)
        assert time.monotonic() - t0 < 0.6, "too slow to test the deferral"
        time.sleep(max(0, 0.8 - (time.monotonic() - t0)))
        c.sendmail("a@example.com", ["b@example.com"], MSG)
    st = sk.stop()
    assert st["rejected"]["defer_all"] == 1 and st["messages"] == 1, st


def t_stats_on_sigusr1():
    sk = Sink("--rate-limit", "2/min")
    with sk.smtp() as c:
        c.ehlo("tester")
        for _ in range(3):
            c.mail("a@example.com")
            c.rset()
        sk.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        st = None
        while time.monotonic() < deadline:
            if os.path.exists(sk.stats):
                with open(sk.stats) as f:
                    st = json.load(f)
                break
            time.sleep(0.05)
        assert st and st["rejected"]["max_rate"] == 1, st
        assert sk.proc.poll() is None, "SIGUSR1 does not stop the sink"
    sk.stop()


def t_fault_usage_errors():
    for args, what in ((["--rate-limit", "50"], "--rate-limit"),
                       (["--rate-limit", "50/fortnight"], "--rate-limit"),
                       (["--quota", "0/5s"], "--quota"),
                       (["--defer-all-for", "soon"], "--defer-all-for"),
                       (["--rate-reply", "250 fine"], "--rate-reply"),
                       (["--quota-reply", "451"], "--quota-reply"),
                       (["--max-conn-reply", "421 a\r\n250 b"], "--max-conn-reply")):
        r = subprocess.run([SINK] + args, capture_output=True, text=True)
        assert r.returncode == 64 and what in r.stderr, (args, r)


TESTS = [
    ("plain send counted in --log and --stats", t_plain_log_stats),
    ("--no-* switches and --hostname", t_extensions_switched_off),
    ("--size-limit: SIZE advertised, 552 on MAIL SIZE= and on content", t_size_limit),
    ("STARTTLS with a test CA", t_starttls),
    ("STARTTLS: host name verified, unknown CA refused", t_starttls_hostname_verified),
    ("STARTTLS: clear-text pipelined after it is dropped", t_starttls_injection_dropped),
    ("implicit TLS", t_implicit_tls),
    ("--require-tls: 530 before STARTTLS", t_require_tls),
    ("AUTH PLAIN/LOGIN ok, 535 on bad password, 530 without", t_auth),
    ("AUTH from the environment, only offered under TLS", t_auth_env_and_tls_only),
    ("--max-conn: 421 HL:ICC for connection N+1", t_max_conn),
    ("--max-msgs-per-conn: 450 MI:DMC", t_max_msgs_per_conn),
    ("--max-rcpts-per-conn: 450 RP:DRC", t_max_rcpts_per_conn),
    ("--max-rate: 451 MI:SFQ over a 1 s window", t_max_rate),
    ("--reject-rcpt: 550 5.1.1 Invalid User", t_reject_rcpt),
    ("--random-4xx: 451 4.3.0, deterministic with --seed", t_random_4xx),
    ("--delay-ms delays replies", t_delay),
    ("--drop-mid-data closes inside the content", t_drop_mid_data),
    ("pipelined batch in one write gives cmd_reads 1", t_pipelined_batch_one_read),
    ("replies to one read leave together", t_pipelined_replies_one_write),
    ("BDAT (CHUNKING), one and two chunks", t_bdat),
    ("garbage, long lines and bad sequences", t_garbage_and_limits),
    ("300 concurrent connections", t_many_connections),
    ("--exit-after-messages", t_exit_after_messages),
    ("usage and configuration errors", t_usage_errors),
    ("--rate-limit 50/s: at most 50 in any second, generic 451 4.7.1", t_rate_limit),
    ("--rate-limit 5/100ms --rate-reply; refusals do not count", t_rate_limit_reply_and_short_period),
    ("--rate-reply 421 closes the connection", t_rate_reply_421_closes),
    ("--quota 20/2s: fixed window, refused until it rolls over; duplicates", t_quota),
    ("--quota default reply", t_quota_default_reply),
    ("--max-msgs-per-conn-reply: 450 on one connection, a new one accepts", t_max_msgs_per_conn_reply),
    ("--max-conn-reply: 421 greeting and close", t_max_conn_reply),
    ("--defer-all and --defer-all-for with --defer-reply", t_defer_all),
    ("SIGUSR1 writes the statistics and goes on", t_stats_on_sigusr1),
    ("usage errors of the fault options", t_fault_usage_errors),
]


def main():
    print("1..%d" % len(TESTS))
    failed = 0
    for i, (name, fn) in enumerate(TESTS, 1):
        try:
            fn()
            print("ok %d - %s" % (i, name))
        except Exception:
            failed += 1
            print("not ok %d - %s" % (i, name))
            for line in traceback.format_exc().splitlines():
                print("# " + line)
        finally:
            for p in PROCS:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        sys.stdout.flush()
    shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
