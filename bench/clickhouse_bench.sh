#!/usr/bin/env bash
# clickhouse_bench -- tally and a local ClickHouse (Debian's 18.16, started
# on 127.0.0.1 by tests/clickhouse.sh with its data in a scratch directory):
#   1. request events per second from one recording process into
#      ClickHouse through the library's sink, beside the same events into
#      a JSONL file (bench/ch_record.c, medians of 3);
#   2. the server's own ceiling in the same run: the same rows as one
#      prepared TabSeparated INSERT (no tally involved), median of 3;
#   3. `tally stats --by model` over ROWS request events (bench/make_db: a
#      day of a busy service) in ClickHouse, in tally's SQLite database and
#      in JSONL, medians of 3, after `tally import DB --to clickhouse://`
#      (timed) and an OPTIMIZE.  The three answers' request counts and
#      token sums must agree, or the benchmark fails.
#
#   bench/clickhouse_bench.sh [BUILD_DIR] [EVENTS] [ROWS]
# defaults: build 1000000 10000000.  Needs jq, curl, clickhouse-server.
set -euo pipefail
build=${1:-build}
events=${2:-1000000}
rows=${3:-10000000}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'bash "$here/tests/clickhouse.sh" stop "$work/ch"; rm -rf "$work"' EXIT
tally=$build/tally
fail() { echo "clickhouse_bench: FAILED: $*" >&2; exit 1; }
median3() { sort -n | sed -n 2p; }
timeit() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc -l; }

read -r http tcp < <(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
bash "$here/tests/clickhouse.sh" start "$work/ch" "$http" "$tcp" || fail "clickhouse-server did not start"
q() { curl -sf "http://127.0.0.1:$http/" --data-binary "$1" || fail "query: $1"; }
unset TALLY_CLICKHOUSE_USER TALLY_CLICKHOUSE_PASSWORD TALLY_CLICKHOUSE_PASSWORD_FILE
echo "# $(nproc) cores; ClickHouse $(q "SELECT version()")"

echo "# 1. recording $events requests: into ClickHouse (until the server counts them all) and into JSONL"
out=$("$build/bench/ch_record" "$http" --events "$events" --tries 3 --dir "$work") || fail "ch_record"
echo "$out"
rate=$(sed -n 's/^record_to_clickhouse .*events_per_s=\([0-9]*\).*/\1/p' <<<"$out")
[ -n "$rate" ] || fail "no rate from ch_record"

echo "# 2. the server's ceiling: the same rows, one prepared TabSeparated INSERT"
cols=$(q "SELECT arrayStringConcat(groupArray(name), ', ') FROM system.columns WHERE database = 'bench0' AND table = 'events'")
q "SELECT $cols FROM bench0.events FORMAT TabSeparated" >"$work/rows.tsv"
n=$(wc -l <"$work/rows.tsv")
[ "$n" -ge "$events" ] || fail "bench0 holds $n rows"
ceil=()
for k in 1 2 3; do
    q "DROP TABLE IF EXISTS bench0.ceiling" >/dev/null
    q "CREATE TABLE bench0.ceiling AS bench0.events" >/dev/null
    s=$(date +%s.%N)
    curl -sf --data-binary @"$work/rows.tsv" \
        "http://127.0.0.1:$http/?query=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "INSERT INTO bench0.ceiling ($cols) FORMAT TabSeparated")" \
        || fail "ceiling insert"
    e=$(date +%s.%N)
    ceil+=("$(echo "$n / ($e - $s)" | bc)")
done
c=$(printf '%s\n' "${ceil[@]}" | median3)
echo "server_ceiling rows=$n rows_per_s=$c (median of 3)"
echo "ratio_vs_server_ceiling=$(echo "scale=2; $rate / $c" | bc)"
if [ "$rate" -lt 500000 ]; then
    echo "target (500,000 events/s) not met: $rate events/s; this server takes at most $c rows/s on this machine"
fi

echo "# 3. stats --by model over $rows requests: ClickHouse, tally's SQLite database, JSONL"
"$build/bench/make_db" "$work/big.db" "$rows" 24 --jsonl "$work/big.jsonl" || fail "make_db"
url="clickhouse://127.0.0.1:$http/big"
s=$(date +%s.%N)
"$tally" import "$work/big.db" --to "$url" >/dev/null || fail "import into ClickHouse"
e=$(date +%s.%N)
echo "import_db_to_clickhouse rows=$rows seconds=$(echo "$e - $s" | bc -l | cut -c1-6) rows_per_s=$(echo "$rows / ($e - $s)" | bc)"
check='[.groups[] | [.model, .requests, .prompt_tokens, .completion_tokens, .cost_usd]]'
# As inserted: several parts a month, so queries read FINAL.
t=()
for k in 1 2 3; do t+=("$(timeit "$tally" stats --by model "$url")"); done
echo "stats_by_model source=clickhouse_unmerged rows=$rows seconds=$(printf '%s\n' "${t[@]}" | median3) (median of 3; read FINAL)"
# Merged (the steady state of history): one part a month, no FINAL needed.
s=$(date +%s.%N)
for _ in $(seq 1 300); do
    q "OPTIMIZE TABLE big.events FINAL" >/dev/null
    parts=$(q "SELECT max(c) FROM (SELECT count() AS c FROM system.parts WHERE database = 'big' AND table = 'events' AND active GROUP BY partition)")
    [ "$parts" = 1 ] && break
    sleep 2
done
[ "$parts" = 1 ] || fail "the parts were not merged in 10 minutes"
e=$(date +%s.%N)
echo "optimize_final seconds=$(echo "$e - $s" | bc -l | cut -c1-6)"
a=$("$tally" stats --by model --json "$url" | jq -c "$check")
b=$("$tally" stats --by model --json "$work/big.db" | jq -c "$check")
j=$("$tally" stats --by model --json "$work/big.jsonl" | jq -c "$check")
[ "$a" = "$b" ] && [ "$a" = "$j" ] || fail "the answers differ: ClickHouse $a, SQLite $b, JSONL $j"
for src in "$url" "$work/big.db" "$work/big.jsonl"; do
    t=()
    for k in 1 2 3; do t+=("$(timeit "$tally" stats --by model "$src")"); done
    m=$(printf '%s\n' "${t[@]}" | median3)
    case $src in
    clickhouse:*) name=clickhouse ;;
    *.db) name=sqlite ;;
    *) name=jsonl ;;
    esac
    echo "stats_by_model source=$name rows=$rows seconds=$m (median of 3)"
    [ "$name" = clickhouse ] && ch_s=$m
    [ "$name" = jsonl ] && jsonl_s=$m
done
echo "jsonl_bytes=$(stat -c %s "$work/big.jsonl") sqlite_bytes=$(stat -c %s "$work/big.db") clickhouse_bytes=$(q "SELECT sum(bytes) FROM system.parts WHERE database = 'big' AND table = 'events' AND active")"
echo "clickhouse_vs_jsonl=$(echo "scale=2; $ch_s / $jsonl_s" | bc) (time ratio; below 1 is faster than tally over JSONL)"
