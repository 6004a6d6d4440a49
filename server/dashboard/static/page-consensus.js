// Consensus history: proposals, votes and commits (with every other entry of the hash-chained
// log), filtered by model and kind, and the check of the whole chain.

import { get, query } from "./api.js";
import { clear, h, table, time } from "./dom.js";

const KINDS = ["", "round_proposal", "vote", "model_committed", "model_rolled_back", "model_created"];

function summary(body) {
  const text = JSON.stringify(body);
  return text.length > 240 ? `${text.slice(0, 240)}…` : text;
}

export async function render(root, page) {
  root.append(h("h2", { text: "Consensus history" }));
  const chain = h("div", { class: "cards", id: "chain-check" });
  const filters = h("form", { class: "filters", id: "history-filters" },
    h("label", { for: "history-model", text: "Model" }), h("input", { id: "history-model", name: "model", placeholder: "mlp:digits" }),
    h("label", { for: "history-kind", text: "Kind" }), h("select", { id: "history-kind", name: "kind" }, KINDS.map((k) => h("option", { value: k, text: k || "any" }))),
    h("button", { type: "submit", text: "Filter" }));
  const entries = h("div", { id: "history-entries" });
  root.append(h("h3", { text: "Chain check" }), chain, h("h3", { text: "Entries" }), filters, entries);

  const load = async () => {
    const check = await get("/v1/audit/verify");
    clear(chain).append(
      h("div", { class: "card" }, h("div", { class: "label", text: "chain" }),
        h("div", { class: `value ${check.ok ? "ok" : "bad"}`, id: "chain-ok", text: check.ok ? "intact" : "BROKEN" })),
      h("div", { class: "card" }, h("div", { class: "label", text: "entries" }), h("div", { class: "value", text: check.entries })),
      h("div", { class: "card" }, h("div", { class: "label", text: "head" }), h("div", { class: "value" }, h("code", { text: `#${check.headSeq} ${(check.headHash || "").slice(0, 16)}` }))),
    );
    if (!check.ok) chain.append(h("p", { class: "bad", text: JSON.stringify(check) }));
    const q = query({ modelType: filters.elements.model.value.trim(), kind: filters.elements.kind.value, limit: 200 });
    const history = await get(`/v1/consensus/history${q}`);
    clear(entries).append(table(
      [
        { label: "seq", value: (e) => e.seq, num: true },
        { label: "time", value: (e) => time(e.createdAt), nowrap: true },
        { label: "kind", value: (e) => e.kind },
        { label: "model", value: (e) => e.modelName },
        { label: "agent", value: (e) => e.agentId },
        { label: "what", value: (e) => summary(e.body), wrap: true },
        { label: "hash", value: (e) => h("code", { text: (e.entryHash || "").slice(0, 12) }) },
      ],
      history.entries,
      (e) => ({ dataset: { kind: e.kind } }),
    ));
  };
  filters.addEventListener("submit", (event) => { event.preventDefault(); load().catch((error) => page.fail(error)); });
  page.every(5000, load);
}
