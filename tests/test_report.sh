#!/usr/bin/env bash
# test_report -- tally report in a real browser: the demo's data, the
# report written from it, opened by headless chromium.  Fails on any
# console message (the page logs none: a message is an error), checks
# every chart's marks against the data the page carries
# (tests/report_check.py), that the page is self-contained (nothing
# fetched), and saves a screenshot next to the report.
set -u
TALLY=${1:?usage: test_report.sh tally serve_sim train_sim prices.json OUTDIR}
SERVE_SIM=$2 TRAIN_SIM=$3 PRICES=$4 OUT=${5:?}
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $name"; fi; }
browser=$(command -v chromium || command -v chromium-browser)
if [ -z "$browser" ]; then echo "FAIL: chromium is not installed (scripts/deps.sh installs it)"; exit 1; fi
chrome() { timeout 120 "$browser" --headless --no-sandbox --disable-gpu --user-data-dir="$dir/profile" "$@"; }

"$SERVE_SIM" --runs "$dir/runs" --prices "$PRICES" >/dev/null
"$TRAIN_SIM" --runs "$dir/runs" >/dev/null
mkdir -p "$OUT"
out=$("$TALLY" report "$dir/runs" -o "$OUT/report.html")
check "report says where it wrote" grep -q "wrote $OUT/report.html" <<<"$out"
check "no http(s) reference in the page" bash -c "! grep -qiE '(src|href)=\"?(https?:)?//' '$OUT/report.html'"
chrome --enable-logging=stderr --v=0 --dump-dom "file://$OUT/report.html" >"$dir/dom.html" 2>"$dir/console.log"
check "the browser drew the page" grep -q 'data-chart="latency"' "$dir/dom.html"
if grep -q 'CONSOLE' "$dir/console.log"; then
    grep 'CONSOLE' "$dir/console.log"
    check "no console message" false
else
    check "no console message" true
fi
"$TALLY" stats --by model --json "$dir/runs" >"$dir/stats.json"
check "every chart has its marks" python3 "$here/report_check.py" "$dir/dom.html" "$dir/stats.json"
chrome --hide-scrollbars --window-size=1280,2400 --screenshot="$OUT/report.png" "file://$OUT/report.html" >/dev/null 2>&1
check "screenshot saved" test -s "$OUT/report.png"
# the same report from a database: answered by its per-minute rollup, the
# same tables as from the files, its charts drawn and complete
"$TALLY" import "$dir/runs" --db "$dir/t.db" >/dev/null
"$TALLY" report "$dir/t.db" -o "$dir/db.html" >/dev/null
check "report from a database" grep -q '"requests":4000' "$dir/db.html"
# (sums of fractional values -- energy, throughput -- may differ in their
# last digits with the order of addition: compared to 9 significant digits)
tables() { python3 -c 'import json,re,sys; d=json.loads(re.search(r"<script type=\"application/json\" id=\"tally-data\">(.*?)</script>", open(sys.argv[1]).read(), re.S).group(1).replace("<\\/", "</")); r=lambda v: float("%.9g" % v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v; print(json.dumps([[r(g[k]) for k in sorted(g)] for t in d["tables"] for g in t["stats"]["groups"]]))' "$1"; }
check "database tables = file tables" test "$(tables "$dir/db.html")" = "$(tables "$OUT/report.html")"
chrome --enable-logging=stderr --v=0 --dump-dom "file://$dir/db.html" >"$dir/dbdom.html" 2>"$dir/dbconsole.log"
check "database report: no console message" bash -c "! grep -q CONSOLE '$dir/dbconsole.log'"
check "database report: every chart has its marks" python3 "$here/report_check.py" "$dir/dbdom.html" "$dir/stats.json" \
    latency rate error_rate ttft tpot tokens_daily cost_daily degraded errors energy loss-0 steptime-0 toks-0
check "database report: read from the rollup" grep -q '"x":"minute"' "$dir/db.html"
check "report bad option" bash -c "! '$TALLY' report --colour red '$dir/runs' 2>/dev/null"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
