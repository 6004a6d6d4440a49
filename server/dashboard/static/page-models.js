// Models: the versions of a shared model with their metrics per version as a chart, each
// series labelled by where its figures come from (the participants' training data, or a
// held-out set), the participants and votes of each round, and rollback for the admin.

import { api, get, hasPath, query, session } from "./api.js";
import { lineChart } from "./charts.js";
import { clear, fmt, h, table, time } from "./dom.js";

const EVALUATION_PATH = "/v1/petals/model/shared/evaluation";

async function modelNames() {
  if (session.isAdmin) return (await get("/v1/admin/status")).models.map((m) => m.modelType);
  const history = await get("/v1/consensus/history?limit=200");
  return [...new Set(history.entries.map((e) => e.modelName).filter(Boolean))];
}

// Held-out figures per version: from the evaluation endpoint where the service has one and a
// hold-out set is registered (it answers 404 before), else from a version's own held-out
// fields (never its training metrics).
async function heldOut(modelType, versions, registered) {
  const figures = new Map();
  const useEndpoint = registered !== false && (await hasPath(EVALUATION_PATH));
  for (const v of versions) {
    let found = v.evaluation || v.heldOut || v.holdout || null;
    if (!found && useEndpoint) {
      try { found = await get(`${EVALUATION_PATH}${query({ modelType, version: v.version })}`); } catch { found = null; }
    }
    if (found && (found.loss !== undefined || found.accuracy !== undefined)) figures.set(v.version, found);
  }
  return figures;
}

function votes(v) {
  return (v.votes || []).map((vote) => `${vote.validator}: ${vote.approve ? "approve" : "reject"} (${vote.reason})`).join("; ") || "–";
}

function participants(v) {
  return (v.participants || []).map((p) => `${p.agentId} (${p.numSamples} samples)`).join(", ") || "–";
}

// Every round of the model as its proposals recorded it: approved or not, who took part and
// how each validator voted (a rejected round makes no version, so only the history has it).
async function roundsTable(modelType) {
  const history = await get(`/v1/consensus/history${query({ modelType, kind: "round_proposal", limit: 100 })}`);
  if (!history.entries.length) return h("p", { class: "hint", text: "No round has closed yet." });
  return table(
    [
      { label: "seq", value: (e) => e.seq, num: true },
      { label: "base version", value: (e) => e.body.baseVersion, num: true },
      { label: "verdict", value: (e) => h("span", { class: e.body.approved ? "ok" : "bad", text: e.body.approved ? "approved" : "rejected" }) },
      { label: "closed by", value: (e) => e.body.closedBy },
      { label: "participants", value: (e) => participants(e.body) },
      { label: "votes", value: (e) => votes(e.body) },
      { label: "time", value: (e) => time(e.createdAt), nowrap: true },
    ],
    history.entries,
    (e) => ({ dataset: { round: e.seq } }),
  );
}

async function showModel(root, page, modelType) {
  const data = await get(`/v1/petals/model/versions${query({ modelType })}`);
  const versions = data.versions;
  const held = await heldOut(modelType, versions, data.holdoutRegistered);
  const trained = versions.filter((v) => v.metrics && v.metrics.loss !== undefined);
  const series = { "training loss": [], "training accuracy": [] };
  if (held.size) Object.assign(series, { "held-out loss": [], "held-out accuracy": [] });
  const chart = lineChart({ id: "model-chart", title: "metrics per version", xLabel: "version", series });
  page.onClose(() => chart.destroy());
  const xs = versions.filter((v) => trained.includes(v) || held.has(v.version)).map((v) => v.version);
  const pick = (v, source, key) => {
    const figures = source === "training" ? (versions.find((x) => x.version === v) || {}).metrics || {} : held.get(v) || {};
    return figures[key] ?? null;
  };
  const values = { "training loss": xs.map((v) => pick(v, "training", "loss")), "training accuracy": xs.map((v) => pick(v, "training", "accuracy")) };
  if (held.size) Object.assign(values, { "held-out loss": xs.map((v) => pick(v, "held", "loss")), "held-out accuracy": xs.map((v) => pick(v, "held", "accuracy")) });
  chart.update(xs, values);
  const note = held.size
    ? "Training figures are the participants' own, weighted by samples; held-out figures are measured on the registered hold-out set."
    : "Training figures only: the participants' own loss and accuracy, weighted by samples (no held-out figures reported for this model).";

  const rollback = async (version) => {
    if (!window.confirm(`Make version ${version} the current version of ${modelType}?`)) return;
    try {
      await api("POST", "/v1/petals/model/shared/rollback", { modelType, version });
      // Opens the page afresh (the router listens for hashchange) to show the new current version.
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    } catch (error) { page.fail(error); }
  };

  root.append(
    h("h3", {}, "Model ", h("code", { text: modelType })),
    h("p", {}, "Current version: ", h("strong", { id: "current-version", text: data.currentVersion })),
    chart.element,
    h("p", { class: "hint", id: "metrics-source", text: note }),
    h("h3", { text: "Versions, rounds and votes" }),
    table(
      [
        { label: "version", value: (v) => v.version, num: true },
        { label: "parent", value: (v) => v.parentVersion, num: true },
        { label: "method", value: (v) => v.aggregationMethod },
        { label: "training loss / accuracy", value: (v) => `${fmt((v.metrics || {}).loss)} / ${fmt((v.metrics || {}).accuracy)}` },
        { label: "held-out loss / accuracy", value: (v) => (held.has(v.version) ? `${fmt(held.get(v.version).loss)} / ${fmt(held.get(v.version).accuracy)}` : "–") },
        { label: "participants", value: participants },
        { label: "votes", value: votes },
        { label: "committed", value: (v) => time(v.timestamp * 1000), nowrap: true },
        { label: "sha256", value: (v) => (v.sha256 || "").slice(0, 12) },
        {
          label: "",
          value: (v) => v.version === data.currentVersion ? h("span", { class: "ok", text: "current" })
            : session.isAdmin ? h("button", { type: "button", class: "danger", text: "Roll back to this", dataset: { rollback: v.version }, onclick: () => rollback(v.version) })
              : "",
        },
      ],
      [...versions].reverse(),
      (v) => ({ dataset: { version: v.version } }),
    ),
    h("h3", { text: "Rounds" }),
    h("div", { id: "model-rounds" }, await roundsTable(modelType)),
  );
}

export async function render(root, page, [modelType]) {
  root.append(h("h2", { text: "Models" }));
  const names = await modelNames();
  const selected = modelType || names[0];
  const picker = h("form", { class: "filters", id: "pick-model" },
    h("label", { for: "model-name", text: "Model" }),
    h("input", { id: "model-name", name: "model", list: "model-names", value: selected || "" }),
    h("datalist", { id: "model-names" }, names.map((n) => h("option", { value: n }))),
    h("button", { type: "submit", text: "Show" }));
  picker.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = picker.elements.model.value.trim();
    if (name) location.hash = `#models/${encodeURIComponent(name)}`;
  });
  const links = h("p", { id: "model-links" }, names.map((n) => [h("a", { href: `#models/${encodeURIComponent(n)}`, text: n }), " "]));
  root.append(picker, links);
  if (selected) await showModel(root, page, selected);
  else root.append(h("p", { class: "hint", text: "No model yet." }));
}
