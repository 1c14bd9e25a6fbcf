// orbitmesh live map: equirectangular canvas fed by the server's event stream (or, in replay,
// by /api/frame?t=). Everything it loads comes from the orbitmesh server itself.
"use strict";
(function () {
  const canvas = document.getElementById("map");
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  const PALETTE = ["#4fc3f7", "#ffb74d", "#ba68c8", "#81c784", "#f06292", "#fff176", "#4db6ac", "#e57373"];
  const LINK_STYLE = ["rgba(120,170,255,0.35)", "rgba(255,230,120,0.6)", "rgba(180,255,180,0.6)"];
  const FLOW_STYLE = ["#ff4081", "#00e5ff", "#c6ff00", "#ff9100", "#ea80fc", "#ffffff"];
  const x = (lon) => (lon + 180) / 360 * W;
  const y = (lat) => (90 - lat) / 180 * H;
  let meta = null, land = null;
  const state = { satellites: 0, links: 0, flows: [], faults: [], t_s: null, renders: [], updates: 0,
                  paths_drawn: 0, errors: [] };
  window.orbitmeshState = state;

  function drawLand() {
    // Coastlines once into an offscreen canvas: each update only copies it.
    land = document.createElement("canvas");
    land.width = W; land.height = H;
    const c = land.getContext("2d");
    c.fillStyle = "#0e2238"; c.fillRect(0, 0, W, H);
    c.strokeStyle = "rgba(255,255,255,0.06)";
    for (let lon = -180; lon <= 180; lon += 30) { c.beginPath(); c.moveTo(x(lon), 0); c.lineTo(x(lon), H); c.stroke(); }
    for (let lat = -60; lat <= 60; lat += 30) { c.beginPath(); c.moveTo(0, y(lat)); c.lineTo(W, y(lat)); c.stroke(); }
    return fetch("/static/vendor/land-110m.json").then((r) => r.json()).then((topo) => {
      const geo = topojson.feature(topo, topo.objects.land);
      c.fillStyle = "#1d3a2a"; c.strokeStyle = "#5f8f6f"; c.lineWidth = 0.8;
      for (const f of geo.features) {
        const polys = f.geometry.type === "Polygon" ? [f.geometry.coordinates] : f.geometry.coordinates;
        for (const poly of polys) {
          c.beginPath();
          for (const ring of poly) {
            ring.forEach(([lon, lat], i) => (i ? c.lineTo(x(lon), y(lat)) : c.moveTo(x(lon), y(lat))));
            c.closePath();
          }
          c.fill("evenodd"); c.stroke();
        }
      }
    });
  }

  function lonlat(frame, node) {
    if (node < meta.n_satellites) return [frame.sat_lon_deg[node], frame.sat_lat_deg[node]];
    const g = node - meta.n_satellites;
    return [meta.ground_lon_deg[g], meta.ground_lat_deg[g]];
  }

  function segment(a, b) {
    if (a[0] === null || b[0] === null || Math.abs(a[0] - b[0]) > 180) return; // wraps: not drawn
    ctx.moveTo(x(a[0]), y(a[1])); ctx.lineTo(x(b[0]), y(b[1]));
  }

  function render(frame) {
    performance.mark("om-render-start");
    ctx.drawImage(land, 0, 0);
    const L = frame.links;
    for (let k = 0; k < 3; k++) {   // one path per link class: a few thousand segments per stroke
      ctx.beginPath(); ctx.strokeStyle = LINK_STYLE[k]; ctx.lineWidth = k === 0 ? 0.6 : 1;
      for (let i = 0; i < L.length; i += 3) if (L[i + 2] === k) segment(lonlat(frame, L[i]), lonlat(frame, L[i + 1]));
      ctx.stroke();
    }
    ctx.beginPath(); ctx.setLineDash([4, 3]); ctx.strokeStyle = "#ff5252"; ctx.lineWidth = 1.5;
    for (const [a, b] of frame.cut) segment(lonlat(frame, a), lonlat(frame, b));
    ctx.stroke(); ctx.setLineDash([]);
    let drawn = 0;
    frame.flows.forEach((f, i) => {
      if (f.path.length < 2) return;
      ctx.beginPath(); ctx.strokeStyle = FLOW_STYLE[i % FLOW_STYLE.length]; ctx.lineWidth = 3;
      for (let j = 1; j < f.path.length; j++) segment(lonlat(frame, f.path[j - 1]), lonlat(frame, f.path[j]));
      ctx.stroke(); drawn++;
    });
    const lat = frame.sat_lat_deg, lon = frame.sat_lon_deg;
    const byOp = new Map();
    for (let s = 0; s < lat.length; s++) {
      const op = meta.operator[s];
      if (!byOp.has(op)) byOp.set(op, []);
      byOp.get(op).push(s);
    }
    for (const [op, sats] of byOp) {
      ctx.fillStyle = PALETTE[op % PALETTE.length];
      for (const s of sats) if (lat[s] !== null) ctx.fillRect(x(lon[s]) - 1.5, y(lat[s]) - 1.5, 3, 3);
    }
    for (let g = 0; g < meta.ground_lat_deg.length; g++) {
      const node = meta.n_satellites + g, ops = meta.kind[node] === 2;
      ctx.fillStyle = PALETTE[meta.operator[node] % PALETTE.length];
      const px = x(meta.ground_lon_deg[g]), py = y(meta.ground_lat_deg[g]);
      if (ops) { ctx.fillRect(px - 5, py - 5, 10, 10); } else { ctx.beginPath(); ctx.arc(px, py, 4.5, 0, 7); ctx.fill(); }
      ctx.strokeStyle = "#000"; ctx.lineWidth = 1; ctx.stroke();
    }
    ctx.strokeStyle = "#ff1744"; ctx.lineWidth = 2;   // failed elements: a red cross
    for (const node of Object.keys(frame.down).map(Number)) {
      const [lo, la] = lonlat(frame, node);
      if (lo === null) continue;
      ctx.beginPath(); ctx.moveTo(x(lo) - 6, y(la) - 6); ctx.lineTo(x(lo) + 6, y(la) + 6);
      ctx.moveTo(x(lo) + 6, y(la) - 6); ctx.lineTo(x(lo) - 6, y(la) + 6); ctx.stroke();
    }
    performance.mark("om-render-end");
    const m = performance.measure("om-render", "om-render-start", "om-render-end");
    state.renders.push(m.duration);
    if (state.renders.length > 600) state.renders.shift();
    Object.assign(state, { satellites: lat.length, links: L.length / 3, flows: frame.flows,
                           faults: frame.faults, t_s: frame.t_s, paths_drawn: drawn, down: frame.down,
                           fidelity: frame.fidelity });
    state.updates++;
    canvas.dataset.satellites = lat.length; canvas.dataset.links = L.length / 3;
    canvas.dataset.t = frame.t_s; canvas.dataset.paths = drawn;
    panel(frame);
  }

  function spark(values, color, max) {
    const c = document.createElement("canvas"); c.width = 300; c.height = 28;
    const g = c.getContext("2d"); g.strokeStyle = color; g.beginPath();
    const top = max || Math.max(1e-9, ...values.filter((v) => v !== null));
    values.forEach((v, i) => {
      if (v === null) return;
      const px = i / Math.max(1, values.length - 1) * 300, py = 27 - v / top * 26;
      i && values[i - 1] !== null ? g.lineTo(px, py) : g.moveTo(px, py);
    });
    g.stroke(); return c;
  }

  function panel(frame) {
    const dur = frame.duration_s ? ` / ${frame.duration_s} s` : "";
    document.getElementById("clock").textContent = `t = ${frame.t_s.toFixed(1)} s${dur} (scenario)`;
    const fid = document.getElementById("fidelity");
    fid.textContent = "fidelity: " + frame.fidelity.text; fid.className = frame.fidelity.ok ? "ok" : "bad";
    const up = frame.links_up;
    document.getElementById("counts").textContent =
      `links up: ${up.isl} ISL, ${up.gsl} GSL, ${up.terrestrial} fibre · handovers ${frame.handovers}`;
    const flows = document.getElementById("flows"); flows.replaceChildren();
    frame.flows.forEach((f, i) => {
      const d = document.createElement("div"); d.className = "flow";
      const drops = Object.values(f.dropped).reduce((a, b) => a + b, 0);
      const last = f.history.length ? f.history[f.history.length - 1] : [0, null, null];
      // Offered and delivered come from different workers' heartbeats (0.5 s apart at most):
      // shown side by side, not as a ratio that could pass 100 %.
      d.textContent = `${f.name}: offered ${f.offered} · delivered ${f.delivered} · dropped ${drops}` +
        (last[2] !== null ? `, ${last[2].toFixed(1)} ms` : "") + (f.path.length ? "" : " — no route");
      d.style.color = FLOW_STYLE[i % FLOW_STYLE.length];
      d.append(spark(f.history.map((h) => h[1]), "#7bd88f", 1), spark(f.history.map((h) => h[2]), "#ffd54f"));
      flows.append(d);
    });
    const faults = document.getElementById("faults"); faults.replaceChildren();
    for (const f of frame.faults) {
      const li = document.createElement("li");
      li.textContent = `${f.id} ${f.kind} ${JSON.stringify(f.target)} ${f.active ? "ACTIVE" : "ended"}`;
      li.className = f.active ? "bad" : ""; faults.append(li);
    }
  }

  function replay() {
    document.getElementById("replay").hidden = false;
    const slider = document.getElementById("slider");
    slider.max = meta.end_s; slider.step = meta.tick_s;
    const label = document.getElementById("slider-t");
    const go = () => fetch(`/api/frame?t=${slider.value}`).then((r) => r.json()).then((frame) => {
      render(frame); label.textContent = `t = ${frame.t_s} s of ${meta.end_s} s`;
    });
    slider.addEventListener("input", go); go();
  }

  function live() {
    const events = new EventSource("/api/events");
    events.onmessage = (e) => render(JSON.parse(e.data));
    events.onerror = () => state.errors.push("event stream interrupted; retrying");
  }

  function control() {
    const form = document.getElementById("inject"); form.hidden = false;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      window.orbitmeshInject(document.getElementById("command").value);
    });
  }
  // Tests and users can inject through the same call the form uses.
  window.orbitmeshInject = (text) => fetch("/api/control", { method: "POST", body: text })
    .then((r) => r.json()).then((reply) => {
      document.getElementById("inject-result").textContent = reply.ok ? "sent" : "refused: " + reply.error;
      return reply;
    });

  fetch("/api/meta").then((r) => r.json()).then((m) => {
    meta = m;
    document.getElementById("title").textContent = `orbitmesh · ${m.scenario} · ${m.run_id}`;
    document.getElementById("legend").innerHTML = m.operators.map((op, i) =>
      `<span style="color:${PALETTE[i % PALETTE.length]}">■ ${op}</span>`).join("") +
      "<br>● station ■ ops centre · lines: ISL blue, GSL yellow, fibre green; thick: flow paths; red ✕: failed";
    return drawLand();
  }).then(() => {
    if (meta.control) control();
    if (meta.replay) replay(); else live();
  }).catch((err) => { state.errors.push(String(err)); });
})();
