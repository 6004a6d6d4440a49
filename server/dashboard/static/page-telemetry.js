// Telemetry: the latest events, then a live tail over the SSE stream (read with fetch so the
// Bearer header goes along), filtered by agent and event kind.

import { get, query, stream } from "./api.js";
import { clear, fmt, h, time } from "./dom.js";

const KEEP = 500;

function row(e) {
  const metrics = e.metrics ? `loss ${fmt(e.metrics.loss)}, accuracy ${fmt(e.metrics.accuracy)}` : "";
  return h("tr", { dataset: { seq: e.seq } },
    h("td", { class: "num", text: e.seq }), h("td", { text: time(e.timestamp) }), h("td", { text: e.event }),
    h("td", { class: "agent", text: e.agentId }), h("td", { text: e.cycleId || "–" }), h("td", { text: metrics }),
    h("td", { class: "error-text", text: e.error || "" }));
}

export async function render(root, page) {
  root.append(h("h2", { text: "Telemetry" }));
  const filters = h("form", { class: "filters", id: "telemetry-filters" },
    h("label", { for: "telemetry-agent", text: "Agent" }), h("input", { id: "telemetry-agent", name: "agent" }),
    h("label", { for: "telemetry-event", text: "Event" }),
    h("select", { id: "telemetry-event", name: "event" }, ["", "training_cycle_completed", "training_cycle_failed"].map((k) => h("option", { value: k, text: k || "any" }))),
    h("button", { type: "submit", text: "Apply" }),
    h("span", { id: "tail-state", class: "hint" }));
  const body = h("tbody", { id: "telemetry-rows" });
  root.append(filters, h("div", { class: "tail" }, h("table", {},
    h("thead", {}, h("tr", {}, ["seq", "time", "event", "agent", "cycle", "metrics", "error"].map((t) => h("th", { text: t })))), body)));

  let controller = null;
  const state = (text) => { filters.querySelector("#tail-state").textContent = text; };
  const start = async () => {
    if (controller) controller.abort();
    controller = new AbortController();
    const signal = controller.signal;
    page.signal.addEventListener("abort", () => controller.abort());
    const filter = { agentId: filters.elements.agent.value.trim(), event: filters.elements.event.value };
    const latest = (await get(`/v1/telemetry/training${query({ ...filter, limit: 100 })}`)).events;
    clear(body).append(...latest.map(row));
    let last = latest.length ? Math.max(...latest.map((e) => e.seq)) : null;
    state("live");
    // Reconnects after the service ends a stream (an overflow, a restart), resuming after `last`.
    while (!signal.aborted) {
      try {
        await stream(`/v1/telemetry/training/stream${query(filter)}`, (event, id) => {
          last = Number(id) || last;
          if (body.querySelector(`tr[data-seq="${event.seq}"]`)) return;
          body.prepend(row(event));
          while (body.children.length > KEEP) body.lastChild.remove();
        }, signal, last ?? 0);
      } catch (error) {
        if (signal.aborted) return;
        page.fail(error);
      }
      if (!signal.aborted) { state("reconnecting"); await new Promise((r) => setTimeout(r, 2000)); state("live"); }
    }
  };
  filters.addEventListener("submit", (event) => { event.preventDefault(); start().catch((error) => page.fail(error)); });
  await start();
}
