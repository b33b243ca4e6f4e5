"""Checks a tally report as a browser drew it (the DOM chromium dumped
after running the page's script): every chart has one mark per value in
the data the page carries, the charts a demo's data calls for are there,
and the stats table says what `tally stats --json` says.

usage: report_check.py DOM.html STATS.json [CHART...]
CHART...: the charts that must be there (default: all a demo's data has)."""
import html.parser
import json
import math
import sys


class Dom(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.charts = {}       # data-chart -> marks counted
        self.chart = None
        self.depth = 0
        self.data = None
        self.in_data = False
        self.cells = []        # text of the first table after "By model"
        self.text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg" and "data-chart" in a:
            self.chart = a["data-chart"]
            self.charts[self.chart] = 0
            self.depth = 0
        elif self.chart is not None:
            if tag in ("circle", "rect", "path") and "m" in (a.get("class") or "").split():
                self.charts[self.chart] += 1
        if tag == "script" and a.get("id") == "tally-data":
            self.in_data = True
            self.data = ""
        if self.chart is not None and tag == "svg":
            self.depth += 1

    def handle_endtag(self, tag):
        if tag == "svg" and self.chart is not None:
            self.depth -= 1
            if self.depth == 0:
                self.chart = None
        if tag == "script":
            self.in_data = False

    def handle_data(self, d):
        if self.in_data:
            self.data += d
        self.text.append(d)


def num(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


def expected(data):
    want = {}
    b = data["series"]["buckets"]
    req = [x for x in b if x["requests"] > 0]
    want["latency"] = sum(num(x[k]) for x in req for k in ("p50_ms", "p90_ms", "p99_ms"))
    want["rate"] = len(b)
    want["error_rate"] = len(req)
    if data["ttft_cdf"]:
        want["ttft"] = len(data["ttft_cdf"])
    if data["tpot_cdf"]:
        want["tpot"] = len(data["tpot_cdf"])
    days = data["daily"]["buckets"]
    want["tokens_daily"] = sum(1 for d in days for a, c in zip(d["tokens_in"], d["tokens_out"]) if a + c > 0)
    cost = sum(1 for d in days for c in d["cost_usd"] if c > 0)
    if cost:
        want["cost_daily"] = cost
    deg = sum(1 for x in b for n in x["degraded"].values() if n > 0)
    if deg:
        want["degraded"] = deg
    errs = sum((x["failed"] > 0) + (x["errors"] > 0) for x in b)
    if errs:
        want["errors"] = errs
    energy = sum(num(x["j_per_tok"]) for x in b)
    if energy:
        want["energy"] = energy
    i = 0
    for r in data["runs"]:
        if not r.get("points"):
            continue
        pts = r["points"]
        want["loss-%d" % i] = sum(num(p[1]) for p in pts) + len(r["evals_at"]) + len(r["errors_at"])
        for name, col in (("steptime", 2), ("toks", 3), ("lr", 4)):
            n = sum(num(p[col]) for p in pts)
            if n:
                want["%s-%d" % (name, i)] = n
        i += 1
    return want


def main():
    dom = Dom()
    with open(sys.argv[1], encoding="utf-8") as f:
        dom.feed(f.read())
    with open(sys.argv[2], encoding="utf-8") as f:
        stats = json.load(f)
    failures = []
    if dom.data is None:
        sys.exit("FAIL: the page carries no data")
    data = json.loads(dom.data)
    want = expected(data)
    required = sys.argv[3:] or ["latency", "rate", "error_rate", "ttft", "tpot", "tokens_daily", "cost_daily",
                                "degraded", "errors", "energy", "loss-0", "steptime-0", "toks-0", "lr-0"]
    for name in required:
        if name not in want:
            failures.append("the demo's data has nothing for chart %s" % name)
    for name, n in sorted(want.items()):
        got = dom.charts.get(name)
        if got is None:
            failures.append("chart %s is missing" % name)
        elif got != n or n == 0:
            failures.append("chart %s has %d marks, its data %d" % (name, got, n))
    for name in dom.charts:
        if name not in want:
            failures.append("chart %s is drawn but has no data" % name)
    # The table by model: each model's request count as stats says.
    text = " ".join(dom.text)
    for g in stats["groups"]:
        if g["requests"] and "%s %d" % (g["model"], g["requests"]) not in " ".join(text.split()):
            failures.append("the table has no row '%s %d'" % (g["model"], g["requests"]))
    for f in failures:
        print("FAIL:", f)
    print("%d charts checked, %d failures" % (len(want), len(failures)))
    sys.exit(1 if failures else 0)


main()
