"use strict";
/* Dashboard: parking availability (lots with free counts; a lot's last-24-h free curve as inline SVG) and the
   link to the per-bin statistics CSV (in the bin stations panel of app.js). Live updates come from app.js's
   EventSource, re-dispatched as "pingan:parking" document events. */
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var SVG = "http://www.w3.org/2000/svg";
  var zh = function () { return I18N.lang() === "zh-CN"; };
  var lots = new Map();      // lot id -> lot (GET /api/parking)
  var chartLot = null;

  function get(path) {
    return fetch(path, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error(String(r.status));
      return r.json();
    });
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---- parking --------------------------------------------------------------------------------------------
  function renderLots() {
    var box = $("parking");
    box.textContent = "";
    lots.forEach(function (lot) {
      var d = el("div", "cam lot " + (lot.free > 0 ? "ok" : "offline"));
      d.setAttribute("data-lot", lot.lot);
      d.appendChild(el("strong", null, lot.name || lot.lot));
      d.appendChild(el("span", "free", " " + lot.free + " / " + lot.capacity + (zh() ? " 空位" : " free")));
      var bays = el("small");
      bays.textContent = lot.bays.map(function (b) {
        return b.zone_id + ": " + (b.stale ? "?" : b.free + "/" + b.capacity);
      }).join("  ");
      d.appendChild(bays);
      d.addEventListener("click", function () { chart(lot.lot); });
      box.appendChild(d);
    });
    $("parking-panel").hidden = lots.size === 0;
  }

  function loadParking() {
    return get("/api/parking").then(function (body) {
      lots = new Map(body.lots.map(function (l) { return [l.lot, l]; }));
      renderLots();
      if (chartLot === null && lots.size) chart(lots.keys().next().value);
    }).catch(function () { $("parking-panel").hidden = true; });
  }

  function onBay(bay) {
    var lot = lots.get(bay.camera_id);
    if (!lot) { loadParking(); return; }
    var i = lot.bays.findIndex(function (b) { return b.zone_id === bay.zone_id; });
    if (i < 0) { loadParking(); return; }
    lot.bays[i] = bay;
    var live = lot.bays.filter(function (b) { return !b.stale; });
    lot.free = live.reduce(function (s, b) { return s + b.free; }, 0);
    lot.occupied = live.reduce(function (s, b) { return s + b.occupied; }, 0);
    renderLots();
    if (chartLot === bay.camera_id) chart(chartLot);
  }

  // the lot's free spaces over the last 24 h: the sum over its bays of each bay's step curve
  function chart(lotId) {
    chartLot = lotId;
    var lot = lots.get(lotId);
    if (!lot) return;
    var until = new Date(), since = new Date(until.getTime() - 24 * 3600 * 1000);
    var q = "?since=" + encodeURIComponent(since.toISOString()) + "&until=" + encodeURIComponent(until.toISOString());
    Promise.all(lot.bays.map(function (b) {
      return get("/api/parking/" + encodeURIComponent(lotId) + "/" + encodeURIComponent(b.zone_id) + "/history" + q)
        .then(function (h) { return h.points; }).catch(function () { return []; });
    })).then(function (curves) { draw(lot, curves, since.getTime(), until.getTime()); });
  }

  function freeAt(points, t) {
    var v = null;
    for (var i = 0; i < points.length && Date.parse(points[i].at) <= t; i++) v = points[i].free;
    return v;
  }

  function draw(lot, curves, t0, t1) {
    var W = 480, H = 120, P = 24, cap = Math.max(1, lot.capacity);
    var times = [t0, t1];
    curves.forEach(function (pts) { pts.forEach(function (p) { var t = Date.parse(p.at); if (t > t0 && t < t1) times.push(t); }); });
    times.sort(function (a, b) { return a - b; });
    var x = function (t) { return P + (W - 2 * P) * (t - t0) / (t1 - t0); };
    var y = function (v) { return H - P - (H - 2 * P) * v / cap; };
    var d = [], last = null;
    times.forEach(function (t) {
      var known = curves.map(function (pts) { return freeAt(pts, t); }).filter(function (v) { return v !== null; });
      if (!known.length) return;
      var v = known.reduce(function (s, n) { return s + n; }, 0);
      if (last !== null) d.push("L" + x(t).toFixed(1) + "," + y(last).toFixed(1));
      d.push((d.length ? "L" : "M") + x(t).toFixed(1) + "," + y(v).toFixed(1));
      last = v;
    });
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("class", "chart");
    svg.setAttribute("role", "img");
    var axis = document.createElementNS(SVG, "path");
    axis.setAttribute("d", "M" + P + "," + P + "V" + (H - P) + "H" + (W - P));
    axis.setAttribute("class", "axis");
    svg.appendChild(axis);
    var line = document.createElementNS(SVG, "path");
    line.setAttribute("d", d.join(" ") || "M0,0");
    line.setAttribute("class", "line");
    svg.appendChild(line);
    [[P - 4, y(cap) + 4, String(cap)], [P - 4, y(0), "0"], [P, H - 6, "-24h"], [W - P, H - 6, zh() ? "现在" : "now"]]
      .forEach(function (a) {
        var tx = document.createElementNS(SVG, "text");
        tx.setAttribute("x", a[0]); tx.setAttribute("y", a[1]);
        tx.setAttribute("text-anchor", a[0] < W / 2 && a[2] !== "-24h" ? "end" : "middle");
        tx.textContent = a[2];
        svg.appendChild(tx);
      });
    var box = $("parking-chart");
    box.textContent = "";
    box.appendChild(el("div", "muted", (lot.name || lot.lot) + (zh() ? " · 近24小时空位" : " · free spaces, last 24 h")));
    box.appendChild(svg);
  }

  document.addEventListener("pingan:parking", function (e) { onBay(e.detail); });
  document.addEventListener("langchange", function () { renderLots(); if (chartLot) chart(chartLot); });
  get("/api/me").then(function (me) {
    if (me.role === "police") return;  // parking and bin statistics are for the security room
    var panel = $("stations-panel");  // app.js's bin stations panel, when there is one
    var csv = el("a", null, I18N.t("bins_csv"));
    csv.id = "bins-csv";
    csv.setAttribute("data-i18n", "bins_csv");
    if (panel) panel.appendChild(csv);
    var until = new Date(), since = new Date(until.getTime() - 30 * 86400 * 1000);
    csv.href = "/api/bins/stats.csv?since=" + encodeURIComponent(since.toISOString()) + "&until=" + encodeURIComponent(until.toISOString());
    loadParking();
  }).catch(function () {});
})();
