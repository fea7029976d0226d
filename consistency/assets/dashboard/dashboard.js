// The vbs dashboard: polls GET /v1/status?volumes=false (the cluster's numbers, managers and
// nodes) and the volumes it shows from GET /v1/volumes, and renders them. With few volumes it
// shows every one; with many, those with a copy not current, and the others a page at a time
// on demand, so that an open page costs the managers little however many volumes there are.
// No framework, no build step.
//
// Elements carry stable data-* attributes for scripts and tests:
//   body[data-poll]      loading | ok | local (fell back to ?local=true) | failed (last poll failed)
//   body[data-updated]   when the shown data was fetched (ms since the epoch)
//   [data-manager=ID]    data-role = leader | follower | learner
//   [data-node=NAME]     data-state = up | down, data-draining = true | false
//   [data-copy=VOL/SLICE/NODE]  data-role = primary | secondary,
//                        data-status = current | stale | syncing | down
//   [data-volumes-shown] all (every volume) | attention (those not current) | listed (pages)
//   [data-list-more]     the button that lists (more) volumes
//   [data-volume=NAME] [data-scrub]  never | clean | repaired | problems (its last scrubs)
//   [data-device=NODE:DIR]  data-space = ok | nearfull | full (the managers' thresholds)
"use strict";

// Relative URLs: the page works through any manager, and behind a path prefix.
const STATUS_URL = "v1/status?volumes=false";
const LOCAL_STATUS_URL = "v1/status?volumes=false&local=true";
// Up to this many volumes the page shows every one; past it, those needing attention first.
const FEW_VOLUMES = 50;
// Volumes listed per click of "list more", up to the API's page limit.
const PAGE = 50;
const MAX_PAGE = 1000;
const POLL_INTERVAL_MS = 1000;
// A linearizable read waits up to the commit timeout (3 s by default) before it fails.
const REQUEST_TIMEOUT_MS = 5000;
// Data older than this is shown dimmed, with a warning.
const STALE_AFTER_MS = 5000;
// A heartbeat older than this is shown as late (nodes send one every second).
const LATE_HEARTBEAT_MS = 2500;
// Volumes with more slices list only the slices that are not healthy, and all of them on demand.
const MANY_SLICES = 64;

// The last answer shown, and the last failure (null after a success).
let shown = null;
let failure = null;
// Volumes whose list of every slice the reader unfolded.
const unfolded = new Set();
// How many volumes the reader asked to list beyond those needing attention (0: none).
let listing = 0;

// Which volumes to fetch for `status`: every one, those with a copy not current, or the first
// `listing` in name order. `null` url: nothing to fetch (no volume needs attention).
function volumesQuery(status) {
  if (status.counts.volumes <= FEW_VOLUMES) {
    return { mode: "all", url: `v1/volumes?limit=${FEW_VOLUMES}` };
  }
  if (listing > 0) {
    return { mode: "listed", url: `v1/volumes?limit=${Math.min(listing, MAX_PAGE)}` };
  }
  const c = status.counts.copies;
  const behind = c.stale + c.syncing + c.down;
  return { mode: "attention", url: behind > 0 ? `v1/volumes?status=not-current&limit=${PAGE}` : null };
}

// The cluster token, when the cluster requires one. It comes in the URL fragment (the page's
// address ending in /#token=TOKEN), which browsers never send to a server, is kept in this
// tab's sessionStorage, and is taken out of the address bar at once.
const TOKEN_KEY = "vbs-token";
const token = (() => {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const given = fragment.get("token");
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
})();

function esc(value) {
  return String(value)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

function bytes(n) {
  const units = [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]];
  for (const [unit, size] of units) {
    if (n >= size) {
      const value = n / size;
      return (n % size === 0 ? String(value) : value.toFixed(1)) + " " + unit;
    }
  }
  return n + " B";
}

