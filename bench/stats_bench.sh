#!/usr/bin/env bash
# stats_bench -- `tally stats --by model` over a generated ~1 GB JSONL of
# request events (MB/s, events/s), and in the same run jq doing the same
# sums over the same file, and `tally report` of it (time against stats,
# size); then the same query through the SQLite source:
# a 10-million-row tally database of a day of requests (bench/make_db),
# answered from its per-minute rollup, and with --scan (every row read) for
# comparison, and the report of those 10 million rows (its size).  Each
# tally figure is the median of three runs.
#
#   bench/stats_bench.sh [BUILD_DIR] [REQUESTS] [DB_ROWS]
# defaults: build 2000000 10000000.  Needs jq (Debian package).
# SKIP_JQ=1 leaves jq out (it takes about half a minute per GB).  DuckDB
# (npm, into the scratch directory) is asked the same question over the
# JSONL file: ratio_vs_duckdb.
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
t1=$(for i in 1 2 3; do timeit "$tally" stats --threads 1 --by model "$file"; done | median3)
printf 'case=stats_jsonl_one_thread seconds=%.2f mb_per_s=%.0f every_core_speedup=%.2f\n' "$t1" \
    "$(echo "$bytes / $t1 / 1000000" | bc -l)" "$(echo "$t1 / $t" | bc -l)"

# DuckDB (npm @duckdb/node-api, installed into the scratch directory) asked
# the same question over the same file with its schema given; SKIP_DUCKDB=1
# leaves it out.  Peak RSS of both from /usr/bin/time.
rss_of() { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1; }
if [ -n "${SKIP_DUCKDB:-}" ]; then
    echo "case=duckdb skipped (SKIP_DUCKDB)"
else
    mkdir -p "$work/duckdb"
    (cd "$work/duckdb" && npm install --silent --no-audit --no-fund @duckdb/node-api >/dev/null 2>&1) \
        || { echo "case=duckdb FAILED: npm install @duckdb/node-api" >&2; exit 1; }
    cp "$(dirname "$0")/duckdb_stats.mjs" "$work/duckdb/"
    dq=() dw=()
    for i in 1 2 3; do
        s=$(date +%s.%N)
        out=$(cd "$work/duckdb" && node duckdb_stats.mjs "$file") || { echo "case=duckdb FAILED" >&2; exit 1; }
        e=$(date +%s.%N)
        dq+=("$(sed -n 's/^seconds=//p' <<<"$out")")
        dw+=("$(echo "$e - $s" | bc -l)")
    done
    # the same answer: requests and token sums per model
    a=$(head -1 <<<"$out" | jq -c '[.[] | [.model, (.requests | tonumber), (.prompt_tokens | tonumber), (.completion_tokens | tonumber)]]')
    b=$("$tally" stats --by model --json "$file" | jq -c '[.groups[] | select(.requests > 0) | [.model, .requests, .prompt_tokens, .completion_tokens]]')
    [ "$a" = "$b" ] || { echo "case=duckdb FAILED: answers differ: duckdb $a tally $b" >&2; exit 1; }
    q=$(printf '%s\n' "${dq[@]}" | median3) w=$(printf '%s\n' "${dw[@]}" | median3)
    rt=$(rss_of "$tally" stats --by model "$file")
    rd=$(cd "$work/duckdb" && rss_of node duckdb_stats.mjs "$file")
    printf 'case=duckdb_same_question query_seconds=%.2f process_seconds=%.2f peak_rss_kb=%s\n' "$q" "$w" "$rd"
    printf 'case=tally_vs_duckdb tally_seconds=%.2f tally_peak_rss_kb=%s ratio_vs_duckdb=%.2f ratio_vs_duckdb_process=%.2f (above 1: tally faster)\n' \
        "$t" "$rt" "$(echo "$q / $t" | bc -l)" "$(echo "$w / $t" | bc -l)"
fi

