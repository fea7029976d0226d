// What the cluster is doing: client IO charts per storage node and per volume (GET /v1/io, the
// leader's last 15 minutes) and the latest entries of the event log (GET /v1/events). Loaded
// after dashboard.js, whose helpers (getJson, esc, bytes, clock) it uses. Charts are plain SVG.
//
// Elements carry stable data-* attributes for scripts and tests:
//   #io[data-io-updated]        when the IO history was last fetched (ms since the epoch)
//   [data-io=node:ID|volume:NAME]  one series; data-points = steps with IO in the window,
//                               data-last-iops = reads + writes per second in its last step
//   [data-event=SEQ]            one event log entry; data-kind = its kind
"use strict";

const IO_URL = "v1/io";
const IO_POLL_MS = 5000;
const EVENTS_POLL_MS = 2000;
// Event log entries shown, newest first.
const EVENTS_SHOWN = 25;
const CHART_W = 180;
const CHART_H = 40;

// The chart of one quantity: `series` is a list of [values, css class]; values are one per step,
// null where nothing was measured. Scaled to the largest value; the last one is written out.
function chart(series, format, label) {
  const all = series.flatMap(([values]) => values.filter((v) => v !== null));
  const max = Math.max(...all, 0);
  const scale = max > 0 ? (CHART_H - 4) / max : 0;
  // A step chart: each value spans its step, so a single step with IO shows too.
  const lines = series.map(([values, cls]) => {
    const step = CHART_W / Math.max(values.length, 1);
    let path = "";
    let pen = false;
    values.forEach((v, i) => {
      if (v === null) {
        pen = false;
        return;
      }
      const y = (CHART_H - 2 - v * scale).toFixed(1);
      path += `${pen ? "L" : "M"}${(i * step).toFixed(1)} ${y}L${((i + 1) * step).toFixed(1)} ${y}`;
      pen = true;
    });
    return path ? `<path class="${cls}" d="${path}"/>` : "";
  });
  const last = series.map(([values]) => values[values.length - 1]);
  const now = last.every((v) => v === null) ? "&mdash;" : last.map((v) => (v === null ? "-" : format(v))).join(" / ");
  return `<div class="chart"><div class="chart-label">${label} <b>${now}</b></div>` +
    `<svg viewBox="0 0 ${CHART_W} ${CHART_H}" width="${CHART_W}" height="${CHART_H}" ` +
    `preserveAspectRatio="none" role="img" aria-label="${label}">` +
    `<line class="axis" x1="0" y1="${CHART_H - 1}" x2="${CHART_W}" y2="${CHART_H - 1}"/>` +
    `${lines.join("")}</svg><div class="chart-scale">max ${format(max)}</div></div>`;
}

// One step per slot of the window, ending at the last closed step.
function dense(history, points, pick, idle) {
  const steps = Math.round(history.window_ms / history.step_ms);
  const last = Math.floor(history.now_ms / history.step_ms) - 1;
  const values = new Array(steps).fill(idle);
  for (const p of points) {
    const slot = steps - 1 - (last - Math.floor(p.t_ms / history.step_ms));
    if (slot >= 0 && slot < steps) values[slot] = pick(p);
  }
  return values;
}

function ioRow(history, kind, series) {
  const d = (pick, idle = 0) => dense(history, series.points, pick, idle);
  const iops = (v) => (v >= 100 ? Math.round(v) : v.toFixed(1));
  const rate = (v) => `${bytes(Math.round(v))}/s`;
  const ms = (us) => (us >= 1000 ? `${(us / 1000).toFixed(1)}ms` : `${Math.round(us)}us`);
  const lastPoint = series.points[series.points.length - 1];
  const lastIops = lastPoint ? lastPoint.read_iops + lastPoint.write_iops : 0;
  const active = series.points.filter((p) => p.read_iops + p.write_iops > 0).length;
  return `<tr data-io="${kind}:${esc(series.name)}" data-points="${active}" data-last-iops="${lastIops}">` +
    `<td><b>${esc(series.name)}</b></td>` +
    `<td>${chart([[d((p) => p.read_iops), "read"], [d((p) => p.write_iops), "write"]], iops, "IOPS r/w")}</td>` +
    `<td>${chart([[d((p) => p.read_bytes_per_sec), "read"], [d((p) => p.write_bytes_per_sec), "write"]], rate, "r/w")}</td>` +
    `<td>${chart([[d((p) => (p.p99_us === undefined ? null : p.p99_us), null), "p99"]], ms, "p99")}</td></tr>`;
}

function ioTable(history, kind, list, what) {
  if (list.length === 0) return `<p class="empty">No ${what} served client IO in the last 15 minutes.</p>`;
  return `<table class="io"><thead><tr><th>${kind === "node" ? "Node" : "Volume"}</th>` +
    "<th>IOPS (read / write)</th><th>Throughput (read / write)</th><th>Latency p99</th></tr></thead>" +
    `<tbody>${list.map((s) => ioRow(history, kind, s)).join("")}</tbody></table>`;
}

