#!/usr/bin/env bash
# test_cli -- the tally command end to end: validate on good and bad
# files, tail with -f across appends, truncation, rotation and a torn
# line, runs --sort / --json / --csv, --opt=value, stats tables that fit
# 120 columns, and usage errors.  Each check can fail; the script
# prints "N passed, N failed" and exits non-zero on any failure.
set -u
TALLY=${1:?usage: test_cli.sh PATH-TO-tally serve_sim train_sim prices.json}
SERVE_SIM=${2:?} TRAIN_SIM=${3:?} PRICES=${4:?}
dir=$(mktemp -d)
trap 'rm -rf "$dir"; [ -n "${tailpid:-}" ] && kill "$tailpid" 2>/dev/null' EXIT
pass=0 fail=0
check() { # name, then a command that must succeed
    local name=$1; shift
    if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $name"; fi
}

start='{"kind":"run_start","t":0,"ts":1800000000.0,"run_id":"r1","schema":"toy/v1","started_at":"2027-01-15T08:00:00Z","host":{"name":"h","os":"linux","arch":"x86_64"},"backend":{"kind":"cpu"},"model":{"name":"m"},"config":{}}'
req='{"kind":"eval","t":1,"ts":1800000001.0,"phase":"serve","name":"request","extra":{"model":"m","prompt_tokens":1,"completion_tokens":2,"latency_us":3}}'
end='{"kind":"run_end","t":2,"ts":1800000002.0,"ended_at":"2027-01-15T08:00:02Z","reason":"completed","stats":{"requests":1,"errors":0,"tokens_out":2}}'

# validate: a clean file, Tep::Events's shape (integer t, no ts, no run_id), and problems
printf '%s\n%s\n%s\n' "$start" "$req" "$end" >"$dir/good.jsonl"
check "validate clean" "$TALLY" validate "$dir/good.jsonl"
printf '%s\n' '{"kind":"run_start","schema":"toy/v1","t":0,"started_at":"2026-01-01T00:00:00Z","host":{"name":"h","os":"linux","arch":"x86_64"},"backend":{"kind":"cpu"},"model":{"name":"m","path":""},"config":{}}' \
    '{"kind":"eval","phase":"serve","t":3,"name":"request","extra":{"model":"m","prompt_tokens":5,"completion_tokens":2,"latency_us":9,"request_id":"x"}}' \
    '{"kind":"run_end","t":4,"ended_at":"2026-01-01T00:00:04Z","reason":"completed","stats":{"requests":1,"errors":0,"tokens_out":2}}' >"$dir/tep.jsonl"
check "validate Tep::Events" "$TALLY" validate "$dir/tep.jsonl"
printf '%s\n%s\n%s\n%s\n%s\n%s\n{"kind":"no' "$req" "$start" "$req" '{"kind":"eval","t":0.5,"phase":"serve","name":"request","extra":{"model":"m","prompt_tokens":"1","completion_tokens":2}}' "$end" "$end" >"$dir/bad.jsonl"
out=$("$TALLY" validate "$dir/bad.jsonl"); rc=$?
check "validate exit 1" test "$rc" -eq 1
check "validate run_start first" grep -q 'bad.jsonl:1: run_start is not the first event' <<<"$out"
check "validate t backwards" grep -q 'bad.jsonl:4: t goes backwards' <<<"$out"
check "validate type" grep -q 'bad.jsonl:4: extra.prompt_tokens must be an integer' <<<"$out"
check "validate missing" grep -q 'bad.jsonl:4: extra.latency_us is missing' <<<"$out"
check "validate two run_end" grep -q 'bad.jsonl:6: more than one run_end' <<<"$out"
check "validate torn" grep -q 'bad.jsonl:7: torn last line' <<<"$out"

# tail without -f: the last N, and a torn last line is reported, not shown
printf '%s\n%s\n%s\n{"kind":"no' "$start" "$req" "$end" >"$dir/t.jsonl"
out=$("$TALLY" tail -n 2 "$dir/t.jsonl" 2>&1)
check "tail -n" grep -q 'request m tokens=1/2' <<<"$out"
check "tail -n count" test "$(grep -c . <<<"$out")" -eq 3
check "tail torn" grep -q 'last line is torn' <<<"$out"

