// Building the page: every value is set as text (textContent), never parsed as HTML, so an
// agent's id, a model name or a log line with markup in it shows as the characters it is.

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "text") element.textContent = String(value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(element) {
  element.replaceChildren();
  return element;
}

export function table(columns, rows, rowAttrs = () => ({})) {
  const head = h("tr", {}, columns.map((c) => h("th", { text: c.label })));
  const body = rows.map((row) =>
    h("tr", rowAttrs(row), columns.map((c) => {
      const value = c.value(row);
      const cls = [c.num ? "num" : "", c.nowrap ? "nowrap" : "", c.wrap ? "wrap" : ""].join(" ").trim() || undefined;
      return h("td", { class: cls }, value instanceof Node ? value : fmt(value));
    })),
  );
  return h("table", {}, h("thead", {}, head), h("tbody", {}, body));
}

export function card(label, value, attrs = {}) {
  return h("div", { class: "card", ...attrs }, h("div", { class: "label", text: label }), h("div", { class: "value", text: fmt(value) }));
}

export function fmt(value) {
  if (value === undefined || value === null) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function bytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function time(ms) {
  if (!ms) return "–";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}