async function pollIo() {
  const element = document.getElementById("io");
  try {
    const history = await getJson(IO_URL);
    element.innerHTML = "<h3>Storage nodes</h3>" + ioTable(history, "node", history.nodes, "storage node") +
      "<h3>Volumes</h3>" + ioTable(history, "volume", history.volumes, "volume") +
      `<p class="muted">Steps of ${history.step_ms / 1000}s, as the leader received them; ` +
      "a new leader starts an empty history.</p>";
    element.dataset.ioUpdated = String(Date.now());
  } catch (e) {
    element.innerHTML = `<p class="empty">IO history unavailable: ${esc(e.message)}</p>`;
  }
  setTimeout(pollIo, IO_POLL_MS);
}

// The entries shown, newest first, and the cursor after the newest.
let events = [];
let eventsAfter = null;

function eventText(event) {
  const e = event;
  const slice = () => `slice ${esc(e.unit.volume)}.${esc(e.unit.slice)} of <b>${esc(e.volume)}</b>`;
  switch (e.kind) {
    case "node_registered": return `node <b>${esc(e.node)}</b> registered at ${esc(e.addr)}`;
    case "node_up": return `node <b>${esc(e.node)}</b> up; ${esc(e.copies_stale)} copies to catch up`;
    case "node_down": return `node <b>${esc(e.node)}</b> down; ${esc(e.copies_down)} copies down with it`;
    case "failover": return `failover of ${slice()}: ${esc(e.from)} &rarr; <b>${esc(e.to)}</b>, generation ${esc(e.generation)}`;
    case "slice_unavailable": return `${slice()} unavailable: primary ${esc(e.primary)} down, no current copy`;
    case "copy_status": return `copy of ${slice()} on ${esc(e.node)}: ${esc(e.from)} &rarr; <b>${esc(e.to)}</b>`;
    case "copy_added": return `new copy of ${slice()} on <b>${esc(e.node)}</b>`;
    case "copy_removed": return `copy of ${slice()} on ${esc(e.node)} removed`;
    case "volume_created": return `volume <b>${esc(e.volume)}</b> created, ${bytes(e.size_bytes)}`;
    case "volume_resized": return `volume <b>${esc(e.volume)}</b> grown to ${bytes(e.size_bytes)}`;
    case "volume_deleted": return `volume <b>${esc(e.volume)}</b> deleted`;
    case "drain_started": return `drain of node <b>${esc(e.node)}</b> started`;
    case "drain_stopped": return `drain of node <b>${esc(e.node)}</b> stopped`;
    case "loss_accepted": return `loss accepted for ${slice()}: <b>${esc(e.node)}</b> serves as it is, ending at VBA ${esc(e.last_vba)} (the database had ${esc(e.recorded_vba)})`;
    default: return esc(e.kind);
  }
}

const WARNING_KINDS = new Set(["node_down", "slice_unavailable", "loss_accepted"]);

function renderEvents() {
  const element = document.getElementById("events");
  if (events.length === 0) {
    element.innerHTML = '<p class="empty">No events yet.</p>';
    return;
  }
  const rows = events.map((e) => `<tr data-event="${esc(e.seq)}" data-kind="${esc(e.kind)}"` +
    `${WARNING_KINDS.has(e.kind) ? ' class="warning"' : ""}>` +
    `<td class="mono">${e.at_ms > 0 ? clock(e.at_ms) : "&mdash;"}</td>` +
    `<td>${eventText(e)}</td><td class="muted">${esc(e.cause || "")}</td></tr>`);
  element.innerHTML = "<table><thead><tr><th>Time</th><th>What changed</th><th>Why</th></tr></thead>" +
    `<tbody>${rows.join("")}</tbody></table>` +
    '<p class="muted">All of them: <code>vbs events</code>, or <code>vbs events --follow</code>.</p>';
}

async function pollEvents() {
  try {
    if (eventsAfter === null) {
      const probe = await getJson("v1/events?limit=1");
      eventsAfter = Math.max(0, probe.newest - EVENTS_SHOWN);
    }
    const page = await getJson(`v1/events?after=${eventsAfter}&limit=${EVENTS_SHOWN}`);
    if (page.events.length > 0 || events.length === 0) {
      events = page.events.slice().reverse().concat(events).slice(0, EVENTS_SHOWN);
      eventsAfter = page.next;
      renderEvents();
    }
  } catch (e) {
    document.getElementById("events").innerHTML = `<p class="empty">Event log unavailable: ${esc(e.message)}</p>`;
  }
  setTimeout(pollEvents, EVENTS_POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  pollIo();
  pollEvents();
});
