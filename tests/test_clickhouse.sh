#!/usr/bin/env bash
# test_clickhouse -- tally and a real ClickHouse (Debian's clickhouse-server
# 18.16, started on 127.0.0.1 with its own config and data in a temporary
# directory): `tally import --to clickhouse://` loads the demo's runs, the
# rows equal the JSONL events field by field, `tally stats`, `requests`,
# `runs` and `report` read clickhouse:// and answer as from the files,
# importing again changes no answer (each event once), and credentials come
# from the environment or a file, never from the URL or a message.
set -u
TALLY=${1:?usage: test_clickhouse.sh tally serve_sim train_sim prices.json}
SERVE_SIM=$2 TRAIN_SIM=$3 PRICES=$4
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
trap 'bash "$here/clickhouse.sh" stop "$dir/ch"; [ -n "${KEEP:-}" ] || rm -rf "$dir"' EXIT
pass=0 fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $name"; fi; }
read -r http tcp < <(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
bash "$here/clickhouse.sh" start "$dir/ch" "$http" "$tcp" || { echo "FAIL: clickhouse-server did not start"; exit 1; }
url="clickhouse://127.0.0.1:$http/tally_test"
export TALLY_CLICKHOUSE_USER=tally TALLY_CLICKHOUSE_PASSWORD_FILE="$dir/ch/password"
password=$(cat "$dir/ch/password")
q() { curl -sf -u "tally:$password" "http://127.0.0.1:$http/" --data-binary "$1"; }

"$SERVE_SIM" --runs "$dir/runs" --prices "$PRICES" >/dev/null
"$TRAIN_SIM" --runs "$dir/runs" >/dev/null
events=$(cat "$dir"/runs/*/events.jsonl | wc -l)
out=$("$TALLY" import "$dir/runs" --to "$url" 2>&1); rc=$?
check "import exit 0" test "$rc" -eq 0
check "import says what it sent" grep -q "sent $events," <<<"$out"
check "every event is a row" test "$(q 'SELECT count() FROM tally_test.events FINAL')" -eq "$events"
check "schema version recorded" test "$(q 'SELECT max(version) FROM tally_test.tally_schema')" -eq 1

# rows = the JSONL events, field by field (requests: every named field and number)
cols='id, model, engine, provider, finish_reason, route, request_id, principal_id, prompt_tokens, completion_tokens, latency_us, cached_tokens, cache_write_tokens, reasoning_tokens, ttft_us, cost_nusd, energy_j, ok, degraded'
q "SELECT $cols FROM tally_test.events FINAL WHERE kind = 'eval' AND name = 'request' ORDER BY id FORMAT JSONEachRow" >"$dir/ch.json"
cat "$dir"/runs/*/events.jsonl | jq -c 'select(.kind == "eval" and .name == "request") | .extra as $e | {id, model: $e.model, engine: ($e.engine // ""), provider: ($e.provider // ""), finish_reason: ($e.finish_reason // ""), route: ($e.route // ""), request_id: ($e.request_id // ""), principal_id: ($e.principal_id // ""), prompt_tokens: $e.prompt_tokens, completion_tokens: $e.completion_tokens, latency_us: $e.latency_us, cached_tokens: $e.cached_tokens, cache_write_tokens: $e.cache_write_tokens, reasoning_tokens: $e.reasoning_tokens, ttft_us: $e.ttft_us, cost_nusd: $e.cost_nusd, energy_j: $e.energy_j, ok: (if $e.ok == false then 0 else 1 end), degraded: ($e.degraded // "")}' \
    | jq -s -c 'sort_by(.id) | .[]' >"$dir/files.json"
norm() { jq -c 'with_entries(if (.value | type) == "string" and (.value | test("^-?[0-9]+$")) and (.key | test("tokens|_us|nusd")) then .value |= tonumber else . end)' "$1"; }
check "rows equal the JSONL events field by field" test "$(norm "$dir/ch.json" | md5sum)" = "$(norm "$dir/files.json" | md5sum)"
check "request rows: as many as requests" test "$(wc -l <"$dir/ch.json")" -eq "$(wc -l <"$dir/files.json")" -a "$(wc -l <"$dir/ch.json")" -gt 0

# the same answers as from the files
r9='def r: if type == "number" then (. * 1e6 | round / 1e6) else . end; [.groups[] | with_entries(.value |= r)]'
for by in model engine,route run; do
    a=$("$TALLY" stats --by "$by" --json "$url" | jq -c "$r9")
    b=$("$TALLY" stats --by "$by" --json "$dir/runs" | jq -c "$r9")
    check "stats --by $by: ClickHouse = files" test "$a" = "$b"
done
check "stats --where/--since over ClickHouse" test "$("$TALLY" stats --where model=qwen2.5-32b --since 2h --json "$url" | jq -c "$r9")" = "$("$TALLY" stats --where model=qwen2.5-32b --since 2h --json "$dir/runs" | jq -c "$r9")"
check "requests over ClickHouse" test "$("$TALLY" requests --sort latency -n 5 --json "$url")" = "$("$TALLY" requests --sort latency -n 5 --json "$dir/runs")"
check "runs over ClickHouse" test "$("$TALLY" runs --json "$url" | jq -c '[.runs[] | [.run, .requests, .steps, .reason]]')" = "$("$TALLY" runs --json "$dir/runs" | jq -c '[.runs[] | [.run, .requests, .steps, .reason]]')"
"$TALLY" report "$url" -o "$dir/r.html" >/dev/null
check "report over ClickHouse" grep -q "\"requests\":$(jq '[.groups[].requests] | add' <<<"$("$TALLY" stats --json "$dir/runs")")" "$dir/r.html"

# exactly once: importing again adds rows the table merges; no answer changes
before=$("$TALLY" stats --by model --json "$url")
"$TALLY" import "$dir/runs" --to "$url" >/dev/null 2>&1
check "import again: the same stats" test "$("$TALLY" stats --by model --json "$url")" = "$before"
check "import again: each event once (FINAL)" test "$(q 'SELECT count() FROM tally_test.events FINAL')" -eq "$events"
q "OPTIMIZE TABLE tally_test.events FINAL" >/dev/null
check "after the merge, one row per event" test "$(q 'SELECT count() FROM tally_test.events')" -eq "$events"

# databases: a tally database and an OpenJarvis telemetry database, imported twice
"$TALLY" import "$dir/runs" --db "$dir/t.db" >/dev/null
out=$("$TALLY" import "$dir/t.db" --to "${url}_db" 2>&1); rc=$?
check "import of a tally database" test "$rc" -eq 0
"$TALLY" import "$dir/t.db" --to "${url}_db" >/dev/null 2>&1
check "tally database: each event once" test "$(q 'SELECT count() FROM tally_test_db.events FINAL')" -eq "$events"
check "tally database: stats = files" test "$("$TALLY" stats --by model,engine --json "${url}_db" | jq -c "$r9")" = "$("$TALLY" stats --by model,engine --json "$dir/runs" | jq -c "$r9")"
sqlite3 "$dir/oj.db" "CREATE TABLE telemetry(id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp REAL NOT NULL, model_id TEXT NOT NULL, engine TEXT NOT NULL DEFAULT '', prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0, total_tokens INTEGER NOT NULL DEFAULT 0, latency_seconds REAL NOT NULL DEFAULT 0.0, ttft REAL NOT NULL DEFAULT 0.0, cost_usd REAL NOT NULL DEFAULT 0.0, energy_joules REAL NOT NULL DEFAULT 0.0, gpu_utilization_pct REAL NOT NULL DEFAULT 0.0, throughput_tok_per_sec REAL NOT NULL DEFAULT 0.0);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
INSERT INTO telemetry(timestamp, model_id, engine, prompt_tokens, completion_tokens, total_tokens, latency_seconds, ttft, cost_usd, energy_joules, gpu_utilization_pct)
SELECT 1760000000 + i * 7.25, CASE i % 3 WHEN 0 THEN 'qwen' WHEN 1 THEN 'llama' ELSE 'mistral' END, CASE i % 2 WHEN 0 THEN 'ollama' ELSE 'vllm' END, 100 + i, 10 + i % 40, 110 + i + i % 40, 0.05 + (i % 97) * 0.013, 0.01 + (i % 13) * 0.002, (100 + i) * 0.0000015, 0.5 + (i % 7), 40 + i % 50 FROM n;"
"$TALLY" import "$dir/oj.db" --to "${url}_oj" >/dev/null 2>&1
out=$("$TALLY" import "$dir/oj.db" --to "${url}_oj" 2>&1); rc=$?
check "import of an OpenJarvis database" test "$rc" -eq 0
check "OpenJarvis: each row once" test "$(q 'SELECT count() FROM tally_test_oj.events FINAL')" -eq 500
oj='[.groups[] | [.model, .engine, .requests, .prompt_tokens, .completion_tokens, (.cost_usd * 1e6 | round), (.latency_p50_ms * 1000 | round), (.latency_p99_ms * 1000 | round), (.energy_j * 1000 | round)]]'
check "OpenJarvis: stats = the database's" test "$("$TALLY" stats --by model,engine --json "${url}_oj" | jq -c "$oj")" = "$("$TALLY" stats --by model,engine --json "$dir/oj.db" | jq -c "$oj")"
err=$("$TALLY" import "$dir/oj.db" --db "$dir/x.db" 2>&1); rc=$?
check "a database into a tally database is refused, saying why" test "$rc" -eq 2 -a -n "$(grep -o 'is a database' <<<"$err")"

# credentials: from the environment or a file; refused in the URL; never said
err=$("$TALLY" stats "clickhouse://tally:secret@127.0.0.1:$http/tally_test" 2>&1); rc=$?
check "credentials in the URL refused" test "$rc" -ne 0
check "the refusal does not repeat them" bash -c "! grep -q secret <<<'$err'"
err=$(TALLY_CLICKHOUSE_PASSWORD_FILE= TALLY_CLICKHOUSE_PASSWORD=wrong-pw-xyz "$TALLY" stats "$url" 2>&1); rc=$?
check "a wrong password fails" test "$rc" -ne 0
check "the failure does not say the password" bash -c "! grep -q wrong-pw-xyz <<<'$err'"
check "the password is not in the server's log" bash -c "! grep -rqF '$password' '$dir/ch/log'"
err=$("$TALLY" tail "$url" 2>&1); rc=$?
check "tail refuses ClickHouse, says why" test "$rc" -eq 2
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
