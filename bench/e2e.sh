#!/usr/bin/env bash
# bench/e2e.sh: volley's main job end to end against volley-sink, as a ratio to
# the raw engine in the same run. A campaign of N rows (default 1,000,000) is
# generated; `volley send` runs it through an embedded Redis (ingest, claim,
# render, send, record, report) against a volley-sink; `volley bench` then
# sends N synthetic messages of the same size over the same connections to
# the same sink. Prints both rates, the ratio (target >= 0.5) and volley's
# peak RSS (target < 100 MB; the embedded redis-server is a separate process).
#
#   [ROUNDS=3] bench/e2e.sh [ROWS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000} C=${2:-50}
scripts/setup >/dev/null
dir=$(scripts/build build-release -Dbuildtype=release)
volley="$PWD/$dir/cli/volley"
tmp=$(mktemp -d)
trap 'kill $sink 2>/dev/null || true; rm -rf "$tmp"' EXIT
"$dir/bench/volley-sink" --listen 127.0.0.1:0 >"$tmp/sink.out" 2>&1 &
sink=$!
for i in $(seq 100); do grep -q '^listening' "$tmp/sink.out" && break; sleep 0.05; done
addr=$(sed -n 's/^listening //p' "$tmp/sink.out")

/usr/bin/python3 - "$tmp" "$N" "$addr" "$C" <<'PY'
import csv, json, os, sys
d, n, addr, c = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
with open(os.path.join(d, "r.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["email", "first_name", "city", "plan"])
    for i in range(1, n + 1):
        w.writerow(["user%d@example.com" % i, "Name%d" % i, "Paris", "Gold"])
body = ("Dear {{first_name}},\n\nyour {{plan}} plan in {{city}} renews next month. "
        "This line pads the message to a realistic size for a reminder. " * 3 + "\n") * 4
json.dump({"from": "Volley <news@example.com>", "subject": "Hello {{first_name}}",
           "text": body}, open(os.path.join(d, "t.json"), "w"))
json.dump([{"name": "all", "domains": ["*"], "route": "smtp://" + addr,
            "max_connections": c}], open(os.path.join(d, "p.json"), "w"))
json.dump({"id": "e2e", "recipients": "r.csv", "template": "t.json", "providers": "p.json"},
          open(os.path.join(d, "c.json"), "w"))
PY

size=$("$volley" render "$tmp/c.json" --row 1 | wc -c)
echo "campaign: $N rows, rendered message ~$size bytes, $C connections"

# Rounds alternate send and bench and the medians are compared: these
# machines are shared, and one round of either can be off by half.
rounds=${ROUNDS:-3}
: >"$tmp/rounds"
peak=0
for r in $(seq "$rounds"); do
    rm -rf "$tmp/.volley"
    # volley send, with its peak RSS read from /proc while it runs.
    t0=$(date +%s.%N)
    "$volley" send "$tmp/c.json" --no-progress >"$tmp/send.out" 2>"$tmp/send.err" &
    pid=$!
    while kill -0 $pid 2>/dev/null; do
        hwm=$(awk '/VmHWM/ { print $2 }' /proc/$pid/status 2>/dev/null || echo 0)
        [ -n "$hwm" ] && [ "$hwm" -gt "$peak" ] && peak=$hwm
        sleep 0.2
    done
    wait $pid || { echo "volley send failed:"; tail "$tmp/send.err"; exit 1; }
    t1=$(date +%s.%N)
    delivered=$(awk '$1 == "delivered" { print $2; exit }' "$tmp/send.out")
    [ "$delivered" = "$N" ] || { echo "volley send delivered $delivered of $N"; exit 1; }
    phase=$(awk '/^throughput/ { print $2; exit }' "$tmp/send.out")
    bench=$("$volley" bench "smtp://$addr" -c "$C" -n "$N" -s "$size" --no-tls --json |
            /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["messages_per_second"])')
    overall=$(awk -v n="$N" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.0f", n / (t1 - t0) }')
    printf "round %d: send %s rows/s overall, %.0f/s while sending; bench %.0f msgs/s\n" \
        "$r" "$overall" "$phase" "$bench"
    echo "$overall $phase $bench" >>"$tmp/rounds"
done

/usr/bin/python3 - "$tmp/rounds" "$peak" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
overall, phase, bench = (statistics.median(c) for c in zip(*rows))
print("volley send (median of %d): %.0f rows/s overall (ingest and report included), "
      "%.0f/s while sending" % (len(rows), overall, phase))
print("volley bench (median), same sink and size: %.0f messages/s" % bench)
print("ratio: %.2f overall, %.2f while sending (target >= 0.5)" % (overall / bench, phase / bench))
print("volley peak RSS: %.1f MB (target < 100 MB)" % (int(sys.argv[2]) / 1024))
PY