# tail -f: appends, a torn line completed later, truncation, rotation
f="$dir/live.jsonl"
printf '%s\n' "$start" >"$f"
"$TALLY" tail -f -n 0 "$f" >"$dir/tail.out" 2>&1 &
tailpid=$!
sleep 0.5
note() { printf '{"kind":"note","t":%s,"ts":1800000000.0,"text":"%s"}' "$1" "$2"; }
note 1 one >>"$f"; echo >>"$f"
printf '{"kind":"note","t":2,"ts":1800000000.0,"text":"tw' >>"$f"; sleep 0.5; printf 'o"}\n' >>"$f" # torn, then completed
sleep 0.5
truncate -s 0 "$f"; sleep 0.5
note 3 three >>"$f"; echo >>"$f"; sleep 0.5
mv "$f" "$f.1"; note 4 four >"$f"; echo >>"$f"; sleep 0.8
kill "$tailpid"; wait "$tailpid" 2>/dev/null; tailpid=
[ -n "${TALLY_TEST_DEBUG:-}" ] && cat "$dir/tail.out"
out=$(cat "$dir/tail.out")
check "tail -f append" grep -q 'note one' <<<"$out"
check "tail -f torn completed" grep -q 'note two' <<<"$out"
check "tail -f truncation" grep -q 'note three' <<<"$out"
check "tail -f rotation" grep -q 'note four' <<<"$out"
check "tail -f each line once" test "$(grep -c 'run_start' <<<"$out")" -eq 1 -a "$(grep -c 'note one' <<<"$out")" -eq 1

# runs
mkdir -p "$dir/runs/a" "$dir/runs/b"
printf '%s\n%s\n%s\n' "$start" "$req" "$end" >"$dir/runs/a/events.jsonl"
printf '%s\n%s\n%s\n' '{"kind":"run_start","t":0,"ts":1800000000.0,"run_id":"t1","started_at":"x","host":{},"backend":{"kind":"cuda"},"model":{"name":"tiny"},"phase":"train"}' \
    '{"kind":"step","t":1,"ts":1800000001.0,"phase":"train","step":0,"loss":2.5,"wall_us":5}' \
    '{"kind":"run_end","t":2,"ts":1800000003.0,"ended_at":"x","reason":"interrupted","stats":{"requests":0,"errors":0,"tokens_out":0}}' >"$dir/runs/b/events.jsonl"
out=$("$TALLY" runs "$dir/runs" --sort final_loss)
check "runs train line" grep -qE '^t1 +train +tiny .* 1st +2.5 +interrupted' <<<"$out"
check "runs serve line" grep -qE '^r1 +serve +m .* 1rq .* completed' <<<"$out"
check "runs bad sort" bash -c "! '$TALLY' runs --sort colour '$dir/runs' 2>/dev/null"
out=$("$TALLY" runs --json "$dir/runs" --sort=final_loss)
check "runs --json" test "$(jq -c '[.runs[] | [.run, .kind, .steps, .requests, .final_loss, .reason]]' <<<"$out")" = '[["t1","train",1,0,2.5,"interrupted"],["r1","serve",0,1,null,"completed"]]'
out=$("$TALLY" runs --csv "$dir/runs")
check "runs --csv header" test "$(head -1 <<<"$out")" = "run,kind,model,started,duration_s,requests,steps,final_loss,reason,errors"
check "runs --csv row" grep -qE '^t1,train,tiny,[0-9T:Z-]+,[0-9.]+,0,1,2.5,interrupted,0$' <<<"$out"
# --opt=value is --opt value, for every command
check "opt=value same output" test "$("$TALLY" stats --by=model --json "$dir/runs")" = "$("$TALLY" stats --by model --json "$dir/runs")"
check "opt=value unknown still refused" bash -c "! '$TALLY' stats --colour=red '$dir/runs' 2>/dev/null"

# usage errors: one line on stderr, non-zero
err=$("$TALLY" nosuch 2>&1 >/dev/null); rc=$?
check "unknown command" test "$rc" -eq 2 -a "$(wc -l <<<"$err")" -eq 1
err=$("$TALLY" validate /no/such 2>&1 >/dev/null); rc=$?
check "validate missing file" test "$rc" -eq 2
check "version" bash -c "'$TALLY' --version | grep -q '^tally [0-9]'"

