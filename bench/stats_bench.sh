#!/usr/bin/env bash
# stats_bench -- `tally stats --by model` over a generated ~1 GB JSONL of
# request events (MB/s, events/s), the same query through the SQLite
# source (a 10-million-row tally database), and jq doing the same sums
# over the same file, in the same run for comparison.
#
#   bench/stats_bench.sh [BUILD_DIR] [REQUESTS] [DB_ROWS]
# defaults: build 2000000 10000000.  Needs jq and sqlite3 (Debian packages).
set -euo pipefail
build=${1:-build}
requests=${2:-2000000}
rows=${3:-10000000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tally=$build/tally

median3() { sort -n | sed -n 2p; }
timeit() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc -l; }

echo "# generating $requests requests with serve_sim"
"$build/serve_sim" --requests "$requests" --runs "$work/runs" --queue-mb 2048 >/dev/null
file=$(ls "$work"/runs/*/events.jsonl)
bytes=$(stat -c %s "$file")
events=$(wc -l <"$file")
echo "# file: $bytes bytes, $events events"

t=$(for i in 1 2 3; do timeit "$tally" stats --by model "$file"; done | median3)
printf 'case=stats_jsonl bytes=%d seconds=%.2f mb_per_s=%.0f events_per_s=%.0f\n' "$bytes" "$t" \
    "$(echo "$bytes / $t / 1000000" | bc -l)" "$(echo "$events / $t" | bc -l)"

jq_prog='reduce (inputs | select(.kind == "eval" and .name == "request") | .extra) as $e ({};
  .[$e.model] |= {n: ((.n // 0) + 1), prompt: ((.prompt // 0) + $e.prompt_tokens),
                  completion: ((.completion // 0) + $e.completion_tokens), latency: ((.latency // 0) + $e.latency_us)})'
if [ -n "${SKIP_JQ:-}" ]; then
    echo "case=jq_same_sums skipped (SKIP_JQ)"
else
    tj=$(timeit jq -n "$jq_prog" "$file")
    printf 'case=jq_same_sums seconds=%.2f mb_per_s=%.0f tally_speedup=%.1f\n' "$tj" \
        "$(echo "$bytes / $tj / 1000000" | bc -l)" "$(echo "$tj / $t" | bc -l)"
fi

echo "# building a $rows-row tally database"
db=$work/events.db
"$tally" import "$file" --db "$db" >/dev/null
have=$(sqlite3 "$db" 'SELECT count(*) FROM events')
if [ "$have" -lt "$rows" ]; then
    copies=$(( (rows - have + have - 1) / have ))
    sqlite3 "$db" "INSERT INTO events(id, ts, run_id, kind, phase, name, model, engine, route, principal_id,
      request_id, ok, error, degraded, prompt_tokens, cached_tokens, cache_write_tokens, completion_tokens,
      reasoning_tokens, latency_us, ttft_us, cost_nusd, energy_j, gpu_util_pct, step, loss, text, json)
      SELECT e.id || '-' || k.value, e.ts, e.run_id, e.kind, e.phase, e.name, e.model, e.engine, e.route, e.principal_id, e.request_id, e.ok, e.error, e.degraded, e.prompt_tokens, e.cached_tokens, e.cache_write_tokens, e.completion_tokens, e.reasoning_tokens, e.latency_us, e.ttft_us, e.cost_nusd, e.energy_j, e.gpu_util_pct, e.step, e.loss, e.text, e.json
      FROM events AS e, generate_series(1, $copies) AS k;
      DELETE FROM events WHERE seq > $rows;"
fi
n=$(sqlite3 "$db" 'SELECT count(*) FROM events')
ts=$(for i in 1 2 3; do timeit "$tally" stats --by model "$db"; done | median3)
printf 'case=stats_sqlite rows=%d db_bytes=%d seconds=%.2f rows_per_s=%.0f\n' "$n" "$(stat -c %s "$db")" "$ts" \
    "$(echo "$n / $ts" | bc -l)"
