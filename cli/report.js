/* tally report: draws the page from the JSON tally wrote into it (the
 * element #tally-data).  No network, no library: tables are DOM, charts
 * are SVG.  Every point or bar segment drawn has the class "m", so a test
 * can count them against the data. */
(function () {
  'use strict';
  var D = JSON.parse(document.getElementById('tally-data').textContent);
  var root = document.getElementById('report');
  var SVG = 'http://www.w3.org/2000/svg';
  var COLORS = ['#2f6fb0', '#d9822b', '#3a9a5b', '#c23b3b', '#7d5ab5', '#8c6d46', '#d45fa6', '#5f6b73', '#a3a72c', '#2aa7b8'];
  var W = 640, H = 220, L = 62, R = 12, T = 12, B = 34;

  root.textContent = '';

  function el(tag, parent, text, attrs) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function sv(tag, parent, attrs) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    parent.appendChild(e);
    return e;
  }
  function num(v) { return typeof v === 'number' && isFinite(v); }
  function fmt(v) {
    if (!num(v)) return '-';
    var a = Math.abs(v);
    if (a === 0) return '0';
    if (a >= 1e9) return (v / 1e9).toFixed(a >= 1e10 ? 0 : 1) + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + 'M';
    if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + 'k';
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return v.toFixed(2).replace(/\.?0+$/, '');
    return v.toPrecision(2);
  }
  function pad(n) { return (n < 10 ? '0' : '') + n; }
  function when(t, withDate) {
    if (!num(t)) return '-';
    var d = new Date(t * 1000);
    var day = d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate());
    var hm = pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' + pad(d.getUTCSeconds());
    return withDate === 'day' ? day : withDate ? day + ' ' + hm : hm;
  }
  function dur(s) {
    if (!num(s)) return '-';
    if (s < 1) return (s * 1000).toFixed(0) + ' ms';
    if (s < 120) return s.toFixed(1) + ' s';
    if (s < 7200) return (s / 60).toFixed(1) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }
  function ticks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (hi - lo) / n / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
    return out;
  }

  /* A chart: opts = {id, title, x: 'time'|'day'|'num', xlabel, ylabel,
   * type: 'line'|'bars', series: [{name, points: [[x, y], ...]}],
   * marks: [{x, y, label, kind}]}.  Bars stack by x. */
  function chart(parent, o) {
    var fig = el('figure', parent, null, {'class': 'chart-box'});
    el('figcaption', fig, o.title);
    var svg = sv('svg', fig, {'class': 'chart', 'data-chart': o.id, viewBox: '0 0 ' + W + ' ' + H, role: 'img',
                              'aria-label': o.title});
    var xs = [], ys = [0], i, j, p;
    var stack = {};
    o.series.forEach(function (s) {
      s.points.forEach(function (p) {
        if (!num(p[1])) return;
        xs.push(p[0]);
        if (o.type === 'bars') { stack[p[0]] = (stack[p[0]] || 0) + p[1]; ys.push(stack[p[0]]); } else ys.push(p[1]);
      });
    });
    (o.marks || []).forEach(function (m) { xs.push(m.x); if (num(m.y)) ys.push(m.y); });
    var bw = o.barWidth || 0;
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs) + bw;
    if (!(x1 > x0)) { x0 -= 1; x1 += 1; }
    var y1 = Math.max.apply(null, ys), y0 = o.type === 'bars' ? 0 : Math.min.apply(null, ys);
    if (o.type !== 'bars' && o.fromZero !== false) y0 = Math.min(0, y0);
    if (!(y1 > y0)) y1 = y0 + 1;
    y1 += (y1 - y0) * 0.05;
    function X(v) { return L + (v - x0) / (x1 - x0) * (W - L - R); }
    function Y(v) { return T + (1 - (v - y0) / (y1 - y0)) * (H - T - B); }
    var axes = sv('g', svg, {'class': 'axes'});
    ticks(y0, y1, 4).forEach(function (v) {
      sv('line', axes, {x1: L, x2: W - R, y1: Y(v), y2: Y(v), 'class': 'grid'});
      sv('text', axes, {x: L - 6, y: Y(v) + 4, 'text-anchor': 'end'}).textContent = fmt(v);
    });
    /* Time: clock labels, or seconds from the start when it all fits in
     * two minutes; days: one label per bar, at most six. */
    var rel = o.x === 'time' && x1 - x0 < 120, xt;
    if (o.x === 'num') xt = ticks(x0, x1, 5);
    else if (rel) xt = ticks(0, x1 - x0, 5).map(function (v) { return x0 + v; });
    else if (o.x === 'day') xt = xs.filter(function (v, k) { return xs.indexOf(v) === k; }).sort(function (a, b) { return a - b; })
        .filter(function (v, k, all) { return k % Math.ceil(all.length / 6) === 0; });
    else xt = [x0, x0 + (x1 - x0) / 2, x1];
    xt.forEach(function (v) {
      var label = o.x === 'time' ? (rel ? '+' + fmt(v - x0) + ' s' : when(v, x1 - x0 > 86400)) : o.x === 'day' ? when(v, 'day') : fmt(v);
      var at = o.x === 'day' ? X(v + bw / 2) : X(v);
      sv('text', axes, {x: at, y: H - B + 16, 'text-anchor': 'middle'}).textContent = label;
    });
    if (rel && !o.xlabel) o.xlabel = 'seconds from ' + when(x0, true) + ' UTC';
    sv('line', axes, {x1: L, x2: W - R, y1: H - B, y2: H - B, 'class': 'axis'});
    if (o.xlabel) sv('text', axes, {x: W - R, y: H - 4, 'text-anchor': 'end', 'class': 'label'}).textContent = o.xlabel;
    if (o.ylabel) sv('text', axes, {x: 4, y: 10, 'class': 'label'}).textContent = o.ylabel;
    var base = {};
    o.series.forEach(function (s, si) {
      var color = COLORS[si % COLORS.length];
      var g = sv('g', svg, {'class': 'series', fill: color, stroke: color});
      if (o.type === 'bars') {
        var w = Math.max(1, X(x0 + bw) - X(x0) - 1);
        s.points.forEach(function (p) {
          if (!num(p[1]) || p[1] <= 0) return;
          var b0 = base[p[0]] || 0;
          var r = sv('rect', g, {'class': 'm', x: X(p[0]), width: w, y: Y(b0 + p[1]), height: Math.max(0.5, Y(b0) - Y(b0 + p[1]))});
          sv('title', r, {}).textContent = s.name + ': ' + fmt(p[1]);
          base[p[0]] = b0 + p[1];
        });
      } else {
        var d = '', pen = false;
        s.points.forEach(function (p) {
          if (!num(p[1])) { pen = false; return; }
          d += (pen ? 'L' : 'M') + X(p[0]).toFixed(1) + ' ' + Y(p[1]).toFixed(1);
          pen = true;
        });
        sv('path', g, {d: d, fill: 'none', 'stroke-width': 1.5});
        s.points.forEach(function (p) {
          if (!num(p[1])) return;
          var c = sv('circle', g, {'class': 'm', cx: X(p[0]), cy: Y(p[1]), r: s.points.length > 200 ? 1 : 2, stroke: 'none'});
          sv('title', c, {}).textContent = s.name + ': ' + fmt(p[1]);
        });
      }
    });
    (o.marks || []).forEach(function (m) {
      var y = num(m.y) ? Y(m.y) : T + 6, x = X(m.x);
      var shape = m.kind === 'error'
          ? sv('path', svg, {'class': 'm error', d: 'M' + (x - 4) + ' ' + (y - 4) + 'L' + (x + 4) + ' ' + (y + 4) + 'M' + (x - 4) + ' ' + (y + 4) + 'L' + (x + 4) + ' ' + (y - 4)})
          : sv('path', svg, {'class': 'm eval', d: 'M' + x + ' ' + (y - 5) + 'L' + (x + 5) + ' ' + y + 'L' + x + ' ' + (y + 5) + 'L' + (x - 5) + ' ' + y + 'Z'});
      sv('title', shape, {}).textContent = m.label;
    });
    var legend = el('div', fig, null, {'class': 'legend'});
    o.series.forEach(function (s, si) {
      if (o.series.length < 2 && !(o.marks || []).length) return;
      var k = el('span', legend, null);
      el('i', k, null, {style: 'background:' + COLORS[si % COLORS.length]});
      k.appendChild(document.createTextNode(s.name));
    });
    if ((o.marks || []).some(function (m) { return m.kind === 'eval'; })) el('span', legend, '\u25c6 eval', {'class': 'k-eval'});
    if ((o.marks || []).some(function (m) { return m.kind === 'error'; })) el('span', legend, '\u2715 error', {'class': 'k-error'});
    return svg;
  }

  function sortable(table) {
    var heads = table.querySelectorAll('th');
    heads.forEach(function (th, col) {
      th.addEventListener('click', function () {
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var dir = th.getAttribute('data-dir') === 'desc' ? 1 : -1;
        heads.forEach(function (h) { h.removeAttribute('data-dir'); });
        th.setAttribute('data-dir', dir === 1 ? 'asc' : 'desc');
        rows.sort(function (a, b) {
          var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
          var nx = parseFloat(x), ny = parseFloat(y);
          if (!isNaN(nx) && !isNaN(ny)) return (nx - ny) * dir;
          return String(x).localeCompare(String(y)) * dir;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  function table(parent, heads, rows) {
    var t = el('table', parent, null, {'class': 'sortable'});
    var tr = el('tr', el('thead', t));
    heads.forEach(function (h) { el('th', tr, h[0], {title: h[1] || h[0]}); });
    var body = el('tbody', t);
    rows.forEach(function (r) {
      var row = el('tr', body);
      r.forEach(function (c) {
        var td = el('td', row, null, {'data-v': c.v === null || c.v === undefined ? '' : c.v});
        if (c.href) el('a', td, c.text, {href: c.href}); else td.textContent = c.text;
        if (typeof c.v === 'number') td.className = 'n';
      });
    });
    sortable(t);
    return t;
  }

  function cell(v, text) { return {v: v, text: text !== undefined ? text : fmt(v)}; }

  /* ---- the page ---- */
  el('h1', root, 'tally report');
  el('p', root, 'Sources: ' + D.sources.join(', ') + ' \u00b7 ' + D.events + ' events \u00b7 written ' + when(D.generated, true) + ' UTC', {'class': 'meta'});

  var nav = el('nav', root);
  var requests = 0;
  D.tables[0].stats.groups.forEach(function (g) { requests += g.requests; });
  var training = D.runs.filter(function (r) { return r.points && r.points.length; });

  /* runs */
  var runsSec = el('section', root, null, {id: 'runs'});
  el('h2', runsSec, 'Runs');
  el('a', nav, 'Runs', {href: '#runs'});
  table(runsSec, [['run'], ['kind'], ['model'], ['started (UTC)'], ['duration'], ['requests'], ['failed'], ['steps'], ['evals'], ['errors'], ['ended']],
        D.runs.map(function (r) {
          var href = r.points && r.points.length ? '#run-' + encodeURIComponent(r.run) : r.requests ? '#serving' : null;
          return [{v: r.run, text: r.run, href: href}, cell(r.phase, r.phase), cell(r.model, r.model), cell(r.start, when(r.start, true)),
                  cell(r.end - r.start, dur(r.end - r.start)), cell(r.requests), cell(r.failed), cell(r.steps), cell(r.evals),
                  cell(r.errors), cell(r.reason, r.reason)];
        }));
  if (D.runs_left_out) el('p', runsSec, D.runs_left_out + ' more runs are not listed.', {'class': 'meta'});

  /* serving */
  if (requests) {
    var sec = el('section', root, null, {id: 'serving'});
    el('h2', sec, 'Serving');
    el('a', nav, 'Serving', {href: '#serving'});
    var COLS = [['requests', 'requests'], ['error_rate', 'err %'], ['prompt_tokens', 'prompt tok'], ['completion_tokens', 'compl tok'],
                ['cost_usd', 'cost $'], ['unpriced', 'unpriced'], ['latency_p50_ms', 'p50 ms'], ['latency_p90_ms', 'p90 ms'],
                ['latency_p99_ms', 'p99 ms'], ['ttft_p50_ms', 'ttft p50 ms'], ['tpot_p50_ms', 'tpot p50 ms'],
                ['throughput_tok_s', 'tok/s'], ['j_per_output_token', 'J/tok'], ['degraded_requests', 'degraded']];
    D.tables.forEach(function (tb) {
      var groups = tb.stats.groups.filter(function (g) { return g.requests > 0; });
      if (!groups.length) return;
      var cols = COLS.filter(function (c) { return groups.some(function (g) { return num(g[c[0]]) && (g[c[0]] !== 0 || c[0] === 'error_rate'); }); });
      el('h3', sec, 'By ' + tb.by.join(', '));
      table(sec, tb.by.map(function (k) { return [k]; }).concat(cols.map(function (c) { return [c[1], c[0]]; })),
            groups.map(function (g) {
              return tb.by.map(function (k) { return cell(g[k], g[k]); }).concat(cols.map(function (c) {
                var v = g[c[0]];
                return cell(v, c[0] === 'cost_usd' && num(v) ? v.toFixed(v >= 100 ? 2 : 4) + (g.unpriced ? '+' : '') : fmt(v));
              }));
            }));
    });
    var S = D.series, bk = S.buckets, grid = el('div', sec, null, {'class': 'grid'});
    var withReq = bk.filter(function (b) { return b.requests > 0; });
    chart(grid, {id: 'latency', title: 'Latency over time (ms)', x: 'time', type: 'line', ylabel: 'ms',
                 series: [['p50', 'p50_ms'], ['p90', 'p90_ms'], ['p99', 'p99_ms']].map(function (s) {
                   return {name: s[0], points: withReq.map(function (b) { return [b.t, b[s[1]]]; })};
                 })});
    chart(grid, {id: 'rate', title: 'Requests per second', x: 'time', type: 'line', ylabel: 'req/s',
                 series: [{name: 'requests/s', points: bk.map(function (b) { return [b.t, b.requests / S.width_s]; })}]});
    chart(grid, {id: 'error_rate', title: 'Error rate (% of requests)', x: 'time', type: 'line', ylabel: '%',
                 series: [{name: 'failed %', points: withReq.map(function (b) { return [b.t, 100 * b.failed / b.requests]; })}]});
    if (D.ttft_cdf.length)
      chart(grid, {id: 'ttft', title: 'Time to first token: distribution (streaming requests)', x: 'num', type: 'line', xlabel: 'ms', ylabel: 'fraction',
                   series: [{name: 'TTFT', points: D.ttft_cdf.map(function (p) { return [p[0], p[1]]; })}]});
    if (D.tpot_cdf.length)
      chart(grid, {id: 'tpot', title: 'Time per output token: distribution', x: 'num', type: 'line', xlabel: 'ms', ylabel: 'fraction',
                   series: [{name: 'TPOT', points: D.tpot_cdf.map(function (p) { return [p[0], p[1]]; })}]});
    var days = D.daily.buckets, dw = D.daily.width_s;
    chart(grid, {id: 'tokens_daily', title: 'Tokens per ' + (dw > 86400 ? dur(dw) : 'day') + ', per model (prompt + completion)', x: 'day', type: 'bars', barWidth: dw,
                 series: D.models.map(function (m, mi) {
                   return {name: m, points: days.map(function (d) { return [d.t, d.tokens_in[mi] + d.tokens_out[mi]]; })};
                 })});
    if (days.some(function (d) { return d.cost_usd.some(function (c) { return c > 0; }); }))
      chart(grid, {id: 'cost_daily', title: 'Cost per ' + (dw > 86400 ? dur(dw) : 'day') + ', per model (USD)', x: 'day', type: 'bars', barWidth: dw,
                   series: D.models.map(function (m, mi) {
                     return {name: m, points: days.map(function (d) { return [d.t, d.cost_usd[mi]]; })};
                   })});
    var reasons = [];
    bk.forEach(function (b) { Object.keys(b.degraded).forEach(function (k) { if (reasons.indexOf(k) < 0) reasons.push(k); }); });
    reasons.sort();
    if (reasons.length)
      chart(grid, {id: 'degraded', title: 'Degraded requests over time, by reason', x: 'time', type: 'bars', barWidth: S.width_s,
                   series: reasons.map(function (k) { return {name: k, points: bk.map(function (b) { return [b.t, b.degraded[k] || 0]; })}; })});
    if (bk.some(function (b) { return b.failed > 0 || b.errors > 0; }))
      chart(grid, {id: 'errors', title: 'Failed requests and errors over time', x: 'time', type: 'bars', barWidth: S.width_s,
                   series: [{name: 'failed requests', points: bk.map(function (b) { return [b.t, b.failed]; })},
                            {name: 'error events', points: bk.map(function (b) { return [b.t, b.errors]; })}]});
    if (bk.some(function (b) { return num(b.j_per_tok); }))
      chart(grid, {id: 'energy', title: 'Energy per output token (J)', x: 'time', type: 'line', ylabel: 'J/tok',
                   series: [{name: 'J/token', points: bk.map(function (b) { return [b.t, b.j_per_tok]; })}]});
  }

  /* training */
  if (training.length) {
    var tsec = el('section', root, null, {id: 'training'});
    el('h2', tsec, 'Training');
    el('a', nav, 'Training', {href: '#training'});
    training.forEach(function (r, ri) {
      var rs = el('section', tsec, null, {id: 'run-' + r.run, 'class': 'run'});
      el('h3', rs, r.run + ' \u00b7 ' + r.model);
      var byMin = r.x === 'minute', xk = byMin ? 'time' : 'num', xl = byMin ? 'per minute' : 'step';
      el('p', rs, r.steps + ' steps' + (byMin ? ' (drawn per minute, from the database\u2019s rollup)' : '') + (r.stride > 1 ? ' (every ' + r.stride + 'th drawn)' : '') + ', ' + r.evals + ' evals, ' + r.errors + ' errors, ended: ' + r.reason, {'class': 'meta'});
      var g = el('div', rs, null, {'class': 'grid'});
      function col(i) { return r.points.map(function (p) { return [p[0], p[i]]; }); }
      function any(i) { return r.points.some(function (p) { return num(p[i]); }); }
      var marks = r.evals_at.map(function (e) { return {x: e[0], y: e[1], label: (e[2] || 'eval') + ': ' + fmt(e[1]), kind: 'eval'}; })
          .concat(r.errors_at.map(function (e) { return {x: e[0], y: null, label: 'error: ' + e[2], kind: 'error'}; }));
      if (any(1) || marks.length)
        chart(g, {id: 'loss-' + ri, title: byMin ? 'Loss, the last of each minute' : 'Loss by step', x: xk, type: 'line', xlabel: xl, fromZero: false,
                  series: [{name: 'train loss', points: col(1)}], marks: marks});
      if (any(2)) chart(g, {id: 'steptime-' + ri, title: byMin ? 'Step time, median of each minute (ms)' : 'Step time (ms)', x: xk, type: 'line', xlabel: xl, series: [{name: 'ms', points: col(2)}]});
      if (any(3)) chart(g, {id: 'toks-' + ri, title: 'Tokens per second', x: xk, type: 'line', xlabel: xl, series: [{name: 'tok/s', points: col(3)}]});
      if (any(4)) chart(g, {id: 'lr-' + ri, title: 'Learning rate', x: xk, type: 'line', xlabel: xl, series: [{name: 'lr', points: col(4)}]});
    });
  }
  if (!requests && !training.length) el('p', root, 'No requests or training steps in these sources.');
}());
