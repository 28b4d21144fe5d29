// The leaderboard page's behaviour: the view switcher (All runs | Scaling), the All-runs chart
// (SVG drawn here from the embedded JSON), its tooltips, box zoom, x-axis and relative toggles, and
// sortable, filterable tables. The Scaling view is page_scaling.js. Hand-written, no library and
// no network: page.py inlines both files into the one HTML file it writes.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("leaderboard-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var W = 960, H = 520, M = { l: 72, r: 24, t: 16, b: 56 };
  var svg = document.getElementById("chart");
  var tip = document.getElementById("tooltip");
  var axis = DATA.axis;
  var view = null; // the zoomed window {x0, x1 (log10 FLOPs), y0, y1 (BPB)}; null: every run
  var drag = null;
  var pinned = false;
  var relative = false; // y: BPB relative to the baseline's law (percent) instead of BPB

  // ---- the view switcher ----
  function showView(name) {
    Array.prototype.forEach.call(document.querySelectorAll("nav.views button"), function (b) {
      b.setAttribute("aria-selected", String(b.getAttribute("data-view") === name));
      document.getElementById("view-" + b.getAttribute("data-view")).hidden = b.getAttribute("data-view") !== name;
    });
    document.dispatchEvent(new CustomEvent("leaderboard-view", { detail: name }));
  }
  Array.prototype.forEach.call(document.querySelectorAll("nav.views button"), function (b) {
    b.addEventListener("click", function () { showView(b.getAttribute("data-view")); });
  });

  function el(name, attrs, parent, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }
  function xOf(run) { return axis === "hardware" ? run.hardwareFlops : run.modelFlops; }
  function onFrontier(run) { return axis === "hardware" ? run.hardwareFrontier : run.modelFrontier; }
  function yOf(run) {
    if (!relative) return run.bpb;
    return axis === "hardware" ? run.hardwareRelative : run.modelRelative;
  }
  function points() {
    return DATA.runs.filter(function (r) { return xOf(r) > 0 && yOf(r) !== null && yOf(r) !== undefined; });
  }
  function sci(x) { return x === null ? "n/a" : x.toExponential(2).replace("e+", "e"); }

  function extent(ps) {
    var xs = ps.map(function (r) { return Math.log10(xOf(r)); });
    var ys = ps.map(yOf);
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    var px = Math.max(0.15, (x1 - x0) * 0.06), py = Math.max(relative ? 0.5 : 0.01, (y1 - y0) * 0.08);
    return { x0: x0 - px, x1: x1 + px, y0: y0 - py, y1: y1 + py };
  }

  function niceTicks(lo, hi, count) {
    var raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; }).find(function (st) { return st >= raw; });
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) out.push(Number(v.toFixed(6)));
    return out;
  }

  function draw() {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var ps = points();
    if (!ps.length) { el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, svg, "no run to plot"); return; }
    var v = view || extent(ps);
    var pw = W - M.l - M.r, ph = H - M.t - M.b;
    var sx = function (x) { return M.l + (Math.log10(x) - v.x0) / (v.x1 - v.x0) * pw; };
    var sy = function (y) { return M.t + (v.y1 - y) / (v.y1 - v.y0) * ph; };
    var clip = el("clipPath", { id: "plot-area" }, el("defs", {}, svg));
    el("rect", { x: M.l, y: M.t, width: pw, height: ph }, clip);
    var grid = el("g", { class: "grid" }, svg);
    var decades = v.x1 - v.x0;
    for (var k = Math.floor(v.x0); k <= Math.ceil(v.x1); k++) {
      [1, 2, 5].forEach(function (m) {
        var lx = k + Math.log10(m);
        if (lx < v.x0 || lx > v.x1 || (m !== 1 && decades > 2.5)) return;
        var x = M.l + (lx - v.x0) / decades * pw;
        el("line", { x1: x, x2: x, y1: M.t, y2: M.t + ph, class: m === 1 ? "major" : "minor" }, grid);
        el("text", { x: x, y: M.t + ph + 18, "text-anchor": "middle", class: "tick" }, grid,
          m === 1 ? "1e" + k : m + "e" + k);
      });
    }
    niceTicks(v.y0, v.y1, 6).forEach(function (y) {
      el("line", { x1: M.l, x2: M.l + pw, y1: sy(y), y2: sy(y), class: "major" }, grid);
      el("text", { x: M.l - 8, y: sy(y) + 4, "text-anchor": "end", class: "tick" }, grid,
        relative ? (y > 0 ? "+" : "") + y.toFixed(1) + "%" : y.toFixed(3));
    });
    el("rect", { x: M.l, y: M.t, width: pw, height: ph, class: "frame" }, svg);
    el("text", { x: M.l + pw / 2, y: H - 12, "text-anchor": "middle", class: "label" }, svg,
      DATA.axes[axis] + " (log scale; drag to zoom, double-click to reset)");
    el("text", { x: 16, y: M.t + ph / 2, "text-anchor": "middle", class: "label",
      transform: "rotate(-90 16 " + (M.t + ph / 2) + ")" }, svg, relative
        ? DATA.quality + " vs the " + DATA.baseline.group + " law, % (lower is better)"
        : DATA.quality + " (lower is better)");
    var plot = el("g", { "clip-path": "url(#plot-area)" }, svg);
    var frontier = ps.filter(onFrontier).sort(function (a, b) { return xOf(a) - xOf(b); });
    if (relative) { // the baseline's own law: 0%
      if (v.y0 < 0 && v.y1 > 0) el("line", { x1: M.l, x2: M.l + pw, y1: sy(0), y2: sy(0), class: "baseline" }, plot);
    } else if (frontier.length) { // a staircase in BPB; in relative terms the frontier is only its points
      var d = "M" + sx(xOf(frontier[0])) + "," + sy(frontier[0].bpb);
      for (var i = 1; i < frontier.length; i++) {
        d += " H" + sx(xOf(frontier[i])) + " V" + sy(frontier[i].bpb);
      }
      d += " H" + (M.l + pw);
      el("path", { d: d, class: "frontier" }, plot);
    }
    ps.forEach(function (r) {
      var c = el("circle", { cx: sx(xOf(r)), cy: sy(yOf(r)), r: onFrontier(r) ? 7 : 5,
        class: onFrontier(r) ? "run on-frontier" : "run", "data-run": r.name, tabindex: 0 }, plot);
      c.addEventListener("mouseenter", function (ev) { show(r, ev); });
      c.addEventListener("focus", function () { var b = c.getBoundingClientRect(); show(r, { clientX: b.right, clientY: b.bottom }); });
      c.addEventListener("click", function (ev) { pinned = true; show(r, ev); ev.stopPropagation(); });
      c.addEventListener("mouseleave", function () { if (!pinned) hide(); });
    });
    document.getElementById("frontier-count").textContent = String(frontier.length);
  }

  function row(dl, term, value) {
    var dt = document.createElement("dt");
    dt.textContent = term;
    dl.appendChild(dt);
    var dd = document.createElement("dd");
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = value;
    dl.appendChild(dd);
  }
  function link(href, text) {
    var a = document.createElement("a");
    a.href = href; a.textContent = text; a.target = "_blank"; a.rel = "noopener";
    return a;
  }
  function show(r, ev) {
    tip.textContent = "";
    var h = document.createElement("strong");
    h.textContent = r.name;
    tip.appendChild(h);
    var dl = document.createElement("dl");
    row(dl, "author", r.author || "—");
    row(dl, "BPB", r.bpb.toFixed(4));
    row(dl, "hardware FLOPs", sci(r.hardwareFlops));
    row(dl, "model FLOPs", sci(r.modelFlops));
    var rel = axis === "hardware" ? r.hardwareRelative : r.modelRelative;
    if (rel !== null && rel !== undefined) row(dl, "vs baseline", (rel > 0 ? "+" : "") + rel.toFixed(2) + "%");
    if (onFrontier(r)) row(dl, "Pareto", "on the frontier");
    var links = document.createElement("span");
    if (r.wandb) links.appendChild(link(r.wandb, "W&B run"));
    if (r.results) { if (r.wandb) links.appendChild(document.createTextNode(" · ")); links.appendChild(link(r.results, "results file")); }
    row(dl, "links", links);
    tip.appendChild(dl);
    tip.hidden = false;
    var box = document.getElementById("chart-box").getBoundingClientRect();
    tip.style.left = Math.min(ev.clientX - box.left + 14, box.width - 280) + "px";
    tip.style.top = (ev.clientY - box.top + 14) + "px";
  }
  function hide() { tip.hidden = true; pinned = false; }

  function toData(ev) {
    var b = svg.getBoundingClientRect(), v = view || extent(points());
    var x = (ev.clientX - b.left) * W / b.width, y = (ev.clientY - b.top) * H / b.height;
    return { px: x, py: y, x: v.x0 + (x - M.l) / (W - M.l - M.r) * (v.x1 - v.x0),
      y: v.y1 - (y - M.t) / (H - M.t - M.b) * (v.y1 - v.y0) };
  }
  svg.addEventListener("mousedown", function (ev) {
    if (ev.target.tagName === "circle") return;
    drag = { start: toData(ev), box: el("rect", { class: "zoom-box", x: 0, y: 0, width: 0, height: 0 }, svg) };
    ev.preventDefault();
  });
  svg.addEventListener("mousemove", function (ev) {
    if (!drag) return;
    var p = toData(ev), s = drag.start;
    drag.box.setAttribute("x", Math.min(s.px, p.px)); drag.box.setAttribute("y", Math.min(s.py, p.py));
    drag.box.setAttribute("width", Math.abs(p.px - s.px)); drag.box.setAttribute("height", Math.abs(p.py - s.py));
  });
  window.addEventListener("mouseup", function (ev) {
    if (!drag) return;
    var p = toData(ev), s = drag.start;
    drag = null;
    if (Math.abs(p.px - s.px) > 6 && Math.abs(p.py - s.py) > 6) {
      view = { x0: Math.min(s.x, p.x), x1: Math.max(s.x, p.x), y0: Math.min(s.y, p.y), y1: Math.max(s.y, p.y) };
    }
    draw();
  });
  svg.addEventListener("dblclick", function () { view = null; draw(); });
  document.getElementById("reset-zoom").addEventListener("click", function () { view = null; draw(); });
  document.addEventListener("click", function (ev) { if (!tip.contains(ev.target)) hide(); });
  document.addEventListener("keydown", function (ev) { if (ev.key === "Escape") hide(); });
  Array.prototype.forEach.call(document.querySelectorAll("input[name=x-axis]"), function (input) {
    input.addEventListener("change", function () { axis = input.value; view = null; hide(); relativeState(); draw(); });
  });
  var relBox = document.getElementById("relative"), relNote = document.getElementById("relative-note");
  function relativeState() { // the toggle works where the baseline has a law on this axis
    var b = DATA.baseline && DATA.baseline[axis];
    relBox.disabled = !(b && b.law);
    if (relBox.disabled) { relBox.checked = false; relative = false; }
    relNote.textContent = !DATA.baseline ? "" : b && b.law
      ? (relative ? "baseline " + DATA.baseline.group + " (" + DATA.baseline.fit + "): a=" + b.law.a.toPrecision(4) +
        " b=" + b.law.b.toFixed(4) + " c=" + b.law.c.toFixed(4) : "")
      : "(no baseline: " + (b ? b.reason : "none") + ")";
  }
  relBox.checked = relative = !!DATA.relative; // --relative: start there (relativeState undoes it without a law)
  relBox.addEventListener("change", function () { relative = relBox.checked; view = null; hide(); relativeState(); draw(); });
  relativeState();

  // ---- tables: click a header to sort (again: reverse), type to filter ----
  // Numbers as ranking.py writes them: 1,234 | 0.9400 | 3.323e+19 | 41.2% | durations 12.5s, 19m10s, 2h46m.
  var DURATION = /^\s*(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?\s*$/;
  function sortKey(text) {
    var m = /^\s*([-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?)\s*%?\s*$/i.exec(text);
    if (m) return parseFloat(m[1].replace(/,/g, ""));
    var d = DURATION.exec(text);
    if (!d || !(d[1] || d[2] || d[3])) return null;
    return (+d[1] || 0) * 3600 + (+d[2] || 0) * 60 + (+d[3] || 0);
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.board"), function (table) {
    var body = table.tBodies[0];
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var numeric = th.classList.contains("num");
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var ta = a.cells[col].textContent, tb = b.cells[col].textContent;
          if (numeric) {
            var ka = sortKey(ta), kb = sortKey(tb);
            if (ka === null && kb === null) return 0;
            if (ka === null) return 1; // runs without a value go last either way
            if (kb === null) return -1;
            return asc ? ka - kb : kb - ka;
          }
          return asc ? ta.localeCompare(tb) : tb.localeCompare(ta);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
    var filter = document.getElementById(table.id + "-filter");
    if (!filter) return; // the Scaling table sorts, and is redrawn in rank order at each forecast
    filter.addEventListener("input", function () {
      var q = filter.value.trim().toLowerCase();
      Array.prototype.forEach.call(body.rows, function (r) {
        r.hidden = q !== "" && r.textContent.toLowerCase().indexOf(q) < 0;
      });
    });
  });

  draw();
})();
