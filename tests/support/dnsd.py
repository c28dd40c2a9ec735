#!/usr/bin/python3
"""dnsd.py: a small authoritative DNS server for tests, on Debian's python3-dnslib.

    dnsd.py --zone ZONE.json [--port 0] [--port-file FILE]

Serves the zone on 127.0.0.1 over UDP and TCP on the same port (c-ares retries
over TCP when a UDP answer comes back truncated, so both must answer). With
--port 0 (the default) a free port is chosen. The port is written to
--port-file, atomically (a temporary file renamed into place, so a reader
never sees half a number), and printed as "port N" on stdout. Runs until
SIGTERM or SIGINT, then exits 0.

The zone is a JSON object, name -> record sets:

    {"example.test": {"MX": [[10, "mx1.example.test"], [20, "mx2.example.test"]]},
     "mx1.example.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
     "nullmx.test": {"MX": [[0, "."]]},
     "broken.test": {"SERVFAIL": true},
     "slow.test": {"DROP": true}}

Names are case-insensitive, the trailing dot optional. A name not in the zone
gets NXDOMAIN; a name without the type asked gets NOERROR and no answer
(NODATA); "SERVFAIL": true answers SERVFAIL to every question; "DROP": true
answers nothing at all, so the client times out. Answers are authoritative,
TTL 60. Over UDP an answer longer than 512 bytes goes out truncated (TC set,
the question kept, no records), so the client repeats the question over TCP.
"""
import argparse
import json
import os
import signal
import socket
import sys
import threading

try:
    from dnslib import AAAA, MX, QTYPE, RCODE, RR, A, DNSError
    from dnslib.server import BaseResolver, DNSServer, TCPServer, UDPServer
except ImportError:
    sys.exit("dnsd.py: python3-dnslib is missing (scripts/setup installs it)")

TTL = 60
UDP_MAX = 512  # bytes in a UDP answer without EDNS (RFC 1035 §4.2.1)
RDATA = {"A": A, "AAAA": AAAA}


def norm(name):
    """The zone's key for a name: lower case, no trailing dot."""
    return str(name).rstrip(".").lower()


class Drop(DNSError):
    """Raised by the resolver to send no answer; DNSHandler catches DNSError."""


class ZoneResolver(BaseResolver):
    def __init__(self, zone):
        self.zone = {norm(k): v for k, v in zone.items()}

    def resolve(self, request, handler):
        entry = self.zone.get(norm(request.q.qname))
        reply = request.reply()  # qr, aa and ra set, the question copied
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if entry.get("DROP"):
            raise Drop("dropped")
        if entry.get("SERVFAIL"):
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        qtype = QTYPE[request.q.qtype]
        for value in entry.get(qtype, []):
            if qtype == "MX":
                rdata = MX(value[1], value[0])
            elif qtype in RDATA:
                rdata = RDATA[qtype](value)
            else:
                continue
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=TTL))
        if handler.protocol == "udp" and len(reply.pack()) > UDP_MAX:
            # Too long for UDP without EDNS: TC set and no records, so the
            # client asks again over TCP. Done here rather than with dnslib's
            # udplen, whose truncated reply drops the question section, and
            # c-ares ignores a reply whose question is not its own.
            reply = request.reply()
            reply.header.tc = 1
        return reply


class QuietLogger:
    """dnslib's logger interface: silent, but for real errors on stderr."""

    def log_error(self, handler, e):
        if not isinstance(e, Drop):
            print("dnsd: bad request from %s: %s" % (handler.client_address[0], e),
                  file=sys.stderr, flush=True)

    def __getattr__(self, name):
        return lambda *args: None


def bind_pair(resolver, port):
    """UDP and TCP servers on one port; with port 0, one free for both."""
    for _ in range(20):
        udp = DNSServer(resolver, "127.0.0.1", port, logger=QuietLogger(), server=UDPServer)
        chosen = udp.server.server_address[1]
        # A burst of queries (a test starting dozens of lookups at once) must
        # not overflow the socket while handler threads start: ask for a
        # larger receive buffer, which the kernel caps at net.core.rmem_max.
        udp.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        try:
            tcp = DNSServer(resolver, "127.0.0.1", chosen, tcp=True, logger=QuietLogger(),
                            server=TCPServer)
            return udp, tcp, chosen
        except OSError:
            udp.server.server_close()
            if port:
                raise
    sys.exit("dnsd.py: no port free for both UDP and TCP")


def write_port_file(path, port):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description="authoritative DNS server for tests")
    ap.add_argument("--zone", required=True, help="zone file (JSON)")
    ap.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    ap.add_argument("--port-file", help="write the port here")
    args = ap.parse_args()

    with open(args.zone) as f:
        zone = json.load(f)
    udp, tcp, port = bind_pair(ZoneResolver(zone), args.port)

    # The signals are blocked before the server threads start (they inherit
    # the mask) and then waited for here, so one arriving early is not lost.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    for s in (udp, tcp):
        # A short poll interval makes shutdown() below quick.
        threading.Thread(target=s.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
    if args.port_file:
        write_port_file(args.port_file, port)
    print("port %d" % port, flush=True)

    signal.sigwait(stop_signals)
    for s in (udp, tcp):
        s.server.shutdown()
        s.server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
