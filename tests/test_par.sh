#!/usr/bin/env bash
# test_par -- `tally stats`, `requests`, `runs`, `report`, `import` and
# `validate` reading JSONL with several threads give the one-thread answer: files cut into chunks so small that lines straddle
# every boundary (TALLY_CHUNK_BYTES), a file several runs append to (run
# starts mid-file, training rows taking their run's model from it), toy/v1
# lines without ts or id (times from the run's start), TelemetryLogger
# tagged lines (step_begin / step_end pairs), bad lines and a torn last
# line (reported with the same line numbers), a directory of runs.
# Chunks of 61 and 997 bytes on a small file, 4093 and 65536 on the rest.
set -u
TALLY=${1:?usage: test_par.sh tally serve_sim train_sim}
SERVE_SIM=$2 TRAIN_SIM=$3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $name"; fi; }

"$SERVE_SIM" --runs "$dir/runs" --requests 1500 --seed 3 >/dev/null
"$TRAIN_SIM" --runs "$dir/runs" >/dev/null
"$SERVE_SIM" --runs "$dir/runs" --requests 700 --seed 4 >/dev/null
# several runs appending to one file: the later runs' run_starts are mid-file
cat "$dir"/runs/*/events.jsonl >"$dir/shared.jsonl"
# a small one for chunks of a few dozen bytes (three runs, two starting mid-file)
for f in "$dir"/runs/*/events.jsonl; do head -150 "$f"; done >"$dir/small.jsonl"
python3 - "$dir" <<'PY'
import json, random, sys
d = sys.argv[1]
r = random.Random(7)
# toy/v1 as Tep::Events writes it: integer t, no ts, no id
with open(f"{d}/toy.jsonl", "w") as f:
    for run in range(3):
        f.write(json.dumps({"kind": "run_start", "schema": "toy/v1", "t": 0,
                            "started_at": f"2026-0{run + 1}-01T00:00:00Z", "run_id": f"toy{run}",
                            "host": {"name": "h", "os": "linux", "arch": "x86_64"}, "backend": {"kind": "cpu"},
                            "model": {"name": f"tm{run}"}, "config": {}}) + "\n")
        for i in range(400):
            f.write(json.dumps({"kind": "eval", "t": i, "phase": "serve", "name": "request",
                                "extra": {"model": f"tm{run}", "prompt_tokens": r.randint(1, 900),
                                          "completion_tokens": r.randint(1, 300),
                                          "latency_us": r.randint(100, 90000)}}) + "\n")
            if i % 10 == 0:
                f.write(json.dumps({"kind": "step", "t": i, "phase": "train", "step": i, "loss": 3 - i / 200,
                                    "wall_us": r.randint(100, 5000)}) + "\n")
# TelemetryLogger tagged lines: a step's wall time pairs step_begin with step_end
with open(f"{d}/tags.jsonl", "w") as f:
    t = 1800000000.0
    for s in range(600):
        f.write(json.dumps({"ts": t, "tag": "step_begin", "step": s}) + "\n")
        t += r.random()
        f.write(json.dumps({"ts": t, "tag": "step_end", "step": s, "context": {"loss": 5 - s / 200}}) + "\n")
        t += 0.01
# bad lines here and there, and a torn last line
lines = open(f"{d}/shared.jsonl").read().splitlines()
with open(f"{d}/bad.jsonl", "w") as f:
    for i, l in enumerate(lines[:-1]):
        f.write(("{not json" if i % 701 == 5 else l) + "\n")
    f.write(lines[-1][:40])
PY

r6='def r: if type == "number" then (. * 1e6 | round / 1e6) elif type == "object" then with_entries(.value |= r) elif type == "array" then map(r) else . end; r'
# One question's answer, as text to compare: ask THREADS CMD SOURCE ARGS...
ask() {
    local t=$1 cmd=$2 src=$3; shift 3
    case $cmd in
    stats) "$TALLY" stats --json --threads "$t" "$@" "$src" | jq -S -c "$r6" ;;
    requests) "$TALLY" requests --json -n 0 --threads "$t" "$@" "$src" ;;
    runs) "$TALLY" runs --json --threads "$t" "$@" "$src" ;;
    validate) "$TALLY" validate --threads "$t" "$@" "$src"; echo "exit $?" ;;
    report)  # the page's data (sums of fractions may differ in their last digits: compared by close)
        "$TALLY" report -o - --threads "$t" "$@" "$src" |
            python3 -c 'import sys, re
