#!/usr/bin/python3
"""End-to-end tests of `volley send`: CSV -> embedded Redis -> render -> send ->
record -> report, against volley-sink (plain and in NetEase fault modes).
Prints TAP."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

SRCDIR = os.environ.get("SRCDIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
BUILDDIR = os.environ.get("BUILDDIR", os.path.join(SRCDIR, "build"))
VOLLEY = os.environ.get("VOLLEY", os.path.join(BUILDDIR, "cli", "volley"))
SINK = os.environ.get("VOLLEY_SINK", os.path.join(BUILDDIR, "bench", "volley-sink"))

results = []


def check(name, cond, detail=""):
    results.append(bool(cond))
    print("%s %d - %s" % ("ok" if cond else "not ok", len(results), name))
    if not cond and detail:
        for line in str(detail).splitlines()[-40:]:
            print("#   " + line)
    sys.stdout.flush()


class Sink:
    def __init__(self, tmp, *args):
        self.stats_path = os.path.join(tmp, "sink-stats.json")
        self.log_path = os.path.join(tmp, "sink-log.json")
        self.p = subprocess.Popen([SINK, "--listen", "127.0.0.1:0", "--stats", self.stats_path,
                                   "--log", self.log_path, "--max-seconds", "300"] + list(args),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        assert line.startswith("listening "), line
        self.addr = line.split()[1]

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.communicate(timeout=20)
        with open(self.stats_path) as f:
            return json.load(f)

    def log(self):
        with open(self.log_path) as f:
            return [json.loads(l) for l in f if l.strip()]


def send(campaign, *args, timeout=240):
    p = subprocess.run([VOLLEY, "send", campaign, "--no-progress"] + list(args),
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def read_report(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


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


def make_campaign(d, n, bad_every, sink_addr, provider):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "recipients.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "name"])
        for i in range(1, n + 1):
            local = ("bad%d" % i) if bad_every and i % bad_every == 0 else ("user%d" % i)
            w.writerow(["%s@163.com" % local, "Name %d" % i])
    with open(os.path.join(d, "template.json"), "w") as f:
        json.dump({"from": "Sender <news@example.com>", "subject": "Hello {{name}}",
                   "text": "Dear {{name}},\nrow {{row}} of {{campaign}}.\n"}, f)
    provider["route"] = "smtp://" + sink_addr
    with open(os.path.join(d, "providers.json"), "w") as f:
        json.dump([provider], f)
    with open(os.path.join(d, "campaign.json"), "w") as f:
        json.dump({"id": "faults", "recipients": "recipients.csv", "template": "template.json",
                   "providers": "providers.json"}, f)
    return os.path.join(d, "campaign.json")


def test_netease_faults(tmp):
    d = os.path.join(tmp, "faults")
    os.makedirs(d)
    sink = Sink(d, "--max-conn", "5", "--max-msgs-per-conn", "20",
                "--reject-rcpt", "^bad[0-9]+@")
    n, bad_every = 3000, 50
    camp = make_campaign(d, n, bad_every, sink.addr, {
        "name": "netease", "domains": ["163.com"], "max_connections": 8,
        "max_messages_per_connection": 50, "rate": "400/s", "rules": "netease"})
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
    bounced = [r for r in rows if r["status"] == "bounced"]
    check("bounces carry the reply (550 5.1.1 Invalid User)",
          all(r["code"] == "550" and "Invalid User" in r["response"] for r in bounced),
          bounced[:2])


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for t in (test_example, test_netease_faults):
            try:
                t(tmp)
            except Exception:
                import traceback
                check(t.__name__ + " ran to the end", False, traceback.format_exc())
    print("1..%d" % len(results))
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
