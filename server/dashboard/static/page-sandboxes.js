// Sandboxes: live CPU %, memory used against the limit and pids as sparklines (what
// `wondercraft-ctl stats` prints), a kill button that asks first, and the recent ones.

import { api, get, session } from "./api.js";
import { sparkline } from "./charts.js";
import { bytes, clear, fmt, h, table, time } from "./dom.js";

const MIB = 1024 * 1024;

// One sample per running sandbox, from the admin's stats or from an agent's own list.
async function samples() {
  if (session.isAdmin) return (await get("/v1/admin/stats")).sandboxes;
  const now = Date.now() / 1000;
  return (await get("/v1/sandbox?status=running")).sandboxes.map((s) => ({
    sandboxId: s.sandboxId,
    agentId: s.agentId,
    cycleId: null,
    cpuCores: s.resourceCaps.cpu,
    cpuSeconds: (s.resourceUsage || {}).cpuSeconds || 0,
    memoryCurrentBytes: (s.resourceUsage || {}).memoryCurrentBytes || 0,
    memoryLimitBytes: s.resourceCaps.memory * MIB,
    pidsCurrent: (s.resourceUsage || {}).pidsCurrent || 0,
    pidsLimit: s.resourceCaps.pids,
    sampledAt: now,
  }));
}

class LiveRow {
  constructor(sample, onKill) {
    this.previous = null;
    this.cpu = sparkline({ label: "cpu", max: 100 * Math.max(1, sample.cpuCores) });
    this.memory = sparkline({ label: "memory", max: sample.memoryLimitBytes || null });
    this.pids = sparkline({ label: "pids", max: sample.pidsLimit || null });
    this.cpuText = h("span");
    this.memoryText = h("span");
    this.pidsText = h("span");
    const kill = h("button", { class: "danger", type: "button", text: "Kill", dataset: { kill: sample.sandboxId }, onclick: () => onKill(sample.sandboxId) });
    this.element = h("tr", { dataset: { sandbox: sample.sandboxId } },
      h("td", { text: sample.sandboxId }),
      h("td", { class: "agent", text: sample.agentId }),
      h("td", { text: sample.cycleId || "–" }),
      h("td", {}, this.cpu.element, " ", this.cpuText),
      h("td", {}, this.memory.element, " ", this.memoryText),
      h("td", {}, this.pids.element, " ", this.pidsText),
      h("td", {}, kill));
  }

  update(sample) {
    let cpuPercent = 0;
    if (this.previous && sample.sampledAt > this.previous.sampledAt) {
      cpuPercent = (100 * (sample.cpuSeconds - this.previous.cpuSeconds)) / (sample.sampledAt - this.previous.sampledAt);
    }
    this.previous = sample;
    this.cpu.push(sample.sampledAt, Math.max(0, cpuPercent));
    this.memory.push(sample.sampledAt, sample.memoryCurrentBytes);
    this.pids.push(sample.sampledAt, sample.pidsCurrent);
    this.cpuText.textContent = `${cpuPercent.toFixed(1)} %`;
    this.memoryText.textContent = `${bytes(sample.memoryCurrentBytes)} / ${bytes(sample.memoryLimitBytes)}`;
    this.pidsText.textContent = `${sample.pidsCurrent} / ${fmt(sample.pidsLimit)}`;
  }

  destroy() {
    this.cpu.destroy(); this.memory.destroy(); this.pids.destroy();
    this.element.remove();
  }
}

function ended(s) {
  const record = s.finalResourceRecord;
  if (!record || record.wallSeconds === undefined || record.wallSeconds === null) return null;
  return s.createdAt + record.wallSeconds * 1000;
}

export async function render(root, page) {
  root.append(h("h2", { text: "Sandboxes" }));
  const body = h("tbody", { id: "live-sandboxes" });
  const live = h("table", {},
    h("thead", {}, h("tr", {}, ["sandbox", "agent", "cycle", "CPU % (100 = one core)", "memory used / limit", "pids", ""].map((t) => h("th", { text: t })))),
    body);
  const empty = h("p", { class: "hint", text: "No sandbox is running." });
  const recent = h("div", { id: "recent-sandboxes" });
  root.append(h("h3", { text: "Running, live" }), live, empty, recent);
  const rows = new Map();

  const kill = async (sandboxId) => {
    if (!window.confirm(`Kill sandbox ${sandboxId}? Its processes are stopped at once.`)) return;
    try {
      await api("DELETE", `/v1/sandbox/${encodeURIComponent(sandboxId)}`);
    } catch (error) { page.fail(error); }
  };

  page.every(2000, async () => {
    const seen = new Set();
    for (const sample of await samples()) {
      seen.add(sample.sandboxId);
      if (!rows.has(sample.sandboxId)) {
        const row = new LiveRow(sample, kill);
        rows.set(sample.sandboxId, row);
        body.append(row.element);
      }
      rows.get(sample.sandboxId).update(sample);
    }
    for (const [id, row] of rows) if (!seen.has(id)) { row.destroy(); rows.delete(id); }
    empty.hidden = rows.size > 0;
    const all = await get("/v1/sandbox?limit=50");
    clear(recent).append(h("h3", { text: "Recent" }), table(
      [
        { label: "sandbox", value: (s) => s.sandboxId },
        { label: "agent", value: (s) => s.agentId },
        { label: "status", value: (s) => s.status },
        { label: "cpu / memory MB", value: (s) => `${s.resourceCaps.cpu} / ${s.resourceCaps.memory}` },
        { label: "created", value: (s) => time(s.createdAt), nowrap: true },
        { label: "ended", value: (s) => time(ended(s)), nowrap: true },
        { label: "reason", value: (s) => (s.finalResourceRecord || {}).terminationReason || s.terminationReason || "–" },
      ],
      all.sandboxes,
    ));
  });
  page.onClose(() => { for (const row of rows.values()) row.destroy(); });
}
