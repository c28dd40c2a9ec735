#!/usr/bin/env bash
# bench/smtp-source-vs-volley.sh: volley bench against postfix's smtp-source,
# both sending to the same postfix smtp-sink on loopback, alternated three
# times each. Prints each side's median messages/s, the ratio, and CPU seconds
# per 100k messages of each side. Targets (issue 2): ratio >= 1.8 and
# volley's CPU per message <= 1/3 of smtp-source's.
#
#   bench/smtp-source-vs-volley.sh [MESSAGES] [SESSIONS] [SIZE] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000} C=${2:-50} S=${3:-2000} ROUNDS=${4:-3}

scripts/setup >/dev/null
dir=$(scripts/build build-release -Dbuildtype=release)
pf=$(scripts/get-postfix)
export LD_LIBRARY_PATH="$pf/../lib/postfix${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
volley="$dir/cli/volley"

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
user=()
[ "$(id -u)" = 0 ] && user=(-u nobody)
"$pf/smtp-sink" "${user[@]}" 127.0.0.1:"$port" 1000 &
sink=$!
trap 'kill $sink 2>/dev/null || true' EXIT
sleep 0.5

run() { # label command... -> prints "msgs_per_s cpu_s"
    local out
    out=$( { /usr/bin/python3 bench/timeit.py "$@" >/dev/null; } 2>&1 | tail -1)
    read -r wall cpu rc <<<"$out"
    if [ "$rc" != 0 ]; then
        echo "benchmark command failed (exit $rc): $*" >&2
        exit 1
    fi
    awk -v n="$N" -v w="$wall" -v c="$cpu" 'BEGIN { printf "%.1f %.4f\n", n / w, c }'
}

declare -a src_rate src_cpu vol_rate vol_cpu
for r in $(seq "$ROUNDS"); do
    read -r rate cpu < <(run "$pf/smtp-source" -d -s "$C" -m "$N" -l "$S" 127.0.0.1:"$port")
    src_rate+=("$rate"); src_cpu+=("$cpu")
    echo "round $r smtp-source: $rate messages/s, cpu $cpu s"
    read -r rate cpu < <(run "$volley" bench "smtp://127.0.0.1:$port" -c "$C" -n "$N" -s "$S")
    vol_rate+=("$rate"); vol_cpu+=("$cpu")
    echo "round $r volley:      $rate messages/s, cpu $cpu s"
done

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
sr=$(median "${src_rate[@]}"); vr=$(median "${vol_rate[@]}")
sc=$(median "${src_cpu[@]}"); vc=$(median "${vol_cpu[@]}")
awk -v sr="$sr" -v vr="$vr" -v sc="$sc" -v vc="$vc" -v n="$N" 'BEGIN {
    printf "smtp-source: median %.0f messages/s, %.3f CPU s per 100k messages\n", sr, sc * 100000 / n
    printf "volley:      median %.0f messages/s, %.3f CPU s per 100k messages\n", vr, vc * 100000 / n
    printf "ratio (volley / smtp-source): %.2fx messages/s, %.2fx CPU per message\n", vr / sr, vc / sc
    ok = (vr / sr >= 1.8 && vc / sc <= 1 / 3)
    printf "targets (>= 1.8x rate, <= 0.33x CPU): %s\n", ok ? "met" : "NOT met"
}'
