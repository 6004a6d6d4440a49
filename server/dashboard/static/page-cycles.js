// Cycles: the list, and for one cycle its status, a per-epoch loss/accuracy chart that grows
// while it trains (its status polled each second), its log lines and its resource record
// against its caps.

import { get, query, session } from "./api.js";
import { lineChart } from "./charts.js";
import { bytes, card, clear, fmt, h, table, time } from "./dom.js";

const LIVE = new Set(["queued", "running", "retrying"]);

async function listCycles() {
  if (session.isAdmin) return (await get("/v1/admin/cycles?limit=50")).cycles;
  // An agent has no list of its cycles: those its telemetry names, read one by one.
  const events = (await get("/v1/telemetry/training?limit=100")).events;
  const ids = [...new Set(events.map((e) => e.cycleId).filter(Boolean))].slice(0, 20);
  return Promise.all(ids.map((id) => get(`/v1/petals/status/${encodeURIComponent(id)}`)));
}

// The epochs a cycle reports: the full list once it has ended, else what progress showed.
export function epochPoints(cycle, seen) {
  if (cycle.result && Array.isArray(cycle.result.epochs)) return cycle.result.epochs;
  const p = cycle.progress || {};
  if (p.epoch && p.loss !== undefined && p.loss !== null) seen.set(p.epoch, { epoch: p.epoch, loss: p.loss, accuracy: p.accuracy ?? null });
  return [...seen.values()].sort((a, b) => a.epoch - b.epoch);
}

// The record is camelCase as the API gives it: `exec` holds the learn cycle's own figures,
// `sandbox` the sandbox's final record (its limits, its usage, why it ended).
function resourceTable(record) {
  if (!record) return h("p", { class: "hint", text: "No resource record yet." });
  const exec = record.exec || {};
  const sandbox = record.sandbox || {};
  const usage = sandbox.resourceUsage || {};
  const limits = sandbox.limits || {};
  const either = (key) => exec[key] ?? usage[key];
  const cap = (value, unit) => (value === undefined || value === null ? "–" : `${value} ${unit}`);
  const wall = sandbox.wallSeconds ?? exec.wallSeconds;
  const rows = [
    ["memory peak", bytes(either("memoryPeakBytes")), cap(limits.memoryMB, "MB")],
    ["CPU time", `${fmt(either("cpuSeconds"))} s over ${fmt(wall)} s wall`, cap(limits.cpuCores, "cores")],
    ["pids", fmt(either("pidsPeak") ?? either("pidsCurrent")), fmt(limits.pids)],
    ["storage", "–", cap(limits.storageMB, "MB")],
    ["GPUs", "–", fmt(limits.gpuCount)],
    ["OOM kills / pids limit hits", `${fmt(either("oomKills"))} / ${fmt(either("pidsLimitHits"))}`, ""],
    ["ended by", fmt(sandbox.terminationReason), ""],
  ];
  return table(
    [{ label: "resource", value: (r) => r[0] }, { label: "used", value: (r) => r[1] }, { label: "cap", value: (r) => r[2] }],
    rows,
    (r) => ({ dataset: { resource: r[0] } }),
  );
}

function logLines(cycle, events) {
  const lines = events.map((e) => `${time(e.timestamp)}  ${e.event}${e.error ? `  ${e.error}` : ""}${e.metrics ? `  loss=${fmt(e.metrics.loss)} accuracy=${fmt(e.metrics.accuracy)}` : ""}`);
  if (cycle.error) lines.push(`error: ${typeof cycle.error === "object" ? JSON.stringify(cycle.error) : cycle.error}`);
  for (const key of ["logs", "stderr", "stdout"]) {
    const text = cycle[key] || (cycle.result || {})[key];
    if (text) lines.push(...String(text).split("\n"));
  }
  return lines.length ? lines.join("\n") : "(no log lines)";
}

async function showCycle(root, page, cycleId) {
  const chart = lineChart({ id: "cycle-chart", title: "loss and accuracy per epoch", xLabel: "epoch", series: { loss: [], accuracy: [] } });
  const summary = h("div", { class: "cards", id: "cycle-summary" });
  const resources = h("div", { id: "cycle-resources" });
  const log = h("pre", { class: "log", id: "cycle-log" });
  root.append(h("h3", {}, "Cycle ", h("code", { text: cycleId })), summary, h("div", { class: "row" }, chart.element, resources), h("h3", { text: "Log" }), log);
  page.onClose(() => chart.destroy());
  const seen = new Map();
  let done = false;
  page.every(500, async () => {
    if (done) return;
    const cycle = await get(`/v1/petals/status/${encodeURIComponent(cycleId)}`);
    const points = epochPoints(cycle, seen);
    chart.update(points.map((p) => p.epoch), { loss: points.map((p) => p.loss), accuracy: points.map((p) => p.accuracy) });
    chart.element.dataset.status = cycle.status;
    const p = cycle.progress || {};
    clear(summary).append(
      card("status", cycle.status, { dataset: { metric: "cycle-status" } }),
      card("agent", cycle.agentId),
      card("model", cycle.modelType),
      card("epoch", `${fmt(p.epoch)} / ${fmt(p.epochs)}`),
      card("attempts", cycle.attempts),
      card("base → result version", `${fmt(cycle.baseVersion)} → ${fmt(cycle.resultVersion)}`),
    );
    clear(resources).append(h("h3", { text: "Resources against caps" }), resourceTable((cycle.result || {}).resourceRecord));
    const events = (await get(`/v1/telemetry/training${query({ agentId: cycle.agentId, limit: 200 })}`)).events
      .filter((e) => e.cycleId === cycleId).reverse();
    log.textContent = logLines(cycle, events);
    done = !LIVE.has(cycle.status) && cycle.status !== "completed";
  });
}

export async function render(root, page, [cycleId]) {
  root.append(h("h2", { text: "Cycles" }));
  const open = h("form", { class: "filters", id: "open-cycle" },
    h("label", { for: "cycle-id", text: "Cycle id" }), h("input", { id: "cycle-id", name: "cycle", placeholder: "cy-…" }), h("button", { type: "submit", text: "Open" }));
  open.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = open.elements.cycle.value.trim();
    if (id) location.hash = `#cycles/${encodeURIComponent(id)}`;
  });
  const list = h("div", { id: "cycle-list" });
  const detail = h("div", { id: "cycle-detail" });
  root.append(open, list, detail);
  const cycles = await listCycles();
  list.append(table(
    [
      { label: "cycle", value: (c) => h("a", { href: `#cycles/${encodeURIComponent(c.cycleId)}`, text: c.cycleId }) },
      { label: "agent", value: (c) => c.agentId },
      { label: "model", value: (c) => c.modelType },
      { label: "status", value: (c) => c.status },
      { label: "epoch", value: (c) => `${fmt((c.progress || {}).epoch)} / ${fmt((c.progress || {}).epochs)}` },
      { label: "loss", value: (c) => (c.progress || {}).loss, num: true },
      { label: "created", value: (c) => time(c.createdAt), nowrap: true },
    ],
    cycles,
    (c) => ({ class: c.cycleId === cycleId ? "selected" : undefined, dataset: { cycle: c.cycleId } }),
  ));
  if (cycles.length === 0) list.append(h("p", { class: "hint", text: "No cycles yet." }));
  if (cycleId) await showCycle(detail, page, cycleId);
}