# dangerous input: durations need a unit; trim --dry-run changes nothing
db="$dir/trim.db"
"$TALLY" import "$dir/good.jsonl" --db "$db" >/dev/null
err=$("$TALLY" trim "$db" --older-than 30 2>&1); rc=$?
check "trim bare number refused" test "$rc" -eq 2
check "trim bare number says why" grep -q 'unit' <<<"$err"
err=$("$TALLY" stats --since 30 "$dir/good.jsonl" 2>&1); rc=$?
check "stats --since bare number refused" test "$rc" -eq 2
out=$("$TALLY" trim "$db" --max-rows 1 --dry-run); rc=$?
check "trim --dry-run counts" test "$rc" -eq 0 -a "$out" = "would delete 2 rows"
check "trim --dry-run keeps rows" test "$(sqlite3 "$db" 'SELECT count(*) FROM events')" -eq 3
out=$("$TALLY" trim "$db" --max-rows 1)
check "trim deletes" test "$out" = "deleted 2 rows" -a "$(sqlite3 "$db" 'SELECT count(*) FROM events')" -eq 1

# a burst of 3000 events in one microsecond (past the 1024 slots a
# microsecond has) and the same lines again: each event stored once, and
# importing the file again adds nothing; the stored rows are the file's
python3 -c '
for i in range(3000):
    print("{\"kind\":\"eval\",\"ts\":1800000000.5,\"id\":\"burst-%d\",\"name\":\"request\",\"extra\":{\"model\":\"b\",\"prompt_tokens\":%d,\"completion_tokens\":1,\"latency_us\":5}}" % (i, i))
print("{\"kind\":\"eval\",\"ts\":1800000000.500001,\"id\":\"after\",\"name\":\"request\",\"extra\":{\"model\":\"b\",\"prompt_tokens\":1,\"completion_tokens\":1,\"latency_us\":5}}")
' >"$dir/burst1.jsonl"
cat "$dir/burst1.jsonl" "$dir/burst1.jsonl" >"$dir/burst.jsonl"
out=$("$TALLY" import "$dir/burst.jsonl" --db "$dir/burst.db")
check "a burst is stored once" grep -q 'imported 3001, duplicates skipped 3001' <<<"$out"
# a database import creates is written with a rollback journal, then
# left in WAL mode like every tally database (and no journal behind)
check "a new imported database is left in WAL mode" test "$(sqlite3 "$dir/burst.db" 'PRAGMA journal_mode')" = wal
check "no rollback journal left" test ! -e "$dir/burst.db-journal"
out=$("$TALLY" import "$dir/burst1.jsonl" --db "$dir/burst.db")
check "a burst imported again adds nothing" grep -q 'imported 0, duplicates skipped 3001' <<<"$out"
check "a burst's rows are the file's" test "$(sqlite3 "$dir/burst.db" 'SELECT count(DISTINCT id), sum(prompt_tokens) FROM events')" = "3001|4498501"
# past the 16,384 ids an import keeps in memory per transaction, repeats
# of the first rows and of the rows where the kept ids were forgotten
# (every 16,384th) are still found (in the database itself); one by one
# and several to a statement
python3 -c '
lines = ["{\"kind\":\"eval\",\"ts\":%.6f,\"id\":\"many-%d\",\"name\":\"request\",\"extra\":{\"model\":\"m\",\"prompt_tokens\":1,\"completion_tokens\":1,\"latency_us\":5}}" % (1800000000 + i / 1000.0, i) for i in range(70000)]
print("\n".join(lines + lines[:10] + lines[65530:65540] + lines[-10:]))
' >"$dir/many.jsonl"
for t in 1 2; do
    out=$("$TALLY" import --threads $t "$dir/many.jsonl" --db "$dir/many$t.db")
    check "repeats past the kept ids are found ($t)" grep -q 'imported 70000, duplicates skipped 30' <<<"$out"
    check "each stored once ($t)" test "$(sqlite3 "$dir/many$t.db" 'SELECT count(*), count(DISTINCT id) FROM events; SELECT sum(events) FROM rollup')" = "70000|70000
70000"
done