# tally report over the same file, in the same run: time against stats
# (the target: at most 1.3x) and the page's size.
tr=$(for i in 1 2 3; do timeit "$tally" report "$file" -o "$work/report.html"; done | median3)
rbytes=$(stat -c %s "$work/report.html")
[ "$rbytes" -gt 0 ] || { echo "case=report_jsonl FAILED: no report written" >&2; exit 1; }
printf 'case=report_jsonl seconds=%.2f ratio_vs_stats=%.2f report_bytes=%d\n' "$tr" "$(echo "$tr / $t" | bc -l)" "$rbytes"

# tally requests (the 20 slowest) over the same file: read by every core,
# handed on in file order
tq=$(for i in 1 2 3; do timeit "$tally" requests --sort latency "$file"; done | median3)
printf 'case=requests_jsonl seconds=%.2f ratio_vs_stats=%.2f\n' "$tq" "$(echo "$tq / $t" | bc -l)"

# tally import of the same file into a new database: parsing on every
# core, one writer (the target: 150 MB/s); median of 3, each run's rows
# counted
for threads in 0 1; do
    times=""
    for rep in 1 2 3; do
        rm -f "$work"/imp.db*
        sync
        s=$(date +%s.%N)
        rss=$(rss_of "$tally" import --threads "${threads/#0/$(nproc)}" --db "$work/imp.db" "$file")
        e=$(date +%s.%N)
        n=$(sqlite3 "$work/imp.db" 'SELECT count(*) FROM events')
        [ "$n" -eq "$events" ] || { echo "case=import_jsonl FAILED: $n of $events events stored" >&2; exit 1; }
        times="$times $(echo "$e - $s" | bc -l)"
    done
    ti=$(tr ' ' '\n' <<<"$times" | grep . | median3)
    printf 'case=import_jsonl threads=%s seconds=%.2f mb_per_s=%.0f events_per_s=%.0f peak_rss_kb=%s runs=%s\n' \
        "${threads/#0/every-core}" "$ti" "$(echo "$bytes / $ti / 1000000" | bc -l)" "$(echo "$events / $ti" | bc -l)" "$rss" \
        "$(printf '%.1f,' $times | sed 's/,$//')"
done
rm -f "$work"/imp.db*

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
rm -rf "$work/runs"

echo "# building a $rows-row tally database (a day of requests)"
db=$work/events.db
tb=$(timeit "$build/bench/make_db" "$db" "$rows" 24)
cells=$(sqlite3 "$db" 'SELECT count(*) FROM rollup' 2>/dev/null || echo "?")
printf 'case=make_db rows=%d seconds=%.1f rows_per_s=%.0f db_bytes=%d rollup_cells=%s\n' "$rows" "$tb" \
    "$(echo "$rows / $tb" | bc -l)" "$(stat -c %s "$db")" "$cells"
ts=$(for i in 1 2 3; do timeit "$tally" stats --by model "$db"; done | median3)
printf 'case=stats_sqlite rows=%d seconds=%.2f rows_per_s=%.0f\n' "$rows" "$ts" "$(echo "$rows / $ts" | bc -l)"
t6=$(for i in 1 2 3; do timeit "$tally" stats --by model --since 6h "$db"; done | median3)
printf 'case=stats_sqlite_since_6h seconds=%.2f\n' "$t6"
tr=$(for i in 1 2 3; do timeit "$tally" report "$db" -o "$work/report_db.html"; done | median3)
rbytes=$(stat -c %s "$work/report_db.html")
[ "$rbytes" -gt 0 ] || { echo "case=report_sqlite FAILED: no report written" >&2; exit 1; }
printf 'case=report_sqlite rows=%d seconds=%.2f ratio_vs_stats=%.2f report_bytes=%d\n' "$rows" "$tr" \
    "$(echo "$tr / $ts" | bc -l)" "$rbytes"
tscan=$(timeit "$tally" stats --by model --scan "$db")
printf 'case=stats_sqlite_scan rows=%d seconds=%.2f rows_per_s=%.0f rollup_speedup=%.0f\n' "$rows" "$tscan" \
    "$(echo "$rows / $tscan" | bc -l)" "$(echo "$tscan / $ts" | bc -l)"
