// Overview: health, cgroup mode, sandboxes alive, queue depth, cycle success rate, the
// admission budget in use (when the service reports it) and GPUs.

import { get, session } from "./api.js";
import { card, clear, fmt, h, table } from "./dom.js";

export function successRate(byStatus = {}) {
  const good = (byStatus.completed || 0) + (byStatus.aggregated || 0);
  const finished = good + (byStatus.failed || 0);
  return finished ? `${((100 * good) / finished).toFixed(1)} %` : "–";
}

// The admission totals the service reports (`admission: {budget, committed}`), one card per
// resource when they are per resource, else one card; none when the service reports none.
function admissionCards(admission) {
  if (!admission || admission.budget === undefined) return [];
  const { budget, committed } = admission;
  if (budget === null || typeof budget !== "object") {
    return [card("admission in use", `${fmt(committed)} / ${fmt(budget)}`, { dataset: { metric: "admission" } })];
  }
  return Object.entries(budget).map(([resource, total]) =>
    card(`admission ${resource}`, `${fmt((committed || {})[resource] ?? 0)} / ${fmt(total)}`, { dataset: { metric: `admission-${resource}` } }));
}

export async function render(root, page) {
  root.append(h("h2", { text: "Overview" }));
  const cards = h("div", { class: "cards", id: "overview-cards" });
  const models = h("div", { id: "overview-models" });
  root.append(cards, models);
  page.every(3000, async () => {
    if (session.isAdmin) {
      const s = await get("/v1/admin/status");
      clear(cards).append(
        card("health", s.status, { dataset: { metric: "health" } }),
        card("version", s.version),
        card("cgroup mode", s.cgroupMode, { dataset: { metric: "cgroup-mode" } }),
        card("uptime (s)", Math.round(s.uptimeSeconds)),
        card("sandboxes alive", s.sandboxes.running, { dataset: { metric: "sandboxes-alive" } }),
        card("queue depth", s.cycles.queued, { dataset: { metric: "queue-depth" } }),
        card("cycles running", `${s.cycles.running} / ${s.cycles.maxConcurrent}`),
        card("cycle success rate", successRate(s.cycles.byStatus), { dataset: { metric: "success-rate" } }),
        ...admissionCards(s.admission),
        card("GPUs free / total", `${s.gpus.free} / ${s.gpus.total}`, { dataset: { metric: "gpus" } }),
        card("agents", s.agents.active),
      );
      clear(models).append(h("h3", { text: "Models" }), table(
        [
          { label: "model", value: (m) => m.modelType },
          { label: "current version", value: (m) => m.currentVersion, num: true },
          { label: "versions", value: (m) => m.versions, num: true },
        ],
        s.models,
      ));
    } else {
      const health = await get("/healthz");
      const mine = await get("/v1/sandbox?status=running");
      clear(cards).append(
        card("health", health.status, { dataset: { metric: "health" } }),
        card("version", health.version),
        card("cgroup mode", health.cgroupMode, { dataset: { metric: "cgroup-mode" } }),
        card("your sandboxes alive", mine.count, { dataset: { metric: "sandboxes-alive" } }),
      );
      clear(models).append(h("p", { class: "hint", text: "Queue depth, success rate, admission and GPUs are shown to the admin." }));
    }
  });
}