# tail -n: numbers past the limit are refused, not a crash
"$TALLY" tail -n 4294967296 "$dir/good.jsonl" >/dev/null 2>&1; rc=$?
check "tail -n too large" test "$rc" -eq 2
"$TALLY" tail -n 99999999999999999999999 "$dir/good.jsonl" >/dev/null 2>&1; rc=$?
check "tail -n overflow" test "$rc" -eq 2

# control characters in event data are escaped on a terminal (forced here)
printf '%s\n' '{"kind":"note","t":1,"ts":1800000000.0,"text":"a\u001b]0;pwned\u0007b"}' \
    '{"kind":"eval","t":1,"ts":1800000001.0,"phase":"serve","name":"request","extra":{"model":"m\u001b[2J","prompt_tokens":1,"completion_tokens":2,"latency_us":3}}' >"$dir/ctl.jsonl"
out=$(TALLY_ESCAPE_CONTROLS=1 "$TALLY" tail -n 0 "$dir/ctl.jsonl")
check "tail escapes controls" grep -qF 'note a\x1b]0;pwned\x07b' <<<"$out"
check "tail leaves no ESC" test "$(printf '%s' "$out" | tr -dc '\033' | wc -c)" -eq 0
out=$(TALLY_ESCAPE_CONTROLS=1 "$TALLY" stats --by model "$dir/ctl.jsonl")
check "stats escapes controls" grep -qF 'm\x1b[2J' <<<"$out"
check "stats leaves no ESC" test "$(printf '%s' "$out" | tr -dc '\033' | wc -c)" -eq 0
out=$("$TALLY" tail -n 0 "$dir/ctl.jsonl" | tr -dc '\033' | wc -c)
check "tail to a pipe is raw" test "$out" -eq 2

# a commit that fails (file size limit) reports its cause and imports nothing
big="$dir/big.jsonl"
for i in $(seq 1 3000); do printf '%s\n' "$req"; done >"$big"
out=$( (trap '' XFSZ; ulimit -f 100; "$TALLY" import "$big" --db "$dir/small.db") 2>&1); rc=$?
check "import fsize exit" test "$rc" -eq 1
check "import fsize cause" grep -q 'disk I/O error\|too large\|full' <<<"$out"
check "import fsize no rollback noise" bash -c "! grep -q 'no transaction is active' <<<'$out'"
check "import fsize true count" grep -q 'imported 0,' <<<"$out"

# a database in a directory the user cannot write is still read
rod="$dir/rodir"; mkdir -p "$rod"
"$TALLY" import "$dir/good.jsonl" --db "$rod/ro.db" >/dev/null
chmod 0644 "$rod/ro.db"; chmod 0555 "$rod"; chmod 0755 "$dir"
as_user=()
[ "$(id -u)" -eq 0 ] && as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
out=$("${as_user[@]}" "$TALLY" stats --json "$rod/ro.db" 2>&1); rc=$?
check "read-only directory: stats reads it" test "$rc" -eq 0
check "read-only directory: the request is there" grep -q '"requests":1' <<<"$out"
chmod 0755 "$rod"

# a diverged step (loss written null) is counted, from the file and from the database
printf '%s\n' '{"kind":"step","t":1,"ts":1800000001.0,"phase":"train","step":1,"loss":2.5,"wall_us":5}' \
    '{"kind":"step","t":2,"ts":1800000002.0,"phase":"train","step":2,"loss":null,"wall_us":5}' >"$dir/nan.jsonl"
out=$("$TALLY" stats --json "$dir/nan.jsonl")
check "stats counts a non-finite loss" grep -q '"loss_nonfinite":1' <<<"$out"
check "a non-finite loss is not the last loss" grep -q '"loss_last":2.5' <<<"$out"
"$TALLY" import "$dir/nan.jsonl" --db "$dir/nan.db" >/dev/null
out=$("$TALLY" stats --json "$dir/nan.db")
check "the rollup counts a non-finite loss" grep -q '"loss_nonfinite":1' <<<"$out"

