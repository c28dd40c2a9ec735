#!/usr/bin/python3
"""Integration tests of volley check, render and send --dry-run: rendered
messages are parsed with Python's email package (policy.default) and their
DKIM signatures verified with dkimpy, an independent implementation; every
kind of bad input is checked for its message and exit code. Prints TAP.

Needs $VOLLEY (set by meson; else build/cli/volley) and $SRCDIR (the repo)."""

import email
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from email import policy

import dkim

SRCDIR = os.environ.get("SRCDIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
VOLLEY = os.environ.get("VOLLEY", os.path.join(SRCDIR, "build", "cli", "volley"))
FIX = os.path.join(SRCDIR, "tests", "fixtures", "messages")

results = []


def ok(cond, name, detail=""):
    results.append((bool(cond), name, detail))


def run(*args, timeout=120):
    p = subprocess.run([VOLLEY, *args], capture_output=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def nl(s):
    return s.replace("\r\n", "\n")


tmp = tempfile.mkdtemp(prefix="volley-messages-")
keys = {}


def make_keys():
    kd = os.path.join(tmp, "dkim")
    os.makedirs(kd)
    for sel, alg in (("r1", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                     ("e1", ["-algorithm", "ED25519"])):
        path = os.path.join(kd, sel + ".key")
        subprocess.run(["openssl", "genpkey", *alg, "-out", path], check=True,
                       capture_output=True)
        der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        import base64
        if sel == "e1":
            rec = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:])
        else:
            rec = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
        keys[(sel + "._domainkey.example.com.").encode()] = rec


def dnsfunc(name, timeout=5):
    return keys.get(name)


def campaign(name, **over):
    """Write a campaign file in its own directory; returns its path."""
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    c = {
        "id": "t-" + name,
        "recipients": os.path.join(FIX, "recipients.csv"),
        "template": os.path.join(FIX, "template.json"),
        "vars": {"company": "Volley"},
        "dkim": [{"domain": "example.com", "selector": "r1", "key": "../dkim/r1.key"},
                 {"domain": "example.com", "selector": "e1", "key": "../dkim/e1.key"}],
    }
    c.update(over)
    c = {k: v for k, v in c.items() if v is not None}
    path = os.path.join(d, "campaign.json")
    with open(path, "w") as f:
        json.dump(c, f, ensure_ascii=False)
    return path


def write(name, text, binary=False):
    path = os.path.join(tmp, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
        f.write(text)
    return path


def template_with(**over):
    with open(os.path.join(FIX, "template.json"), encoding="utf-8") as f:
        t = json.load(f)
    t.update(over)
    for k in ("inline", "attachments"):
        for p in t.get(k, []):
            p["path"] = os.path.join(FIX, p["path"])
    return t


def main():
    make_keys()
    good = campaign("good")
    logo = open(os.path.join(FIX, "logo.png"), "rb").read()
    att_name = "季度报告 Q1.txt"
    att = open(os.path.join(FIX, att_name), "rb").read()

    # ---- rendering, parsed by the email package ----
    rc, out, err = run("render", good, "--row", "1")
    ok(rc == 0, "render row 1 exits 0", err)
    m = email.message_from_bytes(out, policy=policy.default)
    ok(not m.defects and all(not p.defects for p in m.walk()), "row 1 parses without defects",
       [p.defects for p in m.walk()])
    ok(str(m["subject"]) == "Ann，你好 / Hello Ann (Gold)", "subject decodes (RFC 2047)",
       str(m["subject"]))
    ok(m["from"].addresses[0].display_name == "Volley 测试" and
       m["from"].addresses[0].addr_spec == "news@example.com", "From display name decodes")
    ok(m["to"].addresses[0].display_name == "Ann Lee" and
       m["to"].addresses[0].addr_spec == "ann@example.com", "To display name and address")
    ok(m["reply-to"].addresses[0].display_name == "Support, Team", "quoted Reply-To name")
    ok(m["x-volley-row"] == "t-good/1", "X-Volley-Row is campaign/row", m["x-volley-row"])
    ok(m["x-plan"] == "Gold" and m["x-static"] == "fixed value", "custom headers")
    ok(m["list-unsubscribe"] == "<mailto:unsub@example.com>, <https://example.com/u?r=1>" and
       m["list-unsubscribe-post"] == "List-Unsubscribe=One-Click",
       "List-Unsubscribe (RFC 2369) and one-click (RFC 8058)", m["list-unsubscribe"])
    ok(m.get_content_type() == "multipart/mixed", "top is multipart/mixed")
    types = [p.get_content_type() for p in m.walk()]
    ok(types == ["multipart/mixed", "multipart/related", "multipart/alternative", "text/plain",
                 "text/html", "image/png", "text/plain"], "MIME structure", types)
    text = nl(m.get_body(("plain",)).get_content())
    ok(text == 'Hello Ann Lee,\nNote: plain, with "quotes" and commas\nCity: Paris\n-- \n'
       'The team\n', "text body with quotes and commas exact", repr(text))
    html = nl(m.get_body(("html",)).get_content())
    ok('<p>Note: plain, with &quot;quotes&quot; and commas</p>' in html,
       "HTML body is HTML-escaped", html)
    img = [p for p in m.walk() if p.get_content_type() == "image/png"][0]
    ok(img.get_content() == logo and img["content-id"] == "<logo>",
       "inline image bytes and Content-ID")
    atts = list(m.iter_attachments())
    ok(len(atts) == 1 and atts[0].get_filename() == att_name, "attachment file name (RFC 2231)",
       [a.get_filename() for a in atts])
    ok(atts and atts[0].get_payload(decode=True) == att, "attachment bytes")
    lines = out.split(b"\r\n")
    ok(all(b"\n" not in l and b"\r" not in l for l in lines), "CRLF everywhere")
    ok(all(len(l) <= 78 for l in lines), "no line over 78 (encoded lines 76)",
       max(len(l) for l in lines))
    ok(all(b < 128 for b in out), "message is 7-bit")
    d = dkim.DKIM(out)
    ok(d.verify(idx=0, dnsfunc=dnsfunc), "rsa-sha256 signature verifies with dkimpy")
    ok(d.verify(idx=1, dnsfunc=dnsfunc), "ed25519-sha256 signature verifies with dkimpy")
    sig = m.get_all("dkim-signature")
    ok(len(sig) == 2 and "h=from:from:to:subject" in sig[0].replace("\r\n ", "").replace(" ", ""),
       "From oversigned in h=")

    rc, out2, err = run("render", good, "--row", "1")
    m2 = email.message_from_bytes(out2, policy=policy.default)
    ok(m2["message-id"] != m["message-id"] and m["message-id"].endswith("@example.com>"),
       "Message-ID unique per message, at the From domain", (m["message-id"], m2["message-id"]))

    rc, out, err = run("render", good, "--row", "2")
    m = email.message_from_bytes(out, policy=policy.default)
    ok(rc == 0 and str(m["subject"]) == "伟，你好 / Hello 伟 (Silver)", "row 2 Chinese subject")
    ok(m["to"].addresses[0].display_name == "张伟", "row 2 Chinese display name")
    text = nl(m.get_body(("plain",)).get_content())
    ok('Note: 多行\n文本, "引号"\n' in text, "Chinese, newline, comma and quotes survive",
       repr(text))
    d = dkim.DKIM(out)
    ok(d.verify(idx=0, dnsfunc=dnsfunc) and d.verify(idx=1, dnsfunc=dnsfunc),
       "row 2 DKIM verifies (both keys)")

    # ---- header injection ----
    rc, out, err = run("render", good, "--row", "3")
    ok(rc == 65 and out == b"", "injection row: exit 65, nothing rendered", (rc, err))
    ok("line break" in err and "row 3" in err, "injection row: the error says why", err)
    rc, out, err = run("send", good, "--dry-run")
    ok(rc == 65 and b"3 rows, 2 rendered, 1 rejected" in out, "dry run counts", out)
    ok("row 3" in err and "line break" in err, "dry run prints the row error", err)
    inj = campaign("inj", recipients=write("inj/r.csv",
                                            'email,name,first_name,city,plan,note\n'
                                            'a@example.com,A,"x\nBcc: v@example.net",c,p,n\n'
                                            'b@example.com,B,"y\rBcc: v@example.net",c,p,n\n'))
    rc, out, err = run("send", inj, "--dry-run")
    ok(rc == 65 and b"2 rejected" in out and err.count("subject:") == 2,
       "CR or LF in a subject value is a row error", (out, err))
    rc, out, err = run("render", inj, "--row", "1")
    ok(rc == 65 and b"Bcc" not in out, "an injected header never appears")

    # ---- check ----
    rc, out, err = run("check", good)
    o = out.decode()
    ok(rc == 65 and re.search(r"recipients\.csv:\d+:2: .*line break.*\(row 3\)", o),
       "check lists the bad row with file:line:column", o)
    ok("1 error" in o and "3 rows read: 2 valid, 1 rejected" in o, "check summary line", o)
    clean = campaign("clean", recipients=write("clean/r.csv",
                                               'email,name,first_name,city,plan,note\n'
                                               'a@example.com,A,a,c,p,n\n'))
    rc, out, err = run("check", clean)
    ok(rc == 0 and b"OK" in out, "check of a clean campaign exits 0", out)

    # ---- bad inputs: message and exit code ----
    bad_json = write("badjson/template.json", '{\n  "from": "a@example.com",\n  "text": "x"\n  '
                     '"html": "y"\n}\n')
    rc, out, err = run("check", campaign("badjson", template=bad_json))
    ok(rc == 65 and re.search(r"template\.json:4:\d+: ", out.decode()),
       "bad template JSON: exit 65 with line:column", out)
    p = write("badcamp/campaign.json", '{"id": "x",\n "recipients": "r.csv",,\n}')
    rc, out, err = run("check", p)
    ok(rc == 78 and re.search(r"campaign\.json:2:\d+: ", out.decode()),
       "bad campaign JSON: exit 78 with line:column", out)
    rc, out, err = run("check", os.path.join(tmp, "nope.json"))
    ok(rc == 66 and b"no such file" in out, "missing campaign file: exit 66", out)
    rc, out, err = run("check", campaign("nocsv", recipients=os.path.join(tmp, "none.csv")))
    ok(rc == 66 and b"none.csv" in out, "missing CSV: exit 66", out)
    rc, out, err = run("check", campaign("notpl", template=os.path.join(tmp, "none.json")))
    ok(rc == 66 and b"none.json" in out, "missing template: exit 66", out)
    t = template_with(attachments=[{"path": os.path.join(tmp, "gone.pdf")}])
    rc, out, err = run("check", campaign("noatt", template=write("noatt/t.json", json.dumps(t))))
    ok(rc == 66 and b"gone.pdf" in out, "missing attachment: exit 66", out)
    rc, out, err = run("render", campaign("nokey", dkim={"domain": "example.com",
                                                         "selector": "s", "key": "none.key"}))
    ok(rc == 66 and "none.key" in err, "missing DKIM key: exit 66", err)
    rc, out, err = run("check", campaign("noemail", recipients=write(
        "noemail/r.csv", "mail,name\na@example.com,A\n")))
    ok(rc == 65 and b"email" in out, "no email column: exit 65", out)
    rc, out, err = run("check", campaign("badaddr", recipients=write(
        "badaddr/r.csv", "email,name,first_name,city,plan,note\nnot-an-address,A,a,c,p,n\n")))
    ok(rc == 65 and re.search(rb"r\.csv:2:1: .*not-an-address|r\.csv:2:1: .*address", out),
       "invalid address: exit 65 with file:line:column", out)
    rc, out, err = run("check", campaign("dup", recipients=write(
        "dup/r.csv", "email,name,first_name,city,plan,note\na@example.com,A,a,c,p,n\n"
        "a@example.com,B,b,c,p,n\n")))
    ok(rc == 65 and b"duplicate" in out and b"(row 2)" in out, "duplicate address: exit 65", out)
    t = template_with(text="Hi {{frist_name}}\n{{#vip}}{{missing_inside}}{{/vip}}")
    rc, out, err = run("check", campaign("unk", template=write("unk/t.json",
                                                              json.dumps(t, indent=1))))
    o = out.decode()
    ok(rc == 65 and re.search(r"t\.json:\d+:\d+: unknown variable `frist_name` in `text`", o),
       "unknown variable named with its field and position", o)
    ok("missing_inside" not in o, "a variable inside a section may be missing", o)
    t = template_with(subject=5)
    rc, out, err = run("check", campaign("typ", template=write("typ/t.json", json.dumps(t))))
    ok(rc == 65 and b"`subject` must be a string" in out, "a mistyped template key", (rc, out, err))
    t = template_with(subjekt="x")
    rc, out, err = run("check", campaign("unkkey", template=write("unkkey/t.json",
                                                                 json.dumps(t))))
    ok(rc == 65 and b"unknown key `subjekt`" in out, "unknown template key named", out)
    t = template_with(headers={"Bcc": "x@example.com"})
    rc, out, err = run("check", campaign("bcc", template=write("bcc/t.json", json.dumps(t))))
    ok(rc == 65 and b"`Bcc` cannot be set" in out, "a template cannot set Bcc", out)
    rc, out, err = run("check", campaign("badid", id="bad id!"))
    ok(rc == 78 and b"`id`" in out, "bad campaign id: exit 78", out)
    rc, out, err = run("send", good, "--redis", "unix://" + os.path.join(tmp, "no.sock"))
    ok(rc == 69 and "Redis" in err, "send to a Redis that is not there: exit 69, says so", err)

    # ---- dry run memory: 1,000,000 rows stream in flat memory ----
    big = os.path.join(tmp, "big", "r.csv")
    os.makedirs(os.path.dirname(big))
    with open(big, "w") as f:
        f.write("email,name,first_name,city,plan,note\n")
        f.writelines("user%d@example.com,User %d,U%d,Paris,Gold,note %d\n" % (i, i, i, i)
                     for i in range(1000000))
    rc, out, err = run("send", campaign("big", recipients=big), "--dry-run", timeout=600)
    mm = re.search(rb"peak RSS: ([\d.]+) MB", out)
    ok(rc == 0 and b"1000000 rows, 1000000 rendered, 0 rejected" in out,
       "dry run of 1,000,000 rows", (out, err[-500:]))
    # ThreadSanitizer's shadow memory is counted in RSS: the bound means
    # nothing there (CI's third pass).
    tsan = os.environ.get("VOLLEY_TSAN") == "1"
    ok(tsan or (mm and float(mm.group(1)) < 64),
       "dry run of 1,000,000 rows stays under 64 MB RSS" + (" # skip under TSan" if tsan else ""),
       mm and mm.group(1))

    print("1..%d" % len(results))
    for i, (good_, name, detail) in enumerate(results, 1):
        print("%s %d - %s" % ("ok" if good_ else "not ok", i, name))
        if not good_ and detail != "":
            for line in str(detail).splitlines()[:20]:
                print("# " + line)


try:
    main()
finally:
    shutil.rmtree(tmp, ignore_errors=True)
