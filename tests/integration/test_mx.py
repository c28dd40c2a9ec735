#!/usr/bin/python3
"""Direct delivery ("route": "mx"): volley looks up each recipient domain's MX
hosts in a real DNS server of the test's own (tests/support/dnsd.py, on
python3-dnslib) and delivers to volley-sinks listening on loopback addresses
(127.0.0.2-4) at one port, the provider's "mx_port". Prints TAP."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

from vtest import SRCDIR, VOLLEY, Sink, check, make_campaign, run_tests, stored_result

DNSD = os.path.join(SRCDIR, "tests", "support", "dnsd.py")


def free_port():
    """A port free on 127.0.0.2-5 (checked on each: sinks bind the same port on
    several loopback addresses)."""
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        ok = True
        for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            t = socket.socket()
            try:
                t.bind((ip, port))
            except OSError:
                ok = False
            t.close()
        if ok:
            return port
    raise RuntimeError("no free port")


class Dnsd:
    def __init__(self, tmp, zone):
        zpath = os.path.join(tmp, "zone.json")
        with open(zpath, "w") as f:
            json.dump(zone, f)
        self.port_file = os.path.join(tmp, "dnsd.port")
        self.p = subprocess.Popen([DNSD, "--zone", zpath, "--port", "0",
                                   "--port-file", self.port_file],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 20
        while time.time() < deadline and not os.path.exists(self.port_file):
            if self.p.poll() is not None:
                raise RuntimeError("dnsd.py exited: " + self.p.stderr.read())
            time.sleep(0.05)
        with open(self.port_file) as f:
            self.addr = "127.0.0.1:%d" % int(f.read())

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.communicate(timeout=20)


def volley(*args, timeout=60):
    p = subprocess.run([VOLLEY] + list(args), capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def status_counts(camp):
    rc, out = volley("status", camp, "--json")
    try:
        return json.loads(out)["counts"]
    except (ValueError, KeyError):
        return {}


def test_direct_delivery(tmp):
    d = os.path.join(tmp, "direct")
    os.makedirs(d)
    certs = os.path.join(d, "certs")
    subprocess.run(["sh", os.path.join(SRCDIR, "tests", "support", "gen-certs.sh"), certs,
                    "mx1.good.test"], check=True)
    port = free_port()
    # A: good.test's MX, STARTTLS with a certificate for its MX name.
    a = Sink(d, "--tls-cert", os.path.join(certs, "mx1.good.test.pem"),
             "--tls-key", os.path.join(certs, "mx1.good.test.key"), "--hostname",
             "mx1.good.test", name="a", listen="127.0.0.2:%d" % port)
    # B: plain, the second MX of fallback.test and implicit.test's own host.
    b = Sink(d, name="b", listen="127.0.0.3:%d" % port)
    # C: STARTTLS with a certificate for "localhost": wrong for its MX name.
    c = Sink(d, "--tls-cert", os.path.join(certs, "server.pem"),
             "--tls-key", os.path.join(certs, "server.key"), name="c",
             listen="127.0.0.4:%d" % port)
    # Nothing listens on 127.0.0.5: fallback.test's first MX is down.
    dns = Dnsd(d, {
        "good.test": {"MX": [[10, "mx1.good.test"]]},
        "mx1.good.test": {"A": ["127.0.0.2"]},
        "fallback.test": {"MX": [[20, "mx.fallback.test"], [10, "dead.fallback.test"]]},
        "dead.fallback.test": {"A": ["127.0.0.5"]},
        "mx.fallback.test": {"A": ["127.0.0.3"]},
        "implicit.test": {"A": ["127.0.0.3"]},
        "nullmx.test": {"MX": [[0, "."]]},
        "wrongcert.test": {"MX": [[10, "mx.wrongcert.test"]]},
        "strict.test": {"MX": [[10, "mx.wrongcert.test"]]},
        "mx.wrongcert.test": {"A": ["127.0.0.4"]},
        "broken.test": {"SERVFAIL": True},
    })
    rows = ([("user%d@good.test" % i) for i in range(1, 21)] +
            [("f%d@fallback.test" % i) for i in range(1, 6)] +
            [("i%d@Implicit.Test" % i) for i in range(1, 4)] +
            ["n1@nullmx.test", "n2@nullmx.test", "x1@nxdomain.test",
             "w1@wrongcert.test", "w2@wrongcert.test", "s1@strict.test", "b1@broken.test"])
    with open(os.path.join(d, "recipients.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "name"])
        for i, e in enumerate(rows, 1):
            w.writerow([e, "Name %d" % i])
    with open(os.path.join(d, "template.json"), "w") as f:
        json.dump({"from": "Sender <news@example.com>", "subject": "Hello {{name}}",
                   "text": "Dear {{name}}.\n"}, f)
    ca = os.path.join(certs, "ca.pem")
    with open(os.path.join(d, "providers.json"), "w") as f:
        json.dump([
            {"name": "direct", "domains": ["*"], "route": "mx", "mx_port": port,
             "max_connections": 3, "max_messages_per_connection": 4, "rate": "500/s",
             "tls": {"ca_file": ca}},
            # RFC 7435 opportunistic: encrypted, certificate not checked.
            {"name": "lenient", "domains": ["wrongcert.test"], "route": "mx",
             "mx_port": port, "tls": {"policy": "may"}, "rate": "100/s"},
        ], f)
    camp = os.path.join(d, "campaign.json")
    with open(camp, "w") as f:
        json.dump({"id": "mx1", "recipients": "recipients.csv", "template": "template.json",
                   "providers": "providers.json"}, f)

    send = subprocess.Popen([VOLLEY, "send", camp, "--no-progress", "--dns", dns.addr],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Two rows can never finish (SERVFAIL; a certificate that does not match
    # under "verify"): wait for the rest, and for both to have been tried.
    n = len(rows)
    deadline, counts, report = time.time() + 90, {}, {}
    while time.time() < deadline:
        counts = status_counts(camp)
        if int(counts.get("final", 0)) >= n - 2:
            rc, out = volley("report", camp, "--format", "json")
            report = {}
            for line in out.splitlines():
                if line.startswith("{"):
                    r = json.loads(line)
                    report[r["email"]] = r
            if all(int(report.get(e, {}).get("attempts", 0) or 0) >= 2
                   for e in ("s1@strict.test", "b1@broken.test")):
                break
        time.sleep(0.3)
    check("direct: every row but the two that cannot finish is final (%s)" % json.dumps(counts),
          int(counts.get("final", 0)) == n - 2, json.dumps(counts))
    # The stored results name the MX host that took each message (the
    # report's columns are fixed by contract; the result in Redis keeps it).
    sock = os.path.join(d, ".volley", "mx1", "redis.sock")
    hosts = {}
    for row, email in ((1, "user1@good.test"), (21, "f1@fallback.test")):
        res = stored_result(sock, "mx1", row)
        hosts[email] = res["host"] if res else "(no result for row %d)" % row
    rc, out = volley("cancel", camp)
    check("direct: cancel the rest: exit 0", rc == 0, out)
    try:
        out = send.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        send.kill()
        out = send.communicate()[0]
    check("direct: send ends after the cancel", send.returncode is not None, out)
    sa, sb, sc = a.stop(), b.stop(), c.stop()
    dns.stop()

    def st(e):
        return report.get(e, {}).get("status")

    good = ["user%d@good.test" % i for i in range(1, 21)]
    check("good.test: 20 delivered to its MX (sink A, over STARTTLS verified against "
          "mx1.good.test)",
          all(st(e) == "delivered" for e in good) and sa["messages"] == 20 and
          sa["tls_handshakes"] >= 1 and sa["tls_failures"] == 0,
          json.dumps([report.get(e) for e in good[:3]]) + json.dumps(sa))
    check("a result names the MX host that took it, as postfix's relay= does",
          hosts.get("user1@good.test") == "mx1.good.test[127.0.0.2]:%d" % port and
          hosts.get("f1@fallback.test") == "mx.fallback.test[127.0.0.3]:%d" % port,
          json.dumps(hosts))
    check("fallback.test: its first MX refuses connections, all 5 delivered by the second",
          all(st("f%d@fallback.test" % i) == "delivered" for i in range(1, 6)),
          json.dumps([report.get("f%d@fallback.test" % i) for i in range(1, 6)]))
    check("implicit.test (no MX records, an address): delivered to the domain's own host",
          all(st("i%d@Implicit.Test" % i) == "delivered" for i in range(1, 4)),
          json.dumps([report.get("i%d@Implicit.Test" % i) for i in range(1, 4)]))
    check("sink B took exactly fallback.test's and implicit.test's 8 messages",
          sb["messages"] == 8, json.dumps(sb))
    blog = sorted(r.lower() for m in b.log() for r in m["rcpts"])
    check("each of them once",
          blog == sorted(["f%d@fallback.test" % i for i in range(1, 6)] +
                         ["i%d@implicit.test" % i for i in range(1, 4)]), blog)
    n1 = report.get("n1@nullmx.test", {})
    check("null MX (RFC 7505): bounced with 556 5.1.10 and the reason",
          st("n1@nullmx.test") == "bounced" and st("n2@nullmx.test") == "bounced" and
          str(n1.get("code")) == "556" and n1.get("enhanced_code") == "5.1.10" and
          "null MX" in n1.get("response", ""), json.dumps(n1))
    x1 = report.get("x1@nxdomain.test", {})
    check("a domain that does not exist: bounced with 550 5.1.2",
          st("x1@nxdomain.test") == "bounced" and str(x1.get("code")) == "550" and
          x1.get("enhanced_code") == "5.1.2" and "NXDOMAIN" in x1.get("response", ""),
          json.dumps(x1))
    check("tls policy \"may\": delivered over STARTTLS although the certificate is not "
          "for the MX host",
          st("w1@wrongcert.test") == "delivered" and st("w2@wrongcert.test") == "delivered" and
          sc["tls_handshakes"] >= 1,
          json.dumps([report.get("w1@wrongcert.test"), sc]))
    s1 = report.get("s1@strict.test", {})
    check("policy \"verify\" (the default): the same host's certificate is refused, the row "
          "is not delivered and says why",
          s1.get("status") in ("deferred", "pending", "cancelled") and
          "certificate" in s1.get("response", "").lower(), json.dumps(s1))
    b1 = report.get("b1@broken.test", {})
    # c-ares takes SERVFAIL as a server failing and tries the next; with none
    # left it says it could not contact them. Either way: temporary.
    check("SERVFAIL: a temporary failure at the lookup, retried, never delivered",
          b1.get("status") in ("deferred", "pending", "cancelled") and
          "at resolve: broken.test" in b1.get("response", ""), json.dumps(b1))
    check("the sinks took nothing twice and nothing else: A 20, B 8, C 2",
          (sa["messages"], sb["messages"], sc["messages"]) == (20, 8, 2),
          json.dumps([sa["messages"], sb["messages"], sc["messages"]]))
    check("the provider's ceiling of 3 connections held at every sink",
          sa["max_concurrent"] <= 3 and sb["max_concurrent"] <= 3, json.dumps([sa, sb]))
    rc, out = volley("report", camp, "--format", "csv")
    rows_csv = list(csv.DictReader(out.splitlines()))
    check("the report names the provider of each row",
          {r["provider"] for r in rows_csv} == {"direct", "lenient"}, out[:400])


def test_provider_file_checks(tmp):
    d = os.path.join(tmp, "checks")
    os.makedirs(d)
    cases = [
        ({"name": "a", "domains": ["*"], "route": "smtp://127.0.0.1:25", "mx_port": 2525},
         "mx_port"),
        ({"name": "a", "domains": ["*"], "route": "mx", "tls": {"policy": "sometimes"}},
         "policy"),
        ({"name": "a", "domains": ["*"], "route": "mx",
          "auth": {"user": "u", "password_env": "X"}}, "auth"),
    ]
    for prov, word in cases:
        rc, out = volley("check", make_campaign(d, "chk", 2, [prov]))
        check("providers file with a bad %s: exit 78, says which field" % word,
              rc == 78 and word in out and "providers.json:" in out, (rc, out))


def test_bad_dns_option(tmp):
    d = os.path.join(tmp, "baddns")
    camp = make_campaign(d, "bd", 2, [{"name": "m", "domains": ["*"], "route": "mx"}])
    rc, out = volley("send", camp, "--no-progress", "--dns", "not-an-address")
    check("send --dns with a bad server list: exit 78, says what is wrong",
          rc == 78 and "not-an-address" in out, (rc, out))


def test_bad_ca_file(tmp):
    """Direct delivery makes one TLS context for all domains when send starts:
    an unreadable CA file stops it there, by name, before any row is tried,
    rather than failing each domain's first connection."""
    d = os.path.join(tmp, "badca")
    missing = os.path.join(d, "no-such-ca.pem")
    camp = make_campaign(d, "bca", 5, [{"name": "m", "domains": ["*"], "route": "mx",
                                        "tls": {"ca_file": missing}}])
    rc, out = volley("send", camp, "--no-progress", "--dns", "127.0.0.1:%d" % free_port())
    check("route mx with an unreadable CA file: exit 78, names the file",
          rc == 78 and missing in out, (rc, out))
    counts = status_counts(camp)
    check("... and no row was tried: none final, all 5 left for a rerun",
          counts.get("final") == 0 and counts.get("bounced") == 0, json.dumps(counts))


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory(prefix="volley-mx-") as tmp:
        run_tests([test_direct_delivery, test_provider_file_checks, test_bad_dns_option,
                   test_bad_ca_file], tmp)
