"""An OTLP/HTTP receiver for the tests: checks every body against OTLP's
JSON encoding and answers what the test scripts (200, partial success,
400, 413, 429 / 503 with Retry-After)."""
import gzip
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
DIGITS = re.compile(r"^[0-9]+$")
VALUE_KINDS = {"stringValue", "intValue", "doubleValue", "boolValue", "arrayValue"}


def check_value(v):
    assert isinstance(v, dict) and len(v) == 1, v
    (k, x), = v.items()
    assert k in VALUE_KINDS, k
    if k == "stringValue":
        assert isinstance(x, str)
    elif k == "intValue":
        assert isinstance(x, str) and re.match(r"^-?[0-9]+$", x), x     # 64-bit integers as strings
    elif k == "doubleValue":
        assert isinstance(x, (int, float)) and not isinstance(x, bool)
    elif k == "boolValue":
        assert isinstance(x, bool)
    else:
        for e in x["values"]:
            check_value(e)


def check_attrs(attrs):
    assert isinstance(attrs, list)
    keys = [a["key"] for a in attrs]
    assert len(keys) == len(set(keys)), keys
    for a in attrs:
        assert set(a) == {"key", "value"}
        check_value(a["value"])
    return {a["key"]: list(a["value"].values())[0] for a in attrs}


def check_traces(body):
    spans = []
    assert set(body) == {"resourceSpans"}
    for rs in body["resourceSpans"]:
        res = check_attrs(rs["resource"]["attributes"])
        assert res["service.name"]
        for ss in rs["scopeSpans"]:
            assert ss["scope"]["name"] == "tally"
            for s in ss["spans"]:
                assert HEX32.match(s["traceId"]) and s["traceId"] != "0" * 32, s["traceId"]
                assert HEX16.match(s["spanId"]) and s["spanId"] != "0" * 16, s["spanId"]
                assert isinstance(s["kind"], int) and s["kind"] in (1, 3)            # enums as numbers
                assert DIGITS.match(s["startTimeUnixNano"]) and DIGITS.match(s["endTimeUnixNano"])
                assert int(s["startTimeUnixNano"]) <= int(s["endTimeUnixNano"])
                assert isinstance(s["status"]["code"], int)
                s["_attrs"] = check_attrs(s["attributes"])
                s["_resource"] = res
                spans.append(s)
    return spans


def check_metrics(body):
    points = {}
    for rm in body["resourceMetrics"]:
        check_attrs(rm["resource"]["attributes"])
        for sm in rm["scopeMetrics"]:
            for m in sm["metrics"]:
                assert m["name"] and "unit" in m
                kinds = [k for k in ("histogram", "sum", "gauge") if k in m]
                assert len(kinds) == 1, m
                data = m[kinds[0]]
                if kinds[0] != "gauge":
                    assert data["aggregationTemporality"] == 2
                if kinds[0] == "sum":
                    assert data["isMonotonic"] is True
                for p in data["dataPoints"]:
                    attrs = check_attrs(p["attributes"])
                    assert DIGITS.match(p["startTimeUnixNano"]) and DIGITS.match(p["timeUnixNano"])
                    if kinds[0] == "histogram":
                        assert DIGITS.match(p["count"])
                        assert all(DIGITS.match(c) for c in p["bucketCounts"])
                        assert len(p["bucketCounts"]) == len(p["explicitBounds"]) + 1
                        assert sum(int(c) for c in p["bucketCounts"]) == int(p["count"])
                    else:
                        assert isinstance(p["asDouble"], (int, float))
                    points.setdefault(m["name"], []).append((attrs, p))
    return points


class Receiver:
    """script: a function (n, path) -> (status, headers, body) for the n-th
    POST to path (n from 0); default 200 {}."""

    def __init__(self, port=0, script=None):
        self.script = script or (lambda n, path: (200, {}, b"{}"))
        self.posts = []            # (path, status answered, parsed body, headers)
        self.accepted_spans = []
        self.metrics = []
        self.errors = []
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(n)
                try:
                    if self.headers.get("Content-Encoding") == "gzip":
                        raw = gzip.decompress(raw)
                    assert self.headers.get("Content-Type") == "application/json"
                    body = json.loads(raw)
                    kind = self.path
                    with outer.lock:
                        k = sum(1 for p in outer.posts if p[0] == kind)
                    status, hdrs, out = outer.script(k, kind)
                    if kind == "/v1/traces":
                        spans = check_traces(body)
                    elif kind == "/v1/metrics":
                        spans = check_metrics(body)
                    else:
                        status, hdrs, out = 404, {}, b"{}"
                        spans = []
                except Exception as e:                    # noqa: BLE001 -- reported to the test
                    with outer.lock:
                        outer.errors.append(repr(e))
                    status, hdrs, out, spans, body = 400, {}, b'{"message":"bad body"}', [], None
                with outer.lock:
                    outer.posts.append((self.path, status, body, dict(self.headers)))
                    if status == 200 and self.path == "/v1/traces":
                        outer.accepted_spans.extend(spans)
                    if status == 200 and self.path == "/v1/metrics":
                        outer.metrics.append(spans)
                self.send_response(status)
                for k, v in hdrs.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), H)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def trace_posts(self):
        with self.lock:
            return [p for p in self.posts if p[0] == "/v1/traces"]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
