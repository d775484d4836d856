"use strict";
/* Dashboard: live event list (EventSource), event detail with evidence and disposition, camera health grid.
   Everything from the server is written with textContent (never innerHTML). */
(function () {
  var t = I18N.t;
  var MAX_ROWS = 500;
  var NEXT = {
    "new": ["acknowledge", "dispatch", "false_alarm"],
    "acknowledged": ["dispatch", "resolve", "false_alarm"],
    "dispatched": ["resolve", "false_alarm"],
    "resolved": ["reopen"],
    "false_alarm": ["reopen"]
  };
  var state = { me: null, events: new Map(), selected: null, cursor: null, cameras: new Map(), stations: [] };
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmtTime(s) {
    if (!s) return "–";
    var d = new Date(s);
    return d.toLocaleString(I18N.lang(), { hour12: false });
  }
  function fmtDwell(s) {
    var n = Math.round(Number(s) || 0);
    if (n < 120) return n + " " + t("seconds");
    var m = Math.floor(n / 60);
    return m + ":" + String(n % 60).padStart(2, "0");
  }
  function api(path, opts) {
    opts = opts || {};
    opts.credentials = "same-origin";
    opts.headers = Object.assign({ "X-Pingan-Csrf": "1" }, opts.headers || {});
    return fetch(path, opts).then(function (r) {
      if (r.status === 401) { location.href = "/login"; throw new Error("login"); }
      return r.json().then(function (body) {
        if (!r.ok) { var e = new Error(body.message || r.status); e.body = body; throw e; }
        return body;
      });
    });
  }

  /* ---- event list ---- */
  function rowFor(ev) {
    var tr = el("tr", { "data-event-id": ev.id, "data-disposition": ev.disposition });
    tr.appendChild(el("td", {}, fmtTime(ev.started_at)));
    tr.appendChild(el("td", {}, t("type." + ev.type)));
    tr.appendChild(el("td", {}, ev.camera_name || ev.camera_id));
    tr.appendChild(el("td", {}, ev.zone_id || "–"));
    tr.appendChild(el("td", {}, fmtDwell(ev.dwell_s)));
    tr.appendChild(el("td", {}, t("state." + ev.state)));
    var td = el("td");
    td.appendChild(el("span", { "class": "badge " + ev.disposition }, t("disp." + ev.disposition)));
    if (ev.escalated_at) {  // unacknowledged past its SLA (api.sla)
      td.appendChild(el("span", { "class": "badge escalated", "data-escalated": "1", title: fmtTime(ev.escalated_at) },
        t("escalated")));
    }
    tr.appendChild(td);
    if (ev.id === state.selected) tr.classList.add("selected");
    tr.addEventListener("click", function () { select(ev.id); });
    return tr;
  }
  function filters() {
    return { type: $("f-type").value, disposition: $("f-disposition").value, camera_id: $("f-camera").value };
  }
  function matches(ev) {
    var f = filters();
    return (!f.type || ev.type === f.type) && (!f.disposition || ev.disposition === f.disposition) &&
      (!f.camera_id || ev.camera_id === f.camera_id);
  }
  function upsert(ev, fresh) {
    if (!matches(ev)) {  // filtered out (or no longer matching after a disposition)
      var gone = $("events").querySelector('tr[data-event-id="' + ev.id + '"]');
      if (gone) gone.parentNode.removeChild(gone);
      state.events.delete(ev.id);
      $("empty").hidden = state.events.size > 0;
      return;
    }
    var known = state.events.has(ev.id);
    state.events.set(ev.id, ev);
    var body = $("events");
    var old = body.querySelector('tr[data-event-id="' + ev.id + '"]');
    var tr = rowFor(ev);
    if (old) { body.replaceChild(tr, old); }
    else if (fresh) { body.insertBefore(tr, body.firstChild); }
    else { body.appendChild(tr); }
    if (fresh && !known) tr.classList.add("fresh");
    while (body.rows.length > MAX_ROWS) {  // a long shift must not grow the page without bound
      var last = body.rows[body.rows.length - 1];
      state.events.delete(last.getAttribute("data-event-id"));
      body.removeChild(last);
      $("more").hidden = false;
    }
    $("empty").hidden = state.events.size > 0;
  }
  function loadList(reset) {
    var params = new URLSearchParams({ limit: "50" });
    var f = filters();
    Object.keys(f).forEach(function (k) { if (f[k]) params.set(k, f[k]); });
    if (!reset && state.cursor) params.set("cursor", state.cursor);
    var q = "/api/events?" + params.toString();
    return api(q).then(function (page) {
      if (reset) { $("events").textContent = ""; state.events.clear(); }
      page.items.forEach(function (ev) { upsert(ev, false); });
      state.cursor = page.next_cursor;
      $("more").hidden = !page.next_cursor;
      $("empty").hidden = state.events.size > 0;
    });
  }

  /* ---- detail ---- */
  function select(id) {
    state.selected = id;
    document.querySelectorAll("#events tr").forEach(function (tr) {
      tr.classList.toggle("selected", tr.getAttribute("data-event-id") === id);
    });
    return api("/api/events/" + encodeURIComponent(id)).then(renderDetail);
  }
  function field(dl, key, value) {
    dl.appendChild(el("dt", {}, t(key)));
    dl.appendChild(el("dd", { "data-field": key }, value));
  }
  function renderDetail(ev) {
    if (ev.id !== state.selected) return;
    $("detail-empty").hidden = true;
    $("detail-body").hidden = false;
    $("detail").setAttribute("data-event-id", ev.id);
    var dl = $("detail-fields");
    dl.textContent = "";
    field(dl, "type", t("type." + ev.type));
    field(dl, "camera", ev.camera_name || ev.camera_id);
    field(dl, "zone", ev.zone_id || "–");
    field(dl, "grid", ev.grid || "–");
    field(dl, "started", fmtTime(ev.started_at));
    field(dl, "ended", fmtTime(ev.ended_at));
    field(dl, "dwell", fmtDwell(ev.dwell_s));
    field(dl, "state", t("state." + ev.state));
    field(dl, "disposition", t("disp." + ev.disposition));
    if (ev.escalated_at) field(dl, "escalated", fmtTime(ev.escalated_at));
    var plate = ev.object && ev.object.plate;
    if (plate) field(dl, "plate", plate.text);
    var evid = $("evidence");
    evid.textContent = "";
    ev.evidence.forEach(function (e) {
      if (!e.url) return;
      var img = el("img", { src: e.url, alt: e.name, title: e.kind + " · " + fmtTime(e.taken_at) });
      evid.appendChild(img);
    });
    var hist = $("history");
    hist.textContent = "";
    (ev.history || []).forEach(function (h) {
      var li = el("li", { "data-action": h.action, "data-to": h.to_state || "" });
      li.textContent = fmtTime(h.at) + " · " + h.actor + " · " + t("disp." + h.from_state) + " → " +
        t("disp." + h.to_state) + (h.remark ? " · " + h.remark : "");
      hist.appendChild(li);
    });
    var pack = $("pack");
    var canExport = !!state.me;  // police, admins and (within their scope) operators export packs
    pack.hidden = !(canExport && ev.type === "illegal_parking");
    pack.setAttribute("href", "/api/violations/" + encodeURIComponent(ev.id) + "/pack");
    var canAct = state.me && (state.me.role === "operator" || state.me.role === "admin");
    $("actions").hidden = !canAct;
    var buttons = $("action-buttons");
    buttons.textContent = "";
    if (canAct) {
      (NEXT[ev.disposition] || []).forEach(function (action) {
        var b = el("button", { type: "button", "data-action": action }, t("act." + action));
        b.addEventListener("click", function () { act(ev.id, action); });
        buttons.appendChild(b);
      });
    }
  }
  function act(id, action) {
    var remark = $("remark").value.trim();
    $("action-error").hidden = true;
    api("/api/events/" + encodeURIComponent(id) + "/disposition", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ action: action, remark: remark || null })
    }).then(function (out) {
      $("remark").value = "";
      upsert(out.event, false);
      return select(id);
    }).catch(function (err) {
      $("action-error").textContent = t("error") + ": " + err.message;
      $("action-error").hidden = false;
    });
  }

  /* ---- cameras ---- */
  function renderCamera(c) {
    state.cameras.set(c.id, c);
    var grid = $("cameras");
    var tile = el("div", { "class": "cam " + c.health, "data-camera-id": c.id, "data-health": c.health });
    tile.appendChild(el("strong", {}, c.name));
    tile.appendChild(el("small", {}, t("health." + c.health) + (c.fps ? " · " + c.fps.toFixed(1) + " fps" : "")));
    var s = c.stats || {};
    if (c.health === "behind") {  // the box carries more cameras than its detector serves: say how far behind
      var lag = [];
      if (s.result_age_ms != null) lag.push(t("lag.age") + " " + (s.result_age_ms / 1000).toFixed(1) + " s");
      if (s.shed_share != null) lag.push(t("lag.shed") + " " + Math.round(s.shed_share * 100) + "%");
      tile.title = t("lag.hint");
      if (lag.length) tile.appendChild(el("small", { "class": "lag" }, lag.join(" · ")));
    }
    if (s.decode === "every_frame") {  // keyframes too seldom: this camera costs ~4x a keyframe-only one
      var every = t("decode.every") + (s.keyframe_interval_s != null ? " " + s.keyframe_interval_s.toFixed(1) + " s" : "");
      tile.appendChild(el("small", { "class": "decode-every", "title": t("decode.hint") }, every));
    }
    if (c.reason) tile.appendChild(el("small", {}, c.reason));
    var old = grid.querySelector('[data-camera-id="' + c.id + '"]');
    if (old) grid.replaceChild(tile, old); else grid.appendChild(tile);
  }
  function loadCameras() {
    if (!state.me || state.me.role === "police") {  // police: parking only, no camera health
      $("cameras-panel").hidden = true; $("f-camera").hidden = true; $("f-type").hidden = true;
      return Promise.resolve();
    }
    return api("/api/cameras").then(function (list) {
      $("cameras").textContent = "";
      list.forEach(renderCamera);
      var sel = $("f-camera");
      if (sel.options.length === 1) {
        list.forEach(function (c) { sel.appendChild(el("option", { value: c.id }, c.name)); });
      }
    });
  }

  /* ---- bin stations ---- */
  function renderStations() {
    var box = $("stations");
    box.textContent = "";
    state.stations.forEach(function (s) {
      var tile = el("div", { "class": "station " + s.state, "data-station": s.camera_id + "/" + s.zone_id,
        "data-state": s.state });
      tile.appendChild(el("strong", {}, s.zone_id));
      tile.appendChild(el("small", {}, s.camera_name || s.camera_id));
      var line = t("station." + s.state);
      if (s.event) line += " · " + t("severity") + " " + s.event.severity + " · " + fmtTime(s.event.started_at);
      var st = el("small", {}, line);
      if (s.event && s.event.escalated_at) st.appendChild(el("span", { "class": "badge escalated" }, t("escalated")));
      tile.appendChild(st);
      if (s.bin_ids.length) tile.appendChild(el("small", {}, t("bins") + " " + s.bin_ids.join(", ")));
      if (s.event) tile.addEventListener("click", function () { select(s.event.id); });
      box.appendChild(tile);
    });
    $("stations-panel").hidden = state.stations.length === 0;
  }
  var stationsTimer = null;
  function loadStations() {
    if (!state.me || state.me.role === "police") return Promise.resolve();
    return api("/api/bin-stations").then(function (list) { state.stations = list; renderStations(); });
  }
  function stationsSoon() {  // coalesce a burst of bin events into one reload
    if (stationsTimer) return;
    stationsTimer = setTimeout(function () { stationsTimer = null; loadStations(); }, 300);
  }

  /* ---- live ---- */
  function connect() {
    var es = new EventSource("/api/events/stream");
    var first = true;
    es.onopen = function () {
      $("conn").className = "conn up"; $("conn").setAttribute("data-i18n", "live"); $("conn").textContent = t("live");
      if (!first) { loadList(true); loadCameras(); loadStations(); }  // catch up on what a reconnect missed
      first = false;
    };
    es.onerror = function () {
      $("conn").className = "conn down"; $("conn").setAttribute("data-i18n", "offline");
      $("conn").textContent = t("offline");
    };
    es.addEventListener("event", function (m) {
      var ev = JSON.parse(m.data);
      upsert(ev, true);
      refreshSelected(ev.id);
      if (ev.type === "bin_overflow") stationsSoon();
    });
    es.addEventListener("escalation", function (m) {
      var d = JSON.parse(m.data);
      upsert(d.event, false);
      refreshSelected(d.event.id);
      if (d.event.type === "bin_overflow") stationsSoon();
    });
    es.addEventListener("disposition", function (m) {
      var d = JSON.parse(m.data);
      upsert(d.event, false);
      refreshSelected(d.event.id);
    });
    es.addEventListener("camera", function (m) { renderCamera(JSON.parse(m.data)); });
    es.addEventListener("parking", function (m) {  // for panels.js (parking availability)
      document.dispatchEvent(new CustomEvent("pingan:parking", { detail: JSON.parse(m.data) }));
    });
    es.addEventListener("bye", function () { es.close(); setTimeout(connect, 3000); });
    window.pinganStream = es;
  }
  function refreshSelected(id) { if (id === state.selected) select(id); }

  function rerender() {
    var body = $("events");
    var rows = Array.from(body.querySelectorAll("tr")).map(function (tr) { return tr.getAttribute("data-event-id"); });
    body.textContent = "";
    rows.forEach(function (id) { var ev = state.events.get(id); if (ev) body.appendChild(rowFor(ev)); });
    state.cameras.forEach(renderCamera);
    renderStations();
    if (state.me) $("who").textContent = state.me.username + " · " + t("role." + state.me.role);
    if (state.selected) select(state.selected);
  }

  document.getElementById("lang").addEventListener("click", function () { I18N.toggle(); });
  document.getElementById("more").addEventListener("click", function () { loadList(false); });
  ["f-type", "f-disposition", "f-camera"].forEach(function (id) {
    $(id).addEventListener("change", function () { loadList(true); });
  });
  document.addEventListener("langchange", rerender);
  $("remark").setAttribute("placeholder", t("remark"));
  I18N.apply(document);
  api("/api/me").then(function (me) {
    state.me = me;
    $("who").textContent = me.username + " · " + t("role." + me.role);
    return Promise.all([loadList(true), loadCameras(), loadStations()]);
  }).then(function () {
    // The live feed is the security room's: police pull violations (list, packs), they never get the feed.
    if (state.me && state.me.role === "police") {
      $("conn").className = "conn down"; $("conn").setAttribute("data-i18n", "nolive"); $("conn").textContent = t("nolive");
      return;
    }
    connect();
  });
})();