# several runs appending to one file: each event goes to its own run
A=aaaaaaaaaaaa; B=bbbbbbbbbbbb
st() { printf '{"kind":"run_start","t":0,"ts":%s,"id":"%s0000000000000001","run_id":"%s","schema":"toy/v1","started_at":"2027-01-15T08:00:00Z","host":{"name":"h","os":"linux","arch":"x86_64"},"backend":{"kind":"cpu"},"model":{"name":"m"},"config":{}}' "$1" "$2" "$3"; }
rq() { printf '{"kind":"eval","t":%s,"ts":%s,"id":"%s%s","phase":"serve","name":"request","extra":{"model":"%s","prompt_tokens":1,"completion_tokens":2,"latency_us":3}}' "$1" "$2" "$3" "$4" "$5"; }
en() { printf '{"kind":"run_end","t":%s,"ts":%s,"id":"%s%s","ended_at":"2027-01-15T08:00:09Z","reason":"completed","stats":{"requests":%s,"errors":0,"tokens_out":0}}' "$1" "$2" "$3" "$4" "$5"; }
{
    st 1800000000.0 $A run-a; echo
    st 1800000000.5 $B run-b; echo
    rq 1 1800000001.0 $A 0000000000000002 ma; echo
    rq 0.6 1800000001.1 $B 0000000000000002 mb; echo
    rq 2 1800000002.0 $A 0000010000000001 ma; echo   # a forked child of run A
    en 1 1800000001.5 $B 0000000000000003 1; echo
    rq 3 1800000003.0 $A 0000000000000003 ma; echo
    en 4 1800000004.0 $A 0000000000000004 3; echo
} >"$dir/shared.jsonl"
out=$("$TALLY" validate "$dir/shared.jsonl"); rc=$?
check "validate: a shared file is clean" test "$rc" -eq 0
out=$("$TALLY" stats --by run --json "$dir/shared.jsonl")
check "stats --by run: run A has its 3 requests" grep -q '"run":"run-a","requests":3' <<<"$out"
check "stats --by run: run B has its 1 request" grep -q '"run":"run-b","requests":1' <<<"$out"
out=$("$TALLY" runs "$dir/shared.jsonl")
check "runs: run A 3 requests" grep -qE '^run-a .* 3rq ' <<<"$out"
check "runs: run B 1 request" grep -qE '^run-b .* 1rq ' <<<"$out"
"$TALLY" import "$dir/shared.jsonl" --db "$dir/shared.db" >/dev/null
out=$("$TALLY" stats --by run --json "$dir/shared.db")
check "import keeps each event in its run" grep -q '"run":"run-a","requests":3' <<<"$out"
# duplicate keys are reported
printf '%s\n' "$(st 1800000000.0 $A r)" '{"kind":"eval","t":1,"ts":1800000001.0,"phase":"serve","name":"request","extra":{"model":"m","prompt_tokens":1,"completion_tokens":2,"latency_us":3,"model":"forged"}}' >"$dir/dup.jsonl"
out=$("$TALLY" validate "$dir/dup.jsonl"); rc=$?
check "validate reports a duplicate key" grep -q 'dup.jsonl:2: duplicate key extra.model' <<<"$out"

# the same events from two sources count once
out=$("$TALLY" stats --json "$dir/shared.jsonl" "$dir/shared.db")
check "file + its database: counted once" grep -q '"requests":4,' <<<"$out"
check "file + its database: duplicates said" grep -q '"duplicates":8' <<<"$out"
out=$("$TALLY" stats --json "$dir/tep.jsonl" "$dir/tep.jsonl")
check "lines without ids merge too" grep -q '"requests":1,' <<<"$out"

