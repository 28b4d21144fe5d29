// The leaderboard page's Scaling view: each group's law L = a x^-b + c drawn (SVG) through its runs
// and extended to the forecast FLOPs, its interval band, the forecast with its interval, and the
// groups ranked by that forecast. The fits come from Python (page_data.py): this file only
// evaluates the laws at the FLOPs the reader types, takes the interval computed at that FLOPs when
// it is a grid point, else interpolates it linearly in log FLOPs between two grid points (shown
// "≈"), and ranks. Hand-written, no library, no network; page.py inlines it after page.js.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("leaderboard-data").textContent);
  var S = DATA.scaling;
  if (!S || !S.groups.length) return;
  var NS = "http://www.w3.org/2000/svg";
  var W = 960, H = 520, M = { l: 72, r: 24, t: 16, b: 56 };
  var COLORS = ["#d9480f", "#1c7ed6", "#2b8a3e", "#ae3ec9", "#e8590c", "#0b7285", "#c2255c", "#5c940d",
    "#364fc7", "#862e9c"];
  var svg = document.getElementById("scaling-chart");
  var body = document.querySelector("#scaling-table tbody");
  var input = document.getElementById("forecast-flops"), error = document.getElementById("forecast-error");
  var topInput = document.getElementById("top-n");
  var xStar = S.xStar;
  var NUMBER = /^\s*(\d+(?:\.\d*)?|\.\d+)(?:e([-+]?\d+))?\s*$/i;

  function el(name, attrs, parent, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }
  function predict(law, x) { return law.a * Math.pow(x, -law.b) + law.c; }
  function flopsText(x) {
    var e = Math.floor(Math.log10(x) + 1e-9), m = x / Math.pow(10, e);
    return (Math.abs(m - Math.round(m)) < 1e-9 ? String(Math.round(m)) : m.toFixed(2)) + "e" + e;
  }
  function fixed(x, digits) { return x === null || x === undefined || !isFinite(x) ? "-" : x.toFixed(digits); }

  // The interval at x: the band's own at a grid point, else interpolated in log x; null outside it.
  function intervalAt(g, x) {
    var band = g.band;
    if (!band.length || x < band[0].flops * (1 - 1e-9) || x > band[band.length - 1].flops * (1 + 1e-9)) return null;
    for (var i = 0; i < band.length; i++) {
      if (Math.abs(x / band[i].flops - 1) <= 1e-9) return { low: band[i].low, high: band[i].high, exact: true };
    }
    var j = 1;
    while (band[j].flops < x) j++;
    var p = band[j - 1], q = band[j];
    var t = (Math.log(x) - Math.log(p.flops)) / (Math.log(q.flops) - Math.log(p.flops));
    var lerp = function (u, v) { return u === null || v === null ? null : u + (v - u) * t; };
    return { low: lerp(p.low, q.low), high: lerp(p.high, q.high), exact: false };
  }

  function ranked() { // groups in rank order at xStar (the rule of scaling.rank_groups)
    var rows = S.groups.map(function (g) {
      return { g: g, forecast: g.law ? predict(g.law, xStar) : null, marin: g.marinLaw ? predict(g.marinLaw, xStar) : null,
        interval: intervalAt(g, xStar), rank: null, overlaps: [] };
    });
    rows.sort(function (a, b) {
      var ka = [a.g.rankable ? 0 : 1, a.forecast === null ? 1 : 0], kb = [b.g.rankable ? 0 : 1, b.forecast === null ? 1 : 0];
      if (ka[0] !== kb[0]) return ka[0] - kb[0];
      if (ka[1] !== kb[1]) return ka[1] - kb[1];
      if (a.forecast !== b.forecast) return a.forecast - b.forecast;
      return a.g.name < b.g.name ? -1 : a.g.name > b.g.name ? 1 : 0;
    });
    var n = 0;
    rows.forEach(function (r) { if (r.g.rankable && r.forecast !== null) r.rank = ++n; });
    var withInterval = rows.filter(function (r) { return r.interval; });
    withInterval.forEach(function (r) {
      var hi = r.interval.high === null ? Infinity : r.interval.high;
      r.overlaps = withInterval.filter(function (o) {
        return o !== r && o.interval.low <= hi && r.interval.low <= (o.interval.high === null ? Infinity : o.interval.high);
      });
      r.others = withInterval.length - 1;
    });
    return rows;
  }

  function spans(ranks) {
    var out = [];
    ranks.sort(function (a, b) { return a - b; }).forEach(function (k) {
      if (out.length && k === out[out.length - 1][1] + 1) out[out.length - 1][1] = k; else out.push([k, k]);
    });
    return out.map(function (s) { return s[0] === s[1] ? String(s[0]) : s[0] + "-" + s[1]; }).join(",");
  }

  function cell(tr, text, numeric, title) {
    var td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    if (title) td.title = title;
    tr.appendChild(td);
  }
  function table(rows) {
    document.getElementById("forecast-head").textContent = "BPB at " + flopsText(xStar);
    body.textContent = "";
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-group", r.g.name);
      if (r.rank === 1) tr.className = "highlight";
      cell(tr, r.rank === null ? "-" : String(r.rank), true);
      cell(tr, r.g.name);
      cell(tr, String(r.g.runs.length), true);
      cell(tr, fixed(r.g.r2, 4), true);
      cell(tr, fixed(r.forecast, 4), true);
      var iv = r.interval, text = "-", title = "";
      if (iv) {
        text = (iv.exact ? "" : "≈") + fixed(iv.low, 3) + "-" + (iv.high === null ? "∞" : fixed(iv.high, 3));
        title = iv.exact ? "profile interval at this FLOPs" : "interpolated in log FLOPs between two computed intervals";
      } else if (r.g.band.length) {
        title = "outside the FLOPs where intervals were computed";
      }
      cell(tr, text, true, title);
      cell(tr, fixed(r.marin, 4), true);
      var overlap = "-";
      if (iv) {
        var ranks = r.overlaps.map(function (o) { return o.rank; }).filter(function (k) { return k !== null; });
        overlap = !ranks.length ? "none" : ranks.length === r.others ? "all " + r.others + " others" : spans(ranks);
      }
      cell(tr, overlap);
      cell(tr, r.g.notes);
      tr.addEventListener("mouseenter", function () { highlight(r.g.name); });
      tr.addEventListener("mouseleave", function () { highlight(null); });
      body.appendChild(tr);
    });
  }
  function highlight(name) {
    Array.prototype.forEach.call(svg.querySelectorAll("g.group"), function (g) {
      g.classList.toggle("focus", g.getAttribute("data-group") === name);
    });
  }

  function chart(rows) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var top = Math.max(1, Math.min(rows.length, parseInt(topInput.value, 10) || 5));
    var xs = [], ys = [];
    S.groups.forEach(function (g) { g.runs.forEach(function (p) { xs.push(Math.log10(p.flops)); ys.push(p.bpb); }); });
    xs.push(Math.log10(xStar));
    rows.slice(0, top).forEach(function (r) {
      if (r.forecast !== null) ys.push(r.forecast);
      if (r.interval && r.interval.low !== null) ys.push(r.interval.low);
      if (r.interval && r.interval.high !== null) ys.push(r.interval.high);
    });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    var px = Math.max(0.15, (x1 - x0) * 0.04), py = Math.max(0.01, (y1 - y0) * 0.06);
    x0 -= px; x1 += px; y0 -= py; y1 += py;
    var pw = W - M.l - M.r, ph = H - M.t - M.b;
    var sx = function (x) { return M.l + (Math.log10(x) - x0) / (x1 - x0) * pw; };
    var sy = function (y) { return M.t + (y1 - y) / (y1 - y0) * ph; };
    var clip = el("clipPath", { id: "scaling-area" }, el("defs", {}, svg));
    el("rect", { x: M.l, y: M.t, width: pw, height: ph }, clip);
    var grid = el("g", { class: "grid" }, svg);
    for (var k = Math.ceil(x0); k <= Math.floor(x1); k++) {
      var gx = sx(Math.pow(10, k));
      el("line", { x1: gx, x2: gx, y1: M.t, y2: M.t + ph, class: "major" }, grid);
      el("text", { x: gx, y: M.t + ph + 18, "text-anchor": "middle", class: "tick" }, grid, "1e" + k);
    }
    var step = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5].find(function (s) { return (y1 - y0) / s <= 8; }) || 1;
    for (var y = Math.ceil(y0 / step) * step; y <= y1; y += step) {
      el("line", { x1: M.l, x2: M.l + pw, y1: sy(y), y2: sy(y), class: "major" }, grid);
      el("text", { x: M.l - 8, y: sy(y) + 4, "text-anchor": "end", class: "tick" }, grid, y.toFixed(3));
    }
    el("rect", { x: M.l, y: M.t, width: pw, height: ph, class: "frame" }, svg);
    el("text", { x: M.l + pw / 2, y: H - 12, "text-anchor": "middle", class: "label" }, svg, S.axisLabel + " (log scale)");
    el("text", { x: 16, y: M.t + ph / 2, "text-anchor": "middle", class: "label",
      transform: "rotate(-90 16 " + (M.t + ph / 2) + ")" }, svg, DATA.quality + " (lower is better)");
    var plot = el("g", { "clip-path": "url(#scaling-area)" }, svg);
    el("line", { x1: sx(xStar), x2: sx(xStar), y1: M.t, y2: M.t + ph, class: "forecast-line" }, plot);
    var order = rows.slice(top).concat(rows.slice(0, top).reverse()); // faint first, the leader last (on top)
    order.forEach(function (r) {
      var i = rows.indexOf(r), lead = i < top, color = lead ? COLORS[i % COLORS.length] : "#9aa5b1";
      var g = el("g", { class: lead ? "group lead" : "group faint", "data-group": r.g.name }, plot);
      var first = r.g.runs[0].flops;
      if (lead && r.g.band.length) { // the band up to x*: the computed intervals, then x*'s own
        var pts = r.g.band.filter(function (b) { return b.flops < xStar * (1 - 1e-9); });
        if (r.interval) pts = pts.concat([{ flops: xStar, low: r.interval.low, high: r.interval.high }]);
        if (pts.length > 1) {
          var upper = pts.map(function (b) { return sx(b.flops) + "," + sy(b.high === null ? y1 + 10 : b.high); });
          var lower = pts.slice().reverse().map(function (b) { return sx(b.flops) + "," + sy(b.low === null ? y0 - 10 : b.low); });
          el("polygon", { points: upper.concat(lower).join(" "), class: "band", fill: color }, g);
        }
      }
      if (r.g.law) {
        var d = "", last = Math.max(xStar, r.g.runs[r.g.runs.length - 1].flops);
        for (var s = 0; s <= 80; s++) {
          var x = Math.exp(Math.log(first) + (Math.log(last) - Math.log(first)) * s / 80);
          d += (s ? " L" : "M") + sx(x).toFixed(2) + "," + sy(predict(r.g.law, x)).toFixed(2);
        }
        el("path", { d: d, class: "law", stroke: color }, g);
      }
      r.g.runs.forEach(function (p) {
        el("circle", { cx: sx(p.flops), cy: sy(p.bpb), r: lead ? 4.5 : 3, class: "point", fill: color }, g)
          .appendChild(el("title", {}, null, p.name + ": BPB " + p.bpb.toFixed(4) + " at " + flopsText(p.flops)));
      });
      if (lead && r.forecast !== null) {
        var fx = sx(xStar) + (i - (top - 1) / 2) * 5; // side by side, not on top of each other
        if (r.interval) {
          el("line", { x1: fx, x2: fx, y1: sy(r.interval.high === null ? y1 + 10 : r.interval.high),
            y2: sy(r.interval.low === null ? y0 - 10 : r.interval.low), class: "error-bar", stroke: color }, g);
        }
        el("circle", { cx: fx, cy: sy(r.forecast), r: 6, class: "forecast", fill: color }, g)
          .appendChild(el("title", {}, null, r.g.name + ": " + r.forecast.toFixed(4) + " at " + flopsText(xStar)));
      }
    });
    var legend = el("g", { class: "legend" }, svg), lx = M.l + pw - 430;
    el("rect", { x: lx - 8, y: M.t + 4, width: 436, height: 16 * (Math.min(top, rows.length) + 1) + 4,
      fill: "#ffffff", opacity: 0.85 }, legend);
    rows.slice(0, top).forEach(function (r, i) {
      var ly = M.t + 18 + i * 16, name = r.g.name.length > 52 ? "…" + r.g.name.slice(-51) : r.g.name;
      el("rect", { x: lx, y: ly - 9, width: 10, height: 10, fill: COLORS[i % COLORS.length] }, legend);
      el("text", { x: lx + 16, y: ly }, legend,
        (r.rank || "-") + ". " + name + (r.forecast === null ? "" : "  " + r.forecast.toFixed(4)));
    });
    el("text", { x: lx + 16, y: M.t + 18 + Math.min(top, rows.length) * 16 }, legend,
      rows.length > top ? (rows.length - top) + " other groups in grey; hover a row to find its group" : "");
  }

  function render() { var rows = ranked(); table(rows); chart(rows); }
  function setForecast() {
    var m = NUMBER.exec(input.value), x = m ? parseFloat(input.value) : NaN;
    if (!(x > 0) || !isFinite(x)) {
      error.textContent = "forecast FLOPs: a positive number such as 1e22, not \"" + input.value + "\"";
      error.hidden = false;
      return;
    }
    error.hidden = true;
    xStar = x;
    render();
  }
  input.addEventListener("change", setForecast);
  input.addEventListener("keydown", function (ev) { if (ev.key === "Enter") setForecast(); });
  topInput.addEventListener("change", render);
  render();
})();
