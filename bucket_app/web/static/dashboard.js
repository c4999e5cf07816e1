/* bucket_app dashboard: a client of /api/v1 only (meta, buckets, stream, sql).
 *
 * Counts come from /api/v1/buckets. When the worker rolls rows up itself (meta.rollup: the
 * granularity, tz and group_by parameters), the page asks for exactly the rows it plots;
 * otherwise it asks for the raw rows in the range and rolls them up here the same way. A row
 * from /api/v1/stream means something in range changed: the page asks again (debounced), so
 * what it shows is always an answer of the API, never a sum it patched up itself.
 * What is plotted is also written into the DOM (#chart[data-plotted] and the hidden
 * #plotted table) so tests and scripts can read exactly what the chart shows.
 * Every field beyond bucket_start, bucket_end and count is optional: a missing `final` or
 * `late` degrades to a guess from the clock or a dash, never to an error.
 */
(function () {
  "use strict";

  var TOKEN_KEY = "bucket_app.token";
  var MAX_SERIES = 10;   // the rest of the values are summed into one "(other)" series
  var TOP_N = 10;
  var LATEST_BUCKETS = 12;
  var CHANGES_KEPT = 50;
  var REFRESH_DEBOUNCE_MS = 300;
  var PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777",
                 "#65a30d", "#9a3412", "#475569", "#a16207"];

  var $ = function (id) { return document.getElementById(id); };
  var state = {
    meta: null, token: "", es: null, positionToken: null, plot: null, sqlPlot: null,
    loading: false, again: false, timer: null, started: false, tz: "UTC", last: null,
  };

  try { state.token = window.localStorage.getItem(TOKEN_KEY) || ""; } catch (e) { state.token = ""; }

  // --- helpers ------------------------------------------------------------------------------

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function notice(text) {
    var box = $("notice");
    box.hidden = !text;
    box.textContent = text || "";
  }

  function authHeaders() {
    return state.token ? { Authorization: "Bearer " + state.token } : {};
  }

  function query(params) {
    var parts = [];
    Object.keys(params).forEach(function (k) {
      if (params[k] !== undefined && params[k] !== null && params[k] !== "") {
        parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(params[k]));
      }
    });
    return parts.length ? "?" + parts.join("&") : "";
  }

  // fetch JSON; resolves {ok, status, body, headers}, never rejects on an HTTP error
  function api(path, options) {
    options = options || {};
    options.headers = Object.assign({ Accept: "application/json" }, options.headers || {}, authHeaders());
    return fetch(path, options).then(function (response) {
      return response.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = { error: text }; }
        return { ok: response.ok, status: response.status, body: body, headers: response.headers };
      });
    }, function (err) {
      return { ok: false, status: 0, body: { error: "network error: " + err }, headers: new Headers() };
    });
  }

  function errorText(answer) {
    var msg = answer.body && answer.body.error ? answer.body.error : "HTTP " + answer.status;
    if (answer.status === 401) msg += " (enter the token above)";
    return msg;
  }

  function label(value) {
    if (value === null || value === undefined) return "(null)";
    if (value === "") return "(empty)";
    return String(value);
  }

  function validTz(tz) {
    try { new Intl.DateTimeFormat("en-US", { timeZone: tz }); return true; } catch (e) { return false; }
  }

  var offsetFormats = {};
  // seconds to add to a UTC epoch to get the wall-clock time in tz
  function tzOffset(ts, tz) {
    if (tz === "UTC") return 0;
    var fmt = offsetFormats[tz];
    if (!fmt) {
      fmt = offsetFormats[tz] = new Intl.DateTimeFormat("en-US", {
        timeZone: tz, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit" });
    }
    var p = {};
    fmt.formatToParts(new Date(ts * 1000)).forEach(function (part) { p[part.type] = part.value; });
    var wall = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second) / 1000;
    return wall - Math.floor(ts);
  }

  // the start of the granularity-long bucket holding ts, aligned in tz
  function align(ts, gran, tz) {
    if (!gran) return ts;
    var off = tzOffset(ts, tz);
    return Math.floor((ts + off) / gran) * gran - off;
  }

  function fmtTime(ts) {
    if (ts === null || ts === undefined) return "–";
    try {
      return new Date(ts * 1000).toLocaleString("sv-SE", { timeZone: state.tz }).replace(" ", " ");
    } catch (e) {
      return new Date(ts * 1000).toISOString();
    }
  }

  function fmtCount(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }

  // --- controls -----------------------------------------------------------------------------

  function fillControls(meta) {
    var column = $("column");
    column.textContent = "";
    (meta.columns || []).forEach(function (name) { column.appendChild(el("option", name)); });
    column.value = (meta.columns || [])[0] || "";

    var interval = meta.bucket_interval_s || 0;
    var gran = $("granularity");
    gran.textContent = "";
    var raw = el("option", "bucket (" + interval + " s)");
    raw.value = "";
    gran.appendChild(raw);
    var choices = meta.granularities || { "5m": 300, "1h": 3600, "1d": 86400 };
    Object.keys(choices).forEach(function (name) {
      var seconds = choices[name];
      if (!interval || (seconds > interval && seconds % interval === 0)) {
        var option = el("option", name);
        option.value = name;
        option.dataset.seconds = seconds;
        gran.appendChild(option);
      }
    });

    var tz = "UTC";
    try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) { tz = "UTC"; }
    $("tz").value = tz;
    state.tz = tz;
    var list = $("tz-list");
    var zones = [];
    try { zones = Intl.supportedValuesOf("timeZone"); } catch (e) { zones = ["UTC"]; }
    if (zones.indexOf("UTC") < 0) zones.unshift("UTC");
    zones.forEach(function (z) { var o = el("option"); o.value = z; list.appendChild(o); });
    $("table-name").textContent = "table " + meta.table;
  }

  function columnName() { return $("column").value; }

  function granularity() {
    var option = $("granularity").selectedOptions[0];
    return option && option.value ? { name: option.value, seconds: +option.dataset.seconds } : null;
  }

  function parseLocal(value, tz) {
    // "YYYY-MM-DDTHH:MM[:SS]" as a wall-clock time in tz
    var m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(value || "");
    if (!m) return null;
    var guess = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0)) / 1000;
    return guess - tzOffset(guess - tzOffset(guess, tz), tz);
  }

  function range() {
    var choice = $("range").value;
    var now = Date.now() / 1000;
    if (choice === "all") return { from: null, to: null };
    if (choice === "custom") {
      return { from: parseLocal($("from").value, state.tz), to: parseLocal($("to").value, state.tz) };
    }
    return { from: Math.floor(now - Number(choice)), to: null };
  }

  // --- counts -------------------------------------------------------------------------------

  function rollUp(rows, column, gran, tz, already) {
    var now = Date.now() / 1000;
    var groups = new Map();
    rows.forEach(function (row) {
      if (typeof row.bucket_start !== "number" || typeof row.count !== "number") return;
      var value = Object.prototype.hasOwnProperty.call(row, column) ? row[column] : null;
      var start = already || !gran ? row.bucket_start : align(row.bucket_start, gran.seconds, tz);
      var end = already || !gran ? row.bucket_end : align(start + gran.seconds * 1.5, gran.seconds, tz);
      var key = label(value) + "\u0000" + start;
      var g = groups.get(key);
      if (!g) {
        g = { value: value, series: label(value), start: start, end: end, count: 0, late: null,
              final: true, finalKnown: true };
        groups.set(key, g);
      }
      g.count += row.count;
      if (typeof row.late === "number") g.late = (g.late || 0) + row.late;
      if (row.final === undefined || row.final === null) {
        g.finalKnown = false;
        if (typeof end === "number" && end > now) g.final = false;
      } else if (!row.final) {
        g.final = false;
      }
    });
    return Array.from(groups.values());
  }

  function load() {
    if (!state.meta) return;
    if (state.loading) { state.again = true; return; }
    state.loading = true;
    var column = columnName();
    var gran = granularity();
    var r = range();
    var params = { from: r.from, to: r.to };
    var rollup = !!state.meta.rollup;
    if (rollup) {
      params.group_by = column;
      params.tz = state.tz;
      if (gran) params.granularity = gran.name;
    }
    api("/api/v1/buckets" + query(params)).then(function (answer) {
      state.loading = false;
      if (answer.status === 429 || answer.status === 503) {
        // admission control or a snapshot still loading: ask again when told to
        var wait = Number(answer.headers.get("Retry-After")) || 1;
        window.setTimeout(load, Math.min(wait, 30) * 1000);
        return;
      }
      if (!answer.ok) {
        notice("counts: " + errorText(answer));
        return;
      }
      var body = answer.body || {};
      state.positionToken = answer.headers.get("X-Position-Token") || body.token || state.positionToken;
      var groups = rollUp(body.rows || [], column, gran, state.tz, rollup);
      notice(body.truncated ? "Only the first rows of this range were returned (sql_row_limit): " +
        "pick a shorter range or a coarser granularity." : "");
      state.last = { column: column, groups: groups };
      render(column, groups);
      status(body);
      if (!state.es) connectStream();
    }).finally(function () {
      if (state.again) { state.again = false; load(); }
    });
  }

  function status(body) {
    var parts = [];
    if (body.rst_id !== undefined) parts.push("generation " + body.rst_id);
    if (body.snapshot_age_s !== undefined && body.snapshot_age_s !== null) parts.push("age " + body.snapshot_age_s + " s");
    if (body.complete === true) parts.push("complete");
    else if (body.caught_up === false) parts.push("catching up");
    $("status").textContent = parts.join(" · ");
  }

  function render(column, groups) {
    var totals = new Map();
    groups.forEach(function (g) { totals.set(g.series, (totals.get(g.series) || 0) + g.count); });
    var ranked = Array.from(totals.entries()).sort(function (a, b) { return b[1] - a[1] || (a[0] < b[0] ? -1 : 1); });
    var shown = ranked.slice(0, MAX_SERIES).map(function (e) { return e[0]; });
    var hasOther = ranked.length > MAX_SERIES;
    var names = shown.concat(hasOther ? ["(other)"] : []);
    var index = new Map(names.map(function (n, i) { return [n, i]; }));

    var starts = Array.from(new Set(groups.map(function (g) { return g.start; }))).sort(function (a, b) { return a - b; });
    var ends = new Map(groups.map(function (g) { return [g.start, g.end]; }));
    // a bucket without a row had no message: break the line there rather than join its neighbours
    var xs = [];
    starts.forEach(function (x, i) {
      xs.push(x);
      var end = ends.get(x);
      if (i + 1 < starts.length && typeof end === "number" && end < starts[i + 1]) xs.push(end);
    });
    var xIndex = new Map(xs.map(function (x, i) { return [x, i]; }));
    var ys = names.map(function () { return xs.map(function () { return null; }); });
    var finalAt = xs.map(function () { return true; });
    var points = new Map();
    groups.forEach(function (g) {
      var s = index.has(g.series) ? index.get(g.series) : index.get("(other)");
      var i = xIndex.get(g.start);
      ys[s][i] = (ys[s][i] || 0) + g.count;
      if (!g.final) finalAt[i] = false;
      var key = names[s] + "\u0000" + g.start;
      var p = points.get(key) || { series: names[s], bucket_start: g.start, count: 0, final: true };
      p.count += g.count;
      p.final = p.final && g.final;
      points.set(key, p);
    });
    var plotted = Array.from(points.values()).sort(function (a, b) {
      return a.bucket_start - b.bucket_start || (a.series < b.series ? -1 : 1);
    });

    var chart = $("chart");
    chart.dataset.plotted = JSON.stringify(plotted);
    chart.dataset.series = JSON.stringify(names);
    chart.dataset.column = column;
    var tbody = $("plotted").tBodies[0];
    tbody.textContent = "";
    plotted.forEach(function (p) {
      var tr = el("tr");
      [p.series, p.bucket_start, p.count, p.final ? 1 : 0].forEach(function (v) { tr.appendChild(el("td", v)); });
      tbody.appendChild(tr);
    });
    $("chart-column").textContent = column;
    Array.prototype.forEach.call(document.querySelectorAll(".column-name"), function (n) { n.textContent = column; });

    drawChart(chart, xs, ys, names, finalAt);
    renderTop(ranked);
    renderBuckets(groups);
  }

  function drawChart(container, xs, ys, names, finalAt) {
    if (state.plot) { state.plot.destroy(); state.plot = null; }
    container.textContent = "";
    if (!xs.length) {
      container.appendChild(el("p", "No counts in this range yet.", "muted"));
      return;
    }
    var tz = state.tz;
    var firstOpen = null;
    for (var i = 0; i < xs.length; i++) { if (!finalAt[i]) { firstOpen = xs[i]; break; } }
    var opts = {
      width: Math.max(320, container.clientWidth || 800),
      height: 320,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), tz); },
      scales: { x: { time: true } },
      series: [{ label: "bucket start" }].concat(names.map(function (name, i) {
        return { label: name, stroke: PALETTE[i % PALETTE.length], width: 2,
                 points: { show: true, size: 6 }, value: function (u, v) { return fmtCount(v); } };
      })),
      axes: [{}, { label: "count", size: 60 }],
      hooks: {
        draw: [function (u) {
          if (firstOpen === null) return;
          var ctx = u.ctx;
          var left = Math.max(u.bbox.left, u.valToPos(firstOpen, "x", true) - 4);
          var right = u.bbox.left + u.bbox.width;
          ctx.save();
          ctx.fillStyle = "rgba(245, 158, 11, 0.15)";
          ctx.fillRect(left, u.bbox.top, Math.max(right - left, 8), u.bbox.height);
          ctx.fillStyle = "rgba(180, 83, 9, 0.9)";
          ctx.font = (12 * (window.devicePixelRatio || 1)) + "px system-ui, sans-serif";
          ctx.fillText("open", left + 4, u.bbox.top + 14 * (window.devicePixelRatio || 1));
          ctx.restore();
        }],
      },
    };
    state.plot = new uPlot(opts, [xs].concat(ys), container);
    container.dataset.open = firstOpen === null ? "" : String(firstOpen);
  }

  function renderTop(ranked) {
    var total = ranked.reduce(function (s, e) { return s + e[1]; }, 0);
    var tbody = $("top").tBodies[0];
    tbody.textContent = "";
    ranked.slice(0, TOP_N).forEach(function (e, i) {
      var tr = el("tr");
      tr.appendChild(el("td", i + 1));
      tr.appendChild(el("td", e[0]));
      tr.appendChild(el("td", fmtCount(e[1]), "num"));
      tr.appendChild(el("td", total ? (100 * e[1] / total).toFixed(1) + " %" : "–", "num"));
      tbody.appendChild(tr);
    });
    $("top-n").textContent = String(TOP_N);
  }

  function renderBuckets(groups) {
    var byStart = new Map();
    groups.forEach(function (g) {
      var b = byStart.get(g.start) || { start: g.start, end: g.end, count: 0, late: null, final: true, known: true };
      b.count += g.count;
      if (g.late !== null) b.late = (b.late || 0) + g.late;
      b.final = b.final && g.final;
      b.known = b.known && g.finalKnown;
      byStart.set(g.start, b);
    });
    var latest = Array.from(byStart.values()).sort(function (a, b) { return b.start - a.start; }).slice(0, LATEST_BUCKETS);
    var tbody = $("buckets").tBodies[0];
    tbody.textContent = "";
    latest.forEach(function (b) {
      var tr = el("tr");
      tr.dataset.final = b.final ? "1" : "0";
      tr.appendChild(el("td", fmtTime(b.start)));
      tr.appendChild(el("td", fmtTime(b.end)));
      tr.appendChild(el("td", fmtCount(b.count), "num"));
      tr.appendChild(el("td", b.late === null ? "–" : fmtCount(b.late), "num"));
      var word = b.final ? (b.known ? "final" : "closed") : "open";
      tr.appendChild(el("td", word, b.final ? "state-final" : "state-open"));
      tbody.appendChild(tr);
    });
  }

  // --- live updates -------------------------------------------------------------------------

  function setLive(on, text) {
    var badge = $("live");
    badge.className = "badge " + (on ? "on" : "off");
    badge.textContent = text;
  }

  function scheduleRefresh() {
    if (state.timer) return;
    state.timer = window.setTimeout(function () { state.timer = null; load(); }, REFRESH_DEBOUNCE_MS);
  }

  function connectStream() {
    if (state.es) { state.es.close(); state.es = null; }
    if (typeof EventSource === "undefined" || !state.meta) return;
    var r = range();
    var params = { from: r.from, to: r.to, last_event_id: state.positionToken };
    if (state.token) params.access_token = state.token;
    var es = new EventSource((state.meta.stream || "/api/v1/stream") + query(params));
    state.es = es;
    es.onopen = function () { setLive(true, "live"); };
    es.onerror = function () {
      // the browser reconnects by itself, sending Last-Event-ID
      setLive(false, es.readyState === EventSource.CLOSED ? "offline" : "reconnecting");
    };
    es.addEventListener("row", function (event) {
      var row = null;
      try { row = JSON.parse(event.data); } catch (e) { return; }
      addChange(row);
      scheduleRefresh();
    });
    es.addEventListener("problem", function (event) {
      var body = {};
      try { body = JSON.parse(event.data); } catch (e) { body = {}; }
      notice("live updates: " + (body.error || "stream ended"));
    });
  }

  function addChange(row) {
    var list = $("changes");
    var cols = (state.meta.columns || []).map(function (c) { return c + "=" + label(row[c]); });
    var text = fmtTime(row.bucket_start) + "  " + cols.join(" ") + "  count=" + row.count;
    if (row.final !== undefined) text += row.final ? "  final" : "  open";
    var item = el("li", text);
    list.insertBefore(item, list.firstChild);
    while (list.children.length > CHANGES_KEPT) list.removeChild(list.lastChild);
  }

  // --- SQL console --------------------------------------------------------------------------

  function quoteIdent(name) { return '"' + String(name).replace(/"/g, '""') + '"'; }

  function defaultSql(meta) {
    var col = quoteIdent((meta.columns || [])[0] || "bucket_start");
    return "SELECT " + col + ", bucket_start, sum(count) AS count FROM " + quoteIdent(meta.table) +
      "\nGROUP BY 1, 2 ORDER BY bucket_start DESC, count DESC LIMIT 200";
  }

  function runSql(event) {
    if (event) event.preventDefault();
    var sql = $("sql").value;
    var statusEl = $("sql-status");
    statusEl.className = "muted";
    statusEl.textContent = "running…";
    api("/api/v1/sql", { method: "POST", headers: { "Content-Type": "application/json" },
                         body: JSON.stringify({ sql: sql }) }).then(function (answer) {
      var table = $("sql-result");
      if (!answer.ok) {
        statusEl.className = "error";
        statusEl.textContent = errorText(answer);
        return;
      }
      var body = answer.body || {};
      var columns = body.columns || [];
      var rows = body.rows || [];
      statusEl.textContent = rows.length + " row" + (rows.length === 1 ? "" : "s") +
        (body.truncated ? " (truncated)" : "") + " in " + body.elapsed_ms + " ms";
      table.tHead.textContent = "";
      table.tBodies[0].textContent = "";
      var head = el("tr");
      columns.forEach(function (c) { head.appendChild(el("th", c)); });
      table.tHead.appendChild(head);
      rows.forEach(function (row) {
        var tr = el("tr");
        columns.forEach(function (c) {
          var v = row[c];
          tr.appendChild(el("td", v === null ? "NULL" : typeof v === "object" ? JSON.stringify(v) : v,
                            typeof v === "number" ? "num" : ""));
        });
        table.tBodies[0].appendChild(tr);
      });
      sqlChart(columns, rows);
    });
  }

  function sqlChart(columns, rows) {
    var box = $("sql-chart");
    if (state.sqlPlot) { state.sqlPlot.destroy(); state.sqlPlot = null; }
    box.textContent = "";
    box.dataset.plotted = "[]";
    if (columns.indexOf("bucket_start") < 0 || !rows.length) return;
    var numeric = function (c) { return rows.every(function (r) { return r[c] === null || typeof r[c] === "number"; }); };
    var skip = ["bucket_start", "bucket_end", "RST_ID"];
    var y = columns.indexOf("count") >= 0 ? "count" : columns.filter(function (c) { return skip.indexOf(c) < 0 && numeric(c); })[0];
    if (!y) return;
    var key = columns.filter(function (c) { return skip.indexOf(c) < 0 && c !== y && !numeric(c); })[0];
    var groups = rows.filter(function (r) { return typeof r.bucket_start === "number"; }).map(function (r) {
      return { series: key ? label(r[key]) : y, start: r.bucket_start, count: Number(r[y]) || 0 };
    });
    var totals = new Map();
    groups.forEach(function (g) { totals.set(g.series, (totals.get(g.series) || 0) + g.count); });
    var names = Array.from(totals.keys()).sort(function (a, b) { return totals.get(b) - totals.get(a); }).slice(0, MAX_SERIES);
    var xs = Array.from(new Set(groups.map(function (g) { return g.start; }))).sort(function (a, b) { return a - b; });
    var xi = new Map(xs.map(function (x, i) { return [x, i]; }));
    var ys = names.map(function () { return xs.map(function () { return null; }); });
    var plotted = [];
    groups.forEach(function (g) {
      var s = names.indexOf(g.series);
      if (s < 0) return;
      ys[s][xi.get(g.start)] = (ys[s][xi.get(g.start)] || 0) + g.count;
      plotted.push({ series: g.series, bucket_start: g.start, count: g.count });
    });
    box.dataset.plotted = JSON.stringify(plotted);
    var tz = state.tz;
    state.sqlPlot = new uPlot({
      width: Math.max(320, box.clientWidth || 800), height: 220,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), tz); },
      scales: { x: { time: true } },
      series: [{ label: "bucket_start" }].concat(names.map(function (n, i) {
        return { label: n, stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: true, size: 5 } };
      })),
      axes: [{}, { label: y, size: 60 }],
    }, [xs].concat(ys), box);
  }

  // --- start --------------------------------------------------------------------------------

  function start() {
    api("/api/v1/meta").then(function (answer) {
      if (!answer.ok) {
        notice("cannot read /api/v1/meta: " + errorText(answer));
        return;
      }
      state.meta = answer.body;
      state.started = true;
      fillControls(state.meta);
      if (!$("sql").value) $("sql").value = defaultSql(state.meta);
      load();
    });
  }

  function restartStream() { if (state.es) { state.es.close(); state.es = null; } }

  function wire() {
    $("token").value = state.token;
    $("token-form").addEventListener("submit", function (event) {
      event.preventDefault();
      state.token = $("token").value.trim();
      try { window.localStorage.setItem(TOKEN_KEY, state.token); } catch (e) { /* private mode */ }
      restartStream();
      if (state.meta) load(); else start();
    });
    $("column").addEventListener("change", function () { load(); });
    $("granularity").addEventListener("change", function () { load(); });
    $("range").addEventListener("change", function () {
      $("custom-range").hidden = $("range").value !== "custom";
      restartStream();
      load();
    });
    ["from", "to"].forEach(function (id) {
      $(id).addEventListener("change", function () { restartStream(); load(); });
    });
    $("tz").addEventListener("change", function () {
      var tz = $("tz").value.trim();
      if (!validTz(tz)) { notice("unknown time zone " + JSON.stringify(tz) + "; keeping " + state.tz); $("tz").value = state.tz; return; }
      state.tz = tz;
      load();
    });
    $("refresh").addEventListener("click", function () { load(); });
    $("sql-form").addEventListener("submit", runSql);
    window.addEventListener("resize", function () {
      var chart = $("chart");
      if (state.plot) state.plot.setSize({ width: Math.max(320, chart.clientWidth), height: 320 });
    });
  }

  wire();
  if (document.body.dataset.auth === "1" && !state.token) {
    notice("This service needs a token: enter http_token above and press save.");
  } else {
    start();
  }
})();