// A duration, as `vbs status` prints it: 350ms, 4.2s, 3m10s, 2h05m.
function duration(ms) {
  if (ms < 1000) return Math.round(ms) + "ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + "s";
  const s = Math.floor(ms / 1000);
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

// How far a resync has got, by bytes (by records when it reports no bytes), rounded down.
function percent(progress) {
  const byBytes = progress.bytes_total > 0;
  const done = byBytes ? progress.bytes_done : progress.records_done;
  const total = byBytes ? progress.bytes_total : progress.records_total;
  if (total === 0) return progress.finished ? 100 : 0;
  return Math.min(100, Math.floor((done * 100) / total));
}

function resyncRunning(copy) {
  return copy.resync && !copy.resync.finished && (copy.status === "stale" || copy.status === "syncing");
}

// One GET; rejects with a one-line reason on a network error, a timeout or a non-2xx answer.
async function getJson(url) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
  try {
    const headers = { accept: "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const response = await fetch(url, { cache: "no-store", headers, signal: abort.signal });
    const text = await response.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch (_) {
      // Not JSON: reported below with the start of the text.
    }
    if (response.status === 401) {
      throw new Error(token
        ? "the cluster refused this page's token: open the page again as " +
          `${location.origin}${location.pathname}#token=TOKEN with the cluster's token`
        : "this cluster requires its token: open the page as " +
          `${location.origin}${location.pathname}#token=TOKEN`);
    }
    if (!response.ok) {
      const reason = body && body.error ? body.error : text.slice(0, 200);
      throw new Error(`HTTP ${response.status}: ${reason}`);
    }
    if (body === null) throw new Error("the answer is not JSON");
    return body;
  } catch (e) {
    if (e.name === "AbortError") throw new Error(`no answer within ${REQUEST_TIMEOUT_MS / 1000}s`);
    // fetch() rejects with a TypeError when no HTTP answer came at all.
    if (e instanceof TypeError) throw new Error(`no answer from the manager (${e.message})`);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

async function poll() {
  try {
    let status;
    let fallback = null;
    try {
      status = await getJson(STATUS_URL);
    } catch (linearizable) {
      fallback = linearizable.message;
      try {
        status = await getJson(LOCAL_STATUS_URL);
      } catch (local) {
        throw new Error(local.message === linearizable.message
          ? `${local.message} (?local=true too)`
          : `${linearizable.message}; ?local=true failed too: ${local.message}`);
      }
    }
    const query = volumesQuery(status);
    let volumes = { volumes: [], next: null };
    if (query.url !== null) {
      volumes = await getJson(query.url + (fallback === null ? "" : "&local=true"));
    }
    shown = { status, volumes: volumes.volumes, more: Boolean(volumes.next), mode: query.mode, at: Date.now(), fallback };
    failure = null;
  } catch (e) {
    failure = { message: e.message, at: Date.now() };
  }
  if (failure === null) {
    try {
      render();
    } catch (e) {
      // An answer this page does not understand, e.g. from a manager of another version.
      failure = { message: `the answer could not be shown (${e.message})`, at: Date.now() };
    }
  }
  renderFreshness();
  setTimeout(poll, POLL_INTERVAL_MS);
}

// The header's refresh line, the banner, and the stale marking; runs every second even while a
// poll hangs, so the page never looks fresher than it is.
function renderFreshness() {
  const now = Date.now();
  const body = document.body;
  const refresh = document.getElementById("refresh");
  const banner = document.getElementById("banner");
  const age = shown ? now - shown.at : null;
  const stale = !shown || age > STALE_AFTER_MS;
  body.dataset.poll = failure ? "failed" : shown ? (shown.fallback ? "local" : "ok") : "loading";
  body.classList.toggle("stale", shown !== null && stale);
  if (shown) body.dataset.updated = String(shown.at);

  if (shown) {
    refresh.textContent = stale
      ? `Not updated for ${duration(age)} (last update ${clock(shown.at)})`
      : `Updated ${clock(shown.at)} \u00b7 ${duration(age)} ago`;
  } else {
    refresh.textContent = failure ? "No status yet" : "Loading the cluster status\u2026";
  }

  let message = null;
  let error = false;
  if (failure) {
    error = true;
    message = `Cannot show GET /v1/status from this manager: ${failure.message}. ` +
      (shown
        ? `Showing the last answer, from ${clock(shown.at)} (${duration(now - shown.at)} ago).`
        : "Nothing to show yet; retrying every second.");
  } else if (shown && shown.fallback) {
    message = `The linearizable read failed (${shown.fallback}). Showing manager ` +
      `${shown.status.answered_by}'s own view (?local=true), which may lag the leader; heartbeat ` +
      "ages and resync progress are known only to the leader.";
  }
  banner.hidden = message === null;
  banner.classList.toggle("error", error);
  banner.textContent = message || "";
}

function render() {
  const status = shown.status;
  document.getElementById("summary").innerHTML = summary(status);
  document.getElementById("managers").innerHTML = managers(status);
  document.getElementById("nodes").innerHTML = nodes(status);
  renderVolumes();
}

function copyCounts(volumes) {
  const counts = { current: 0, syncing: 0, stale: 0, down: 0 };
  for (const volume of volumes) {
    for (const slice of volume.slices) {
      for (const copy of slice.copies) counts[copy.status] = (counts[copy.status] || 0) + 1;
    }
  }
  return counts;
}

function summary(status) {
  const chips = [];
  chips.push(status.leader === null || status.leader === undefined
    ? '<span class="chip bad"><b>no leader</b></span>'
    : `<span class="chip ok">leader <b>manager ${esc(status.leader)}</b></span>`);
  chips.push(`<span class="chip">term <b>${esc(status.term)}</b></span>`);
  chips.push(`<span class="chip">applied index <b>${esc(status.applied_index)}</b> ` +
    `on manager ${esc(status.answered_by)}</span>`);
  const up = status.nodes.filter((n) => n.state === "up").length;
  const nodeClass = up === status.nodes.length ? "ok" : up === 0 ? "bad" : "warn";
  chips.push(`<span class="chip ${nodeClass}">storage nodes <b>${up}/${status.nodes.length} up</b></span>`);
  chips.push(`<span class="chip">volumes <b>${status.counts.volumes}</b></span>`);
  const counts = status.counts.copies;
  const behind = counts.stale + counts.syncing + counts.down;
  const parts = ["current", "syncing", "stale", "down"]
    .filter((s) => s === "current" || counts[s] > 0)
    .map((s) => `<b>${counts[s]}</b> ${s}`);
  const copyClass = counts.down > 0 ? "bad" : behind > 0 ? "warn" : "ok";
  chips.push(`<span class="chip ${copyClass}">copies ${parts.join(", ")}</span>`);
  return chips.join("");
}

function managers(status) {
  if (status.managers.length === 0) return '<p class="empty">No managers listed.</p>';
  const rows = status.managers.map((m) => {
    const role = m.id === status.leader ? "leader" : m.voter ? "follower" : "learner";
    const notes = [];
    if (m.id === status.answered_by) notes.push("answered");
    if (m.addr === location.host) notes.push("this page");
    return `<tr data-manager="${esc(m.id)}" data-role="${role}">` +
      `<td class="num">${esc(m.id)}</td>` +
      `<td class="mono">${esc(m.addr)}</td>` +
      `<td><span class="badge ${role}">${role}</span></td>` +
      `<td class="muted">${esc(notes.join(", "))}</td></tr>`;
  });
  return "<table><thead><tr><th class=\"num\">Id</th><th>Address</th><th>Role</th><th></th>" +
    `</tr></thead><tbody>${rows.join("")}</tbody></table>`;
}

function nodes(status) {
  if (status.nodes.length === 0) {
    return '<p class="empty">No storage node has registered yet.</p>';
  }
  const rows = status.nodes.map((n) => {
    const badges = [`<span class="badge ${n.state}">${n.state}</span>`];
    if (n.draining) {
      const word = n.units.length === 0 ? "drained" : "draining";
      badges.push(`<span class="badge ${word}">${word}</span>`);
    }
    const used = Math.max(0, n.capacity_bytes - n.free_bytes);
    const usedPercent = n.capacity_bytes > 0 ? Math.min(100, (used * 100) / n.capacity_bytes) : 0;
    const heard = n.last_heartbeat_ms_ago;
    const heartbeat = heard === undefined || heard === null
      ? '<span class="muted" title="Only the leader knows heartbeat ages">&mdash;</span>'
      : `<span class="${heard > LATE_HEARTBEAT_MS ? "late" : ""}">${duration(heard)} ago</span>`;
    return `<tr data-node="${esc(n.id)}" data-state="${esc(n.state)}" data-draining="${n.draining}">` +
      `<td><b>${esc(n.id)}</b></td>` +
      `<td class="mono">${esc(n.addr)}</td>` +
      `<td>${badges.join(" ")}</td>` +
      `<td><div class="capacity"><progress class="${usedPercent > 90 ? "full" : ""}" ` +
      `max="100" value="${usedPercent.toFixed(1)}"></progress>` +
      `${bytes(n.free_bytes)} free of ${bytes(n.capacity_bytes)}</div>${devices(n, status.space)}</td>` +
      `<td class="num">${n.units.length}</td>` +
      `<td>${heartbeat}</td></tr>`;
  });
  return "<table><thead><tr><th>Node</th><th>Address</th><th>State</th><th>Capacity</th>" +
    "<th class=\"num\">Units</th><th>Last heartbeat</th></tr></thead>" +
    `<tbody>${rows.join("")}</tbody></table>`;
}

// Each data directory's filesystem, as the node last reported it to the leader; past the
// managers' nearfull threshold it is red, and says so (`data-space` = ok | nearfull | full).
function devices(node, space) {
  if (!node.devices || node.devices.length === 0) return "";
  const nearfull = space ? space.nearfull_percent : 85;
  const full = space ? space.full_percent : 95;
  return node.devices.map((d) => {
    const used = Math.max(0, d.total_bytes - d.free_bytes);
    const p = d.total_bytes > 0 ? Math.min(100, (used * 100) / d.total_bytes) : 0;
    const state = p >= full ? "full" : p >= nearfull ? "nearfull" : "ok";
    const cls = state === "ok" ? "" : "full";
    return `<div class="capacity device" data-device="${esc(node.id)}:${esc(d.dir)}" data-space="${state}" data-used-percent="${p.toFixed(1)}" ` +
      `title="${esc(d.dir)}: ${bytes(used)} used of ${bytes(d.total_bytes)}">` +
      `<progress class="${cls}" max="100" value="${p.toFixed(1)}"></progress>` +
      `<span class="mono">${esc(d.dir)}</span> ${bytes(d.free_bytes)} free` +
      (state === "ok" ? "" : ` &middot; <b>${state}</b>`) + `</div>`;
  }).join("");
}

// Healthy: every copy current, as many as the volume's replicas. Unavailable: no current copy.
function sliceHealth(volume, slice) {
  const current = slice.copies.filter((c) => c.status === "current").length;
  if (current === 0) return "unavailable";
  if (current < volume.replicas || current < slice.copies.length) return "degraded";
  return "healthy";
}

function resync(copy) {
  const r = copy.resync;
  if (!r) return "";
  const kind = r.full ? "full" : "incremental";
  if (!resyncRunning(copy)) {
    if (!r.finished) return "";
    return `<div class="resync">last ${kind} resync: ${bytes(r.bytes_total)} in ${duration(r.elapsed_ms)}</div>`;
  }
  const p = percent(r);
  const eta = r.eta_secs === undefined || r.eta_secs === null ? "ETA unknown" : `ETA ${duration(r.eta_secs * 1000)}`;
  return `<div class="resync" data-resync-percent="${p}">` +
    `<progress max="100" value="${p}"></progress>` +
    `${kind} resync <b>${p}%</b> &middot; ${bytes(r.bytes_done)} of ${bytes(r.bytes_total)} &middot; ` +
    `${bytes(r.bytes_per_sec)}/s &middot; ${eta}</div>`;
}

function copyChip(volume, slice, copy) {
  const role = copy.role === "primary" ? "P" : "S";
  const reported = copy.reported_vba === undefined || copy.reported_vba === null
    ? "" : `last VBA ${esc(copy.reported_vba)}, `;
  return `<div class="copy s-${esc(copy.status)}" data-copy="${esc(volume.name)}/${slice.index}/${esc(copy.node)}" ` +
    `data-role="${esc(copy.role)}" data-status="${esc(copy.status)}" ` +
    `title="${esc(copy.node)} at ${esc(copy.addr)}: ${esc(copy.role)}, ${esc(copy.status)}, ` +
    `${reported}VBA ${esc(copy.last_vba)} at its last status change">` +
    `<div class="line"><span class="role">${role}</span><span class="node">${esc(copy.node)}</span>` +
    `<span class="status">${esc(copy.status)}</span></div>${resync(copy)}</div>`;
}

const HEALTH_TEXT = {
  healthy: "ok",
  degraded: "degraded",
  unavailable: "no current copy",
};

function sliceTable(volume, slices) {
  const rows = slices.map((slice) => {
    const health = sliceHealth(volume, slice);
    return `<tr class="${health}" data-slice="${esc(volume.name)}/${slice.index}" data-health="${health}">` +
      '<td class="slice-mark"></td>' +
      `<td class="num">${slice.index}</td>` +
      `<td class="mono">${esc(slice.unit.volume)}.${esc(slice.unit.slice)}</td>` +
      `<td class="num">${esc(slice.generation)}</td>` +
      `<td><b>${esc(slice.primary)}</b></td>` +
      `<td class="health ${health}">${HEALTH_TEXT[health]}</td>` +
      `<td><div class="copies">${slice.copies.map((c) => copyChip(volume, slice, c)).join("")}</div></td></tr>`;
  });
  return '<table class="slices"><thead><tr><th class="slice-mark"></th><th class="num c-slice">Slice</th>' +
    '<th class="c-unit">Unit</th><th class="num c-generation">Generation</th>' +
    '<th class="c-primary">Primary</th><th class="c-health">Slice health</th>' +
    "<th>Copies (P primary, S secondary)</th></tr>" +
    `</thead><tbody>${rows.join("")}</tbody></table>`;
}

// The volume's last scrub: its oldest slice's, with what the scrubs found; the chip carries
// `data-scrub` = never | clean | repaired | problems.
function scrubChip(volume) {
  const last = volume.slices.map((slice) => {
    const done = slice.copies.map((c) => c.scrub).filter((s) => s);
    return done.sort((a, b) => b.finished_unix_ms - a.finished_unix_ms)[0];
  });
  const done = last.filter((s) => s);
  if (done.length === 0) return `<span class="chip" data-scrub="never">never scrubbed</span>`;
  const oldest = Math.min(...done.map((s) => s.finished_unix_ms));
  const repaired = done.reduce((n, s) => n + s.repaired, 0);
  const problems = done.reduce((n, s) => n + Math.max(0, s.damaged - s.repaired) + s.mismatched, 0);
  const kind = problems > 0 ? "problems" : repaired > 0 ? "repaired" : "clean";
  let text = `scrubbed ${duration(Math.max(0, Date.now() - oldest))} ago`;
  if (done.length < last.length) text += ` (${last.length - done.length} slices never)`;
  if (repaired > 0) text += ` &middot; ${repaired} repaired`;
  if (problems > 0) text += ` &middot; ${problems} NOT REPAIRED`;
  const cls = problems > 0 ? "bad" : repaired > 0 ? "warn" : "ok";
  return `<span class="chip ${cls}" data-scrub="${kind}">${text}</span>`;
}

// `open` says whether the volume's list of every slice is unfolded (many slices only).
function volumeSection(volume, open) {
  const counts = copyCounts([volume]);
  const total = counts.current + counts.syncing + counts.stale + counts.down;
  const health = counts.current === total
    ? `<span class="chip ok">all ${total} copies current</span>`
    : ["syncing", "stale", "down"]
      .filter((s) => counts[s] > 0)
      .map((s) => `<span class="chip ${s === "down" ? "bad" : "warn"}">${counts[s]} ${s}</span>`)
      .join(" ");
  const head = `<div class="volume-head"><span class="name">${esc(volume.name)}</span>` +
    `<span class="muted">id ${esc(volume.id)} &middot; ${bytes(volume.size_bytes)} &middot; ` +
    `${volume.slices.length} slice${volume.slices.length === 1 ? "" : "s"} of ${bytes(volume.slice_bytes)} ` +
    `&middot; ${esc(volume.replicas)} replicas</span>${health} ${scrubChip(volume)}</div>`;
  let slices;
  if (volume.slices.length <= MANY_SLICES) {
    slices = sliceTable(volume, volume.slices);
  } else {
    const unhealthy = volume.slices.filter((s) => sliceHealth(volume, s) !== "healthy");
    slices = unhealthy.length === 0
      ? `<p class="empty">All ${volume.slices.length} slices have every copy current.</p>`
      : `<p class="muted">${unhealthy.length} of ${volume.slices.length} slices need attention:</p>` +
        sliceTable(volume, unhealthy);
    slices += `<details data-volume-all="${esc(volume.name)}"${open ? " open" : ""}>` +
      `<summary>Every slice (${volume.slices.length})</summary>` +
      (open ? sliceTable(volume, volume.slices) : "") + "</details>";
  }
  return `<div class="volume" data-volume="${esc(volume.name)}">${head}${slices}</div>`;
}

function renderVolumes() {
  const volumes = shown.volumes.slice().sort((a, b) => a.name.localeCompare(b.name));
  const total = shown.status.counts.volumes;
  let head = "";
  let empty = '<p class="empty">No volumes. Create one with <code>vbs volume create NAME --size 1G</code>.</p>';
  let more = "";
  if (shown.mode === "attention") {
    head = `<p class="muted">${total} volumes: showing those with a copy not current ` +
      `(${volumes.length}${shown.more ? "+" : ""}).</p>`;
    empty = `<p class="empty">Every copy of all ${total} volumes is current.</p>`;
    more = `<button type="button" data-list-more>List the volumes, ${PAGE} at a time</button>`;
  } else if (shown.mode === "listed") {
    head = `<p class="muted">The first ${volumes.length} of ${total} volumes, by name.</p>`;
    if (shown.more && listing < MAX_PAGE) {
      more = `<button type="button" data-list-more>List ${PAGE} more</button>`;
    } else if (shown.more) {
      more = `<p class="muted">The rest: <code>vbs volume list</code>.</p>`;
    }
  }
  const element = document.getElementById("volumes");
  element.dataset.volumesShown = shown.mode;
  element.innerHTML = head +
    (volumes.length === 0 ? empty : volumes.map((v) => volumeSection(v, unfolded.has(v.name))).join("")) +
    more;
}

document.addEventListener("DOMContentLoaded", () => {
  // Unfolding a volume's list of every slice renders it at once rather than at the next poll.
  // A details element rendered open fires "toggle" too: only a change of state re-renders.
  document.getElementById("volumes").addEventListener("toggle", (event) => {
    const name = event.target.dataset.volumeAll;
    if (name === undefined || unfolded.has(name) === event.target.open) return;
    if (event.target.open) unfolded.add(name);
    else unfolded.delete(name);
    if (shown) renderVolumes();
  }, true);
  document.getElementById("volumes").addEventListener("click", (event) => {
    if (event.target.dataset.listMore === undefined) return;
    listing = Math.min(listing + PAGE, MAX_PAGE);
    event.target.disabled = true;
    event.target.textContent = "Loading\u2026";
  });
  setInterval(renderFreshness, 1000);
  poll();
});
