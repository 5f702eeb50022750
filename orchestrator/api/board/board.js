/* agogd's pipeline board: REQs are rows, the pipeline's stages are columns.
 *
 * Data (orchestrator/api.py):
 *   GET /api/reqs?status=...&limit=200   rows, each with a cell per stage, and the stages
 *   GET /api/reqs/{req}?events=0         one row again (after one of its events)
 *   GET /api/reqs/{req}                  the whole history, for the side panel (with
 *                                        its branch and each attempt's commit, AGOG_REPO)
 *   GET /api/events                      server-sent events; each names its REQ
 *
 * Each event patches its cell at once (the event's status), then the REQ's
 * row is fetched again, so the board never drifts from the database. After
 * a reconnect ("ready" again) or a "lagged" event, every row is fetched again.
 * Plain JS, no dependencies; text goes through textContent, never innerHTML.
 */
(() => {
  "use strict";

  const LIMIT = 200;
  const REFETCH_DELAY = 120; // ms: several events of one REQ in a burst, one fetch
  const EVENT_TYPES = [
    "stage.started", "stage.completed", "stage.failed", "stage.blocked",
    "workflow.started", "workflow.resumed", "workflow.completed", "workflow.cancelled",
    "escalation", "decision",
  ];

  const state = {
    stages: [],            // [{index, name, agent, gate, followup}]
    rows: new Map(),       // req -> <tr>
    filter: "all",
    token: sessionStorage.getItem("agogd-token") || "",
    source: null,
    pending: new Map(),    // req -> timer
    fetchedAt: new Map(),  // req -> when its row was last asked for on its own
    open: null,            // REQ shown in the history panel
  };
  // For tests and the curious: what the board has seen.
  const board = (window.board = { loaded: false, live: false, events: 0, fetches: 0, last: null });

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  };

  // --- formatting ------------------------------------------------------------------
  function money(usd) {
    if (!usd) return "";
    return usd >= 0.01 ? `$${usd.toFixed(2)}` : `$${usd.toFixed(4)}`;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
    return `${Math.floor(h / 24)}d ${h % 24}h`;
  }
  function clock(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  }
  function prio(value) {
    // The API answers "P2"; an agogd from before it did answered 2.
    if (value === null || value === undefined) return "";
    return typeof value === "number" ? `P${value}` : String(value);
  }

  // --- the API ----------------------------------------------------------------------
  async function api(path) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const response = await fetch(path, { headers, cache: "no-store" });
    board.fetches += 1;
    if (response.status === 401 || response.status === 403) {
      askToken();
      throw new Error("the API token is needed");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(body.error || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function askToken() {
    $("token-form").hidden = false;
    $("token").focus();
  }

  function showError(message) {
    $("error").hidden = !message;
    $("error").textContent = message || "";
  }

  // --- the table ------------------------------------------------------------------------
  function renderHead(stages) {
    const head = $("head");
    head.replaceChildren(el("th", { class: "req-col", text: "REQ" }), el("th", { class: "status-col", text: "Status" }));
    for (const stage of stages) {
      head.append(
        el("th", { class: stage.followup ? "followup" : null, "data-stage": stage.agent, title: `stage ${stage.index}` },
          stage.name, el("small", { text: stage.followup ? `${stage.agent} · after` : stage.agent })),
      );
    }
  }

  function cellNode(stage, cell) {
    const cellState = (cell && cell.state) || "waiting";
    const td = el("td", {
      class: `cell${stage.followup ? " followup" : ""}`,
      "data-stage": stage.agent,
      "data-state": cellState,
      "data-attempt": cell && cell.attempt ? String(cell.attempt) : null,
    });
    const label = el("span", { class: "state", text: cellState });
    const meta = el("span", { class: "meta" });
    if (cellState === "running") {
      // Elapsed time, ticking: the server's seconds at fetch time plus ours since.
      const started = Date.now() - 1000 * ((cell && cell.seconds) || 0);
      td.dataset.started = String(started);
      meta.textContent = duration((Date.now() - started) / 1000);
      meta.classList.add("elapsed");
    } else if (cell && cell.seconds !== null && cell.seconds !== undefined && cellState !== "waiting") {
      meta.textContent = duration(cell.seconds);
    }
    if (cell && cell.attempt > 1) meta.textContent += ` · #${cell.attempt}`;
    if (cell && cell.cost_usd) meta.textContent += ` · ${money(cell.cost_usd)}`;
    const box = el("div", { title: cell && cell.reason ? cell.reason : "" }, label, meta);
    td.append(box);
    return td;
  }

  function rowNode(req) {
    const tr = el("tr", { "data-req": req.req_number, "data-status": req.status });
    const who = el("td", { class: "req-col" },
      el("div", {}, el("span", { class: "req-id", text: req.req_number }),
        el("span", { class: `prio ${prio(req.priority).toLowerCase()}`, text: prio(req.priority) })),
      el("div", { class: "req-title", text: req.title || "", title: req.title || "" }));
    const status = el("td", { class: "status-col" }, el("span", { class: `badge ${req.status}`, text: req.status }),
      req.cost_usd ? el("span", { class: "cost", text: money(req.cost_usd), title: req.budget_usd ? `of a ${money(req.budget_usd)} budget` : "spent by its agents" }) : null);
    tr.append(who, status);
    const cells = new Map((req.stages || []).map((c) => [c.index, c]));
    for (const stage of state.stages) tr.append(cellNode(stage, cells.get(stage.index)));
    if (req.req_number === state.open) tr.classList.add("selected");
    return tr;
  }

  function visible(req) {
    const groups = {
      active: ["PENDING", "IN_PROGRESS", "BLOCKED", "ESCALATED"],
      stuck: ["BLOCKED", "ESCALATED"],
      finished: ["COMPLETE", "DEPLOYED", "CANCELLED"],
    };
    return state.filter === "all" || (groups[state.filter] || []).includes(req.status);
  }

  function putRow(req, flash) {
    const body = $("rows");
    const old = state.rows.get(req.req_number);
    if (!visible(req)) {
      if (old) old.remove();
      state.rows.delete(req.req_number);
      updateSummary();
      return;
    }
    const tr = rowNode(req);
    if (old) old.replaceWith(tr);
    else body.prepend(tr); // a new REQ goes on top (the list is newest activity first)
    state.rows.set(req.req_number, tr);
    if (flash) tr.classList.add("flash");
    updateSummary();
  }

  function updateSummary() {
    const counts = {};
    for (const tr of state.rows.values()) counts[tr.dataset.status] = (counts[tr.dataset.status] || 0) + 1;
    const summary = $("counts");
    summary.replaceChildren(el("b", { text: String(state.rows.size) }), " REQs");
    for (const status of ["IN_PROGRESS", "BLOCKED", "ESCALATED", "DEPLOYED", "COMPLETE"]) {
      if (counts[status]) summary.append(` · ${counts[status]} ${status.toLowerCase().replace("_", " ")}`);
    }
    $("empty").hidden = state.rows.size > 0;
  }

  async function loadAll() {
    const asked = performance.now();
    const query = state.filter === "all" ? "" : `&status=${state.filter}`;
    const body = await api(`/api/reqs?limit=${LIMIT}${query}`);
    state.stages = body.stages || [];
    renderHead(state.stages);
    // A row fetched on its own after this list was asked for is newer: keep it.
    const newer = new Map();
    for (const [req, tr] of state.rows) {
      if ((state.fetchedAt.get(req) || 0) > asked) newer.set(req, tr);
    }
    $("rows").replaceChildren();
    state.rows.clear();
    for (const req of [...body.reqs].reverse()) {
      const kept = newer.get(req.req_number);
      if (kept) {
        $("rows").prepend(kept);
        state.rows.set(req.req_number, kept);
      } else {
        putRow(req, false);
      }
    }
    updateSummary();
    showError("");
    board.loaded = true;
  }

  async function refetchRow(req) {
    state.fetchedAt.set(req, performance.now());
    try {
      putRow(await api(`/api/reqs/${encodeURIComponent(req)}?events=0`), true);
      if (state.open === req) await openHistory(req, false);
    } catch (error) {
      if (error.status !== 404) showError(`Could not refresh ${req}: ${error.message}`);
    }
  }

  function scheduleRefetch(req) {
    clearTimeout(state.pending.get(req));
    state.pending.set(req, setTimeout(() => {
      state.pending.delete(req);
      refetchRow(req);
    }, REFETCH_DELAY));
  }

  // Patch the cell from the event itself, before the row comes back.
  function patchFromEvent(event) {
    const tr = state.rows.get(event.req_number);
    if (!tr || event.stage_index === null || event.stage_index === undefined) return;
    const stage = state.stages.find((s) => s.index === event.stage_index);
    if (!stage) return;
    let cellState = { running: "running", done: "done", failed: "failed", blocked: "blocked" }[event.status];
    if (!cellState) return;
    if (cellState === "failed" && (stage.gate === "critique" || stage.gate === "qa")) cellState = "rejected";
    const old = tr.querySelector(`td.cell[data-stage="${CSS.escape(stage.agent)}"]`);
    if (old) old.replaceWith(cellNode(stage, { state: cellState, attempt: event.attempt, seconds: 0, reason: event.reason }));
  }

  // --- live events -----------------------------------------------------------------------
  function setLive(live, text) {
    board.live = live;
    document.body.dataset.live = String(live);
    $("live-text").textContent = text;
  }

  function connect() {
    if (state.source) state.source.close();
    const url = state.token ? `/api/events?token=${encodeURIComponent(state.token)}` : "/api/events";
    const source = (state.source = new EventSource(url));
    source.addEventListener("ready", () => {
      // Subscribed: every later event will come. Load what happened before it
      // (the gap since the first load, or the time away after a reconnect).
      setLive(true, "live");
      loadAll().catch((e) => showError(e.message));
    });
    const onEvent = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      board.events += 1;
      board.last = event;
      if (!event.req_number) return;
      if (!state.rows.has(event.req_number) && !["stage.started", "workflow.started"].includes(event.eventType)) {
        scheduleRefetch(event.req_number);
        return;
      }
      patchFromEvent(event);
      scheduleRefetch(event.req_number);
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
    source.addEventListener("lagged", () => loadAll().catch((e) => showError(e.message)));
    source.addEventListener("bye", () => setLive(false, "agogd is stopping"));
    source.onerror = () => setLive(false, "reconnecting…");
  }

  // --- history panel ----------------------------------------------------------------------
  function fact(list, name, value) {
    if (value === null || value === undefined || value === "") return;
    list.append(el("dt", { text: name }), el("dd", { text: String(value) }));
  }

  function attemptState(a, stage) {
    const map = {
      RUNNING: "running", COMPLETE: "done", REJECTED: "rejected", FAILED: "failed",
      TIMED_OUT: "failed", BLOCKED: "blocked", SUPERSEDED: "cancelled", CANCELLED: "cancelled",
    };
    if (a.status === "FAILED" && stage && (stage.gate === "critique" || stage.gate === "qa")) return "rejected";
    return map[a.status] || "waiting";
  }

  // The notice that closed an attempt: by its attempt number when the notice
  // gave one, else the one received while the attempt ran (the notice that
  // closes an attempt is stored in the same transaction, at the same instant).
  function deliverableFor(a, deliverables) {
    const same = deliverables.filter((d) => d.stage === a.stage);
    const exact = same.filter((d) => d.attempt === a.attempt);
    if (exact.length) return exact[exact.length - 1];
    const start = Date.parse(a.started_at);
    const end = a.finished_at ? Date.parse(a.finished_at) : Infinity;
    const during = same.filter((d) => {
      const at = Date.parse(d.received_at);
      return (d.attempt === null || d.attempt === undefined) && at >= start && at <= end;
    });
    return during[during.length - 1];
  }

  // An attempt's commit on the REQ's branch: the files it changed, those its
  // notice did not list marked, and those it listed but left unchanged.
  const MAX_FILES_SHOWN = 50;
  function commitNode(commit) {
    const files = commit.files || [];
    const unlisted = new Set(commit.unlisted || []);
    const missing = commit.missing || [];
    let what = "no changes";
    if (commit.sha) what = `commit ${commit.sha.slice(0, 7)} · ${files.length} file${files.length === 1 ? "" : "s"}`;
    else if (!commit.committed_at) what = "not committed";
    const box = el("div", { class: "commit", "data-sha": commit.sha || null },
      el("span", { class: "sha", text: what, title: commit.sha || "" }));
    const list = el("ul", { class: "files" });
    for (const f of files.slice(0, MAX_FILES_SHOWN)) {
      const odd = unlisted.has(f.path);
      list.append(el("li", { class: `file${odd ? " unlisted" : ""}`, "data-status": f.status, "data-path": f.path },
        el("span", { class: "fstatus", text: f.status }),
        el("code", { text: f.path }),
        odd ? el("span", { class: "mark", text: "not listed", title: "changed, but the agent's notice did not list it" }) : null));
    }
    if (files.length > MAX_FILES_SHOWN) list.append(el("li", { class: "more", text: `… and ${files.length - MAX_FILES_SHOWN} more` }));
    for (const path of missing.slice(0, MAX_FILES_SHOWN)) {
      list.append(el("li", { class: "file missing", "data-status": "missing", "data-path": path },
        el("span", { class: "fstatus", text: "unchanged" }),
        el("code", { text: path }),
        el("span", { class: "mark", text: "listed, unchanged", title: "the agent's notice listed it, but the commit did not change it" })));
    }
    if (list.children.length) box.append(list);
    return box;
  }

  async function openHistory(req, scroll = true) {
    const detail = await api(`/api/reqs/${encodeURIComponent(req)}?events=200`);
    state.open = req;
    for (const [name, tr] of state.rows) tr.classList.toggle("selected", name === req);
    const panel = $("history");
    panel.dataset.req = req;
    $("h-req").textContent = req;
    $("h-title").textContent = detail.title || "";
    const facts = $("h-facts");
    facts.replaceChildren();
    fact(facts, "Status", detail.status);
    fact(facts, "Priority", prio(detail.priority));
    fact(facts, "Stage", detail.current_stage_name ? `${detail.current_stage_name} (${detail.current_agent})` : "");
    fact(facts, "Blocked", detail.blocked_reason);
    fact(facts, "Spent", detail.cost_usd ? `${money(detail.cost_usd)}${detail.budget_usd ? ` of ${money(detail.budget_usd)}` : ""}` : "");
    fact(facts, "Commit", detail.commit_sha);
    const branch = detail.branch;
    fact(facts, "Branch", branch ? `${branch.name}${branch.removed_at ? ` · worktree removed${branch.removed_reason ? ` (${branch.removed_reason})` : ""}` : ""}` : "");
    fact(facts, "Deployed", detail.deployed_at ? `${clock(detail.deployed_at)} by ${detail.deployed_by}` : "");
    fact(facts, "Created", clock(detail.created_at));
    fact(facts, "Updated", clock(detail.updated_at));

    // Each attempt, with the deliverable its agent sent for it.
    const deliverables = detail.deliverables || [];
    const byIndex = new Map(state.stages.map((s) => [s.index, s]));
    const list = $("h-attempts");
    list.replaceChildren();
    for (const a of detail.attempts || []) {
      const stage = byIndex.get(a.stage);
      const d = deliverableFor(a, deliverables);
      const item = el("li", { class: "attempt", "data-state": attemptState(a, stage), "data-stage": a.agent },
        el("div", { class: "line" },
          el("span", { class: "who", text: `${a.stage_name || (stage && stage.name) || a.stage} · ${a.agent} #${a.attempt}` }),
          el("span", { class: "when", text: `${a.status.toLowerCase()} · ${duration(a.seconds)} · ${clock(a.started_at)}${a.cost_usd ? ` · ${money(a.cost_usd)}` : ""}` })),
        a.reason ? el("div", { class: "reason", text: a.reason }) : null,
        d ? el("div", { class: "deliverable" },
          el("span", { class: "summary", text: d.summary || "(no summary)" }),
          d.url ? el("span", { class: "url", text: d.url }) : null) : null,
        a.commit ? commitNode(a.commit) : null);
      list.append(item);
    }
    if (!list.children.length) list.append(el("li", { class: "attempt", text: "Not started yet (waiting for a slot)." }));

    const escalations = detail.escalations || [];
    $("h-escalations-box").hidden = !escalations.length;
    $("h-escalations").replaceChildren(...escalations.map((e) =>
      el("li", { text: `${clock(e.created_at)} · ${e.priority}: ${e.reason}${e.resolved_at ? " (resolved)" : ""}` })));
    const decisions = detail.decisions || [];
    $("h-decisions-box").hidden = !decisions.length;
    $("h-decisions").replaceChildren(...decisions.map((d) =>
      el("li", { text: `${clock(d.received_at || d.applied_at)} · ${d.decision}${d.reasoning ? `: ${d.reasoning}` : ""}` })));
    $("h-events").replaceChildren(...(detail.events || []).slice(-60).reverse().map((e) =>
      el("li", {}, el("time", { text: clock(e.created_at) }),
        `${e.kind}${e.agent ? ` · ${e.agent}` : ""}${e.attempt ? ` #${e.attempt}` : ""}${e.reason ? ` · ${e.reason}` : ""}`)));
    panel.hidden = false;
    document.body.classList.add("history-open");
    if (scroll) panel.scrollTop = 0;
    followOutput(req, !detail.finished);
  }

  // The agent's output of the REQ's latest attempt, followed while it runs
  // (GET /api/reqs/{req}/logs?since=N returns what came after byte N).
  async function followOutput(req, live) {
    const box = $("h-output-box");
    const pre = $("h-output");
    const token = (state.outputToken = {});
    let since = null;
    let attempt = null;
    pre.textContent = "";
    box.hidden = true;
    while (state.open === req && state.outputToken === token) {
      const query = attempt ? `stage=${attempt.stage}&attempt=${attempt.attempt}&since=${since}` : "";
      let body;
      try {
        body = await api(`/api/reqs/${encodeURIComponent(req)}/logs?${query}`);
      } catch (err) {
        return; // agogd away: the next refresh of the panel tries again
      }
      if (state.outputToken !== token) return;
      if (!body.kept) {
        // No output kept yet: an agent the runner is about to start, or one
        // outside agogd. Look again while the REQ is live.
        if (!live) return;
        await new Promise((resolve) => setTimeout(resolve, 1000));
        continue;
      }
      attempt = { stage: body.stage, attempt: body.attempt };
      box.hidden = false;
      $("h-output-who").textContent = `${body.agent} #${body.attempt}${body.running ? " · running" : ""}`;
      pre.textContent += body.text;
      if (pre.textContent.length > 200000) pre.textContent = pre.textContent.slice(-200000);
      pre.scrollTop = pre.scrollHeight;
      since = body.total_bytes;
      if (!body.running) return;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  function closeHistory() {
    state.open = null;
    $("history").hidden = true;
    document.body.classList.remove("history-open");
    delete $("history").dataset.req;
    for (const tr of state.rows.values()) tr.classList.remove("selected");
  }

  // --- wiring -------------------------------------------------------------------------------
  $("rows").addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-req]");
    if (tr) openHistory(tr.dataset.req).catch((e) => showError(e.message));
  });
  $("h-close").addEventListener("click", closeHistory);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeHistory();
  });
  for (const button of document.querySelectorAll(".filters button")) {
    button.addEventListener("click", () => {
      state.filter = button.dataset.filter;
      for (const b of document.querySelectorAll(".filters button")) b.classList.toggle("on", b === button);
      loadAll().catch((e) => showError(e.message));
    });
  }
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("agogd-token", state.token);
    $("token-form").hidden = true;
    start();
  });
  // Running cells tick every second.
  setInterval(() => {
    for (const td of document.querySelectorAll('td.cell[data-state="running"]')) {
      const meta = td.querySelector(".elapsed");
      if (meta && td.dataset.started) {
        const attempt = td.dataset.attempt && td.dataset.attempt !== "1" ? ` · #${td.dataset.attempt}` : "";
        meta.textContent = duration((Date.now() - Number(td.dataset.started)) / 1000) + attempt;
      }
    }
  }, 1000);

  function start() {
    loadAll()
      .then(connect)
      .catch((error) => showError(`Could not load the board: ${error.message}`));
  }
  start();
})();