# requests: the requests behind a stats row
{
    printf '%s\n' "$start"
    for i in 1 2 3 4 5 6; do
        ok=true; err=""; [ "$i" -eq 2 ] || [ "$i" -eq 5 ] && { ok=false; err=',"error":"timeout"'; }
        printf '{"kind":"eval","t":%d,"ts":18000000%02d.0,"phase":"serve","name":"request","extra":{"model":"m%d","prompt_tokens":%d,"completion_tokens":2,"latency_us":%d,"route":"r%d","request_id":"q%d","cost_nusd":%d,"ok":%s%s}}\n' \
            "$i" "$i" $((i % 2)) "$i" $((i * 1000 + (i % 3) * 7000)) $((i % 2)) "$i" $((i * 100)) "$ok" "$err"
    done
} >"$dir/req.jsonl"
out=$("$TALLY" requests --sort latency -n 3 --json "$dir/req.jsonl")
check "requests slowest first" test "$(jq -c '[.requests[].request_id]' <<<"$out")" = '["q5","q2","q4"]'
check "requests matched" test "$(jq .matched <<<"$out")" = 6
out=$("$TALLY" requests --where ok=false --json "$dir/req.jsonl")
check "requests failures, in time order" test "$(jq -c '[.requests[] | [.request_id, .outcome, .reason]]' <<<"$out")" = '[["q2","error","timeout"],["q5","error","timeout"]]'
check "requests ok=0 is ok=false" test "$("$TALLY" requests --where ok=0 --json "$dir/req.jsonl")" = "$out"
out=$("$TALLY" requests --where route=r1 --sort cost -n 1 --csv "$dir/req.jsonl")
check "requests csv costliest of a route" grep -qE '^[0-9T:Z-]+,q5,m1,,r1,5,2,' <<<"$out"
check "requests latest n" test "$("$TALLY" requests -n 2 --json "$dir/req.jsonl" | jq -c '[.requests[].request_id]')" = '["q5","q6"]'
err=$("$TALLY" requests --where model=gpt4o "$dir/req.jsonl" 2>&1 >/dev/null)
check "requests says what was seen" grep -q "no model 'gpt4o'; seen: m1, m0" <<<"$err"
check "requests bad sort" bash -c "! '$TALLY' requests --sort size '$dir/req.jsonl' 2>/dev/null"

# stats tables: the demo's data fits 120 columns for the common keys
"$SERVE_SIM" --runs "$dir/demo" --prices "$PRICES" >/dev/null
"$TRAIN_SIM" --runs "$dir/demo" >/dev/null
widest() { awk '{ if (length($0) > m) m = length($0) } END { print m + 0 }'; }
for by in model model,engine model,engine,route; do
    out=$("$TALLY" stats --by "$by" "$dir/demo")
    check "stats --by $by fits 120 columns" test "$(widest <<<"$out")" -le 120
    check "stats --by $by has units" grep -qE '^model .* p99_ms ' <<<"$out"
done
out=$("$TALLY" stats --by model "$dir/demo")
check "training rows carry the run's model" grep -qE '^tiny-gpt +150 +3 ' <<<"$out"
check "evals are summarised" grep -qE 'val_last +val_best' <<<"$out"
val=$(grep '"kind":"eval"' "$dir"/demo/train-*/events.jsonl | grep -v '"request"' | jq -s 'map(.loss) | min')
check "val_best is the lowest eval loss" test "$("$TALLY" stats --by model --json "$dir/demo" | jq '.groups[] | select(.model=="tiny-gpt") | .val_loss_best')" = "$val"
"$TALLY" import "$dir/demo" --db "$dir/demo.db" >/dev/null
tr='.groups[] | select(.model=="tiny-gpt") | [.steps, .evals, .val_loss_first, .val_loss_last, .val_loss_best, .error_events]'
check "training figures: database rollup = files" test "$("$TALLY" stats --by model --json "$dir/demo.db" | jq -c "$tr")" = "$("$TALLY" stats --by model --json "$dir/demo" | jq -c "$tr")"
check "training figures: database rows = files" test "$("$TALLY" stats --by model --scan --json "$dir/demo.db" | jq -c "$tr")" = "$("$TALLY" stats --by model --json "$dir/demo" | jq -c "$tr")"
out=$("$TALLY" stats --by model --columns model,reqs,p99_ms,cost_usd "$dir/demo")
check "--columns chooses" test "$(head -1 <<<"$out" | tr -s ' ')" = "model reqs cost_usd p99_ms"
out=$("$TALLY" stats --by model --columns all "$dir/demo")
check "--columns all" grep -qE ' lat_total_s .* gpu_pct .* reasons' <<<"$out"
check "--columns unknown refused" bash -c "! '$TALLY' stats --columns p42 '$dir/demo' 2>/dev/null"
# empty columns left out, unpriced requests shown, no training section without training
out=$("$TALLY" stats --by model "$dir/req.jsonl")
check "empty energy column left out" bash -c "! grep -q j_per_tok <<<'$out'"
check "no training section without training" bash -c "! grep -q training <<<'$out'"
printf '%s\n' "$(rq 1 1800000001.0 $A 0000000000000009 ma)" >>"$dir/req.jsonl"
out=$("$TALLY" stats --by model --where model=ma "$dir/req.jsonl" "$dir/req.jsonl")
check "an unpriced group shows unpriced" grep -qE "^model +reqs +err_pct +prompt_tok +compl_tok +unpriced " <<<"$out"
check "an unpriced group counts them" grep -qE "^ma +1 +0.0 +1 +2 +1 " <<<"$out"
out=$("$TALLY" stats --by model --where model=m1 "$dir/req.jsonl")
check "costs keep their digits" grep -qE " 0\\.00000090 " <<<"$out"
out=$("$TALLY" stats "$dir/nan.jsonl")
check "no request header without requests" test "$(head -1 <<<"$out")" = "training"
printf '%s\n' "$(rq 1 1800000001.0 $A 0000000000000009 ma)" '{"kind":"eval","t":2,"ts":1800000002.0,"phase":"serve","name":"request","extra":{"model":"ma","prompt_tokens":1,"completion_tokens":2,"latency_us":3,"cost_nusd":5000}}' >"$dir/half.jsonl"
out=$("$TALLY" stats --by model "$dir/half.jsonl")
check "a partly priced cost ends in +" grep -qE ' 0\.0000050\+ +1' <<<"$out"

