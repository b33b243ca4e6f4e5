#!/usr/bin/env bash
# test_clickhouse_cluster -- tally against two ClickHouse servers as two
# shards of one cluster (each Debian's clickhouse-server on 127.0.0.1 with
# its own config and data), with a Distributed table over them: four
# writer processes record through the library's ClickHouse sink, two into
# each shard, and `tally stats` over the Distributed table equals the union
# of what they wrote to their JSONL files.
set -u
TALLY=${1:?usage: test_clickhouse_cluster.sh tally serve_sim prices.json}
SERVE_SIM=$2 PRICES=$3
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
trap 'bash "$here/clickhouse.sh" stop "$dir/a"; bash "$here/clickhouse.sh" stop "$dir/b"; rm -rf "$dir"' EXIT
pass=0 fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $name"; fi; }
read -r ah at bh bt < <(python3 -c 'import socket
s = [socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
remote="<remote_servers><tally_pair>
  <shard><replica><host>127.0.0.1</host><port>$at</port></replica></shard>
  <shard><replica><host>127.0.0.1</host><port>$bt</port></replica></shard>
</tally_pair></remote_servers>"
bash "$here/clickhouse.sh" start "$dir/a" "$ah" "$at" "$remote" || { echo "FAIL: shard A did not start"; exit 1; }
bash "$here/clickhouse.sh" start "$dir/b" "$bh" "$bt" "$remote" || { echo "FAIL: shard B did not start"; exit 1; }
qa() { curl -sf "http://127.0.0.1:$ah/" --data-binary "$1"; }
qb() { curl -sf "http://127.0.0.1:$bh/" --data-binary "$1"; }
unset TALLY_CLICKHOUSE_USER TALLY_CLICKHOUSE_PASSWORD TALLY_CLICKHOUSE_PASSWORD_FILE

# four writers, two per shard, each also writing its own JSONL run
pids=()
for i in 1 2 3 4; do
    port=$ah; [ $((i % 2)) -eq 0 ] && port=$bh
    TALLY_CLICKHOUSE="clickhouse://127.0.0.1:$port/fleet" "$SERVE_SIM" --runs "$dir/runs/w$i" --seed "$i" \
        --requests 3000 --prices "$PRICES" >/dev/null 2>"$dir/w$i.err" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || echo "FAIL: a writer exited non-zero"; done
events=$(cat "$dir"/runs/w*/*/events.jsonl | wc -l)
files=("$dir"/runs/w1 "$dir"/runs/w2 "$dir"/runs/w3 "$dir"/runs/w4)
na=$(qa 'SELECT count() FROM fleet.events FINAL') nb=$(qb 'SELECT count() FROM fleet.events FINAL')
check "four runs written" test "$(ls -d "$dir"/runs/w*/*/ | wc -l)" -eq 4
check "both shards hold rows" test "$na" -gt 0 -a "$nb" -gt 0
check "the shards hold every event once" test $((na + nb)) -eq "$events"

# the Distributed table over both shards, on A
qa "CREATE DATABASE IF NOT EXISTS fleet_all" >/dev/null
qa "CREATE TABLE IF NOT EXISTS fleet_all.events AS fleet.events ENGINE = Distributed(tally_pair, fleet, events)" >/dev/null
url="clickhouse://127.0.0.1:$ah/fleet_all"
check "the Distributed table counts every event" test "$(qa 'SELECT count() FROM fleet_all.events')" -eq "$events"
r9='def r: if type == "number" then (. * 1e6 | round / 1e6) else . end; [.groups[] | with_entries(.value |= r)]'
for by in model engine,route run; do
    a=$("$TALLY" stats --by "$by" --json "$url" | jq -c "$r9")
    b=$("$TALLY" stats --by "$by" --json "${files[@]}" | jq -c "$r9")
    check "stats --by $by over the cluster = the writers' files" test -n "$a" -a "$a" = "$b"
done
# a writer's batch delivered twice (a retry after a time-out): still each event once
"$TALLY" import "$dir/runs/w1" "$dir/runs/w3" --to "clickhouse://127.0.0.1:$ah/fleet" >/dev/null 2>&1
check "shard A now holds rows twice" test "$(qa 'SELECT count() FROM fleet.events')" -gt "$na"
a=$("$TALLY" stats --by model --json "$url" | jq -c "$r9")
b=$("$TALLY" stats --by model --json "${files[@]}" | jq -c "$r9")
check "with duplicates in a shard, stats over the cluster = the files" test -n "$a" -a "$a" = "$b"
c=$("$TALLY" stats --by model --json "$url" | jq '.rollup_cells')
check "the shards answered (cells, not rows)" test "$c" -gt 0
a=$("$TALLY" stats --where model=qwen2.5-32b --by engine --json "$url" | jq -c "$r9")
b=$("$TALLY" stats --where model=qwen2.5-32b --by engine --json "${files[@]}" | jq -c "$r9")
check "stats --where over the cluster" test -n "$a" -a "$a" = "$b"
check "runs over the cluster" test "$("$TALLY" runs --json "$url" | jq -c '[.runs[] | [.run, .requests]] | sort')" = "$("$TALLY" runs --json "${files[@]}" | jq -c '[.runs[] | [.run, .requests]] | sort')"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