page = sys.stdin.read()
m = re.search(r"<script type=\"application/json\" id=\"tally-data\">(.*?)</script>", page, re.S)
print(re.sub(r"\"generated\":[0-9.e+]*,?", "", m.group(1)) if m else "")' ;;
    import)  # the database's rows, in the order they were written
        rm -f "$dir/imp.db"
        "$TALLY" import --db "$dir/imp.db" --threads "$t" "$@" "$src" &&
            python3 -c 'import sqlite3, sys
for r in sqlite3.connect(sys.argv[1]).execute("select * from events order by rowid"): print(r)' "$dir/imp.db" | md5sum ;;
    esac
}
close() {  # close A B: the same JSON, numbers equal to 1 part in 10^9
    [ -n "$1" ] && python3 -c 'import json, sys
def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-300)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
sys.exit(0 if same(json.loads(sys.argv[1]), json.loads(sys.argv[2])) else 1)' "$1" "$2"
}
same() {  # same CMD SOURCE ARGS...: one thread and four give the same answer and the same messages
    local cmd=$1 src=$2; shift 2
    local a b ea eb
    a=$(ask 1 "$cmd" "$src" "$@" 2>"$dir/e1")
    ea=$(cat "$dir/e1")
    for c in ${CHUNKS:-4093 65536}; do
        b=$(TALLY_CHUNK_BYTES=$c ask 4 "$cmd" "$src" "$@" 2>"$dir/e4")
        eb=$(cat "$dir/e4")
        if [ "$cmd" = report ]; then
            check "$cmd $(basename "$src") $* chunks of $c: the one-thread answer" close "$a" "$b"
        else
            check "$cmd $(basename "$src") $* chunks of $c: the one-thread answer" test -n "$a" -a "$a" = "$b"
        fi
        check "$cmd $(basename "$src") $* chunks of $c: the same messages" test "$ea" = "$eb"
    done
}
CHUNKS="61 997" same stats "$dir/small.jsonl" --by model,run
CHUNKS="61 997" same stats "$dir/small.jsonl" --by model --where ok=false
same stats "$dir/shared.jsonl" --by model
same stats "$dir/shared.jsonl" --by run,engine
same stats "$dir/shared.jsonl" --by model --where ok=false
same stats "$dir/shared.jsonl" --by day --since 2020-01-01
same stats "$dir/toy.jsonl" --by model,run
same stats "$dir/toy.jsonl" --by day
same stats "$dir/tags.jsonl"
same stats "$dir/bad.jsonl" --by model
same stats "$dir/runs" --by run
# the questions whose answers depend on the order of the lines: read in
# parallel, handed on in the file's order
for cmd in requests runs report import validate; do
    CHUNKS="61 997" same $cmd "$dir/small.jsonl"
    for f in shared toy tags bad; do same $cmd "$dir/$f.jsonl"; done
    same $cmd "$dir/runs"
done
same requests "$dir/shared.jsonl" --sort latency -n 50 --where ok=false
same requests "$dir/bad.jsonl" --sort ts -n 7
same report "$dir/shared.jsonl" --by engine
# the training run's rows in the shared file took its model from a run_start mid-file
check "training rows keep their run's model" test "$(TALLY_CHUNK_BYTES=997 "$TALLY" stats --json --threads 4 --by model "$dir/shared.jsonl" | jq '[.groups[] | select(.steps > 0) | .model] | length')" -ge 1 -a "$("$TALLY" stats --json --threads 1 --by model "$dir/shared.jsonl" | jq '[.groups[] | select(.steps > 0 and .model != "-")] | length')" -ge 1
check "--threads 0 refused" bash -c "! '$TALLY' stats --threads 0 '$dir/shared.jsonl' 2>/dev/null"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