# validate: what a request's numbers mean together
mean='{"kind":"eval","t":1,"ts":1800000001.0,"phase":"serve","name":"request","extra":{"model":"m","prompt_tokens":10,"cached_tokens":8,"cache_write_tokens":4,"completion_tokens":5,"reasoning_tokens":6,"latency_us":-3,"ttft_us":20}}'
printf '%s\n%s\n' "$start" "$mean" >"$dir/meaning.jsonl"
out=$("$TALLY" validate "$dir/meaning.jsonl"); rc=$?
check "validate meaning: exit 1" test "$rc" -eq 1
check "validate meaning: negative latency" grep -q 'meaning.jsonl:2: extra.latency_us is negative' <<<"$out"
check "validate meaning: ttft > latency" grep -q 'meaning.jsonl:2: extra.ttft_us (20) is greater than extra.latency_us (-3)' <<<"$out"
check "validate meaning: cached + cache-write > prompt" grep -q 'meaning.jsonl:2: extra.cached_tokens + cache_write_tokens (12) are more than prompt_tokens (10)' <<<"$out"
check "validate meaning: reasoning > completion" grep -q 'meaning.jsonl:2: extra.reasoning_tokens (6) are more than completion_tokens (5)' <<<"$out"
# the same SOURCE kinds everywhere, and clear refusals
out=$("$TALLY" validate "$dir/demo"); rc=$?
check "validate DIR: every run" test "$rc" -eq 0 -a "$(grep -c ': ok (' <<<"$out")" -eq 2
out=$("$TALLY" validate - <"$dir/good.jsonl"); rc=$?
check "validate -" test "$rc" -eq 0 -a "$out" = "stdin: ok (3 lines)"
err=$("$TALLY" validate "$dir/demo.db" 2>&1 >/dev/null); rc=$?
check "validate DB refused" test "$rc" -eq 2
check "validate DB says why" grep -q 'is a database: validate checks JSONL files' <<<"$err"
out=$("$TALLY" tail -n 1 - <"$dir/good.jsonl"); rc=$?
check "tail - last line" test "$rc" -eq 0 -a "$(grep -c . <<<"$out")" -eq 1
check "tail - shows run_end" grep -q 'run_end completed' <<<"$out"
check "tail -f - streams" test "$("$TALLY" tail -f - <"$dir/good.jsonl" | grep -c .)" -eq 3
err=$("$TALLY" tail "$dir/demo" 2>&1 >/dev/null); rc=$?
check "tail DIR refused" test "$rc" -eq 2
check "tail DIR says why" grep -q 'is a directory: tail follows one file' <<<"$err"
err=$("$TALLY" tail "$dir/demo.db" 2>&1 >/dev/null); rc=$?
check "tail DB refused, says why" grep -q 'is a database: tail follows JSONL files' <<<"$err"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
