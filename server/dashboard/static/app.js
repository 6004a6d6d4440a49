// Sign-in, sign-out and the page router. Each page is a module with render(root, page); the
// page object runs its timers and streams and stops them all when another page is opened.

import { ApiError, session, signIn } from "./api.js";
import { clear } from "./dom.js";
import * as overview from "./page-overview.js";
import * as sandboxes from "./page-sandboxes.js";
import * as cycles from "./page-cycles.js";
import * as models from "./page-models.js";
import * as consensus from "./page-consensus.js";
import * as telemetry from "./page-telemetry.js";

const PAGES = { overview, sandboxes, cycles, models, consensus, telemetry };
const $ = (id) => document.getElementById(id);

class Page {
  constructor(root) {
    this.root = root;
    this.controller = new AbortController();
    this.timers = [];
    this.cleanups = [];
  }

  get signal() { return this.controller.signal; }
  get closed() { return this.controller.signal.aborted; }

  // Runs fn now and every `ms` after it finishes, until the page closes; errors are shown.
  every(ms, fn) {
    const tick = async () => {
      if (this.closed) return;
      try { await fn(); } catch (error) { this.fail(error); }
      if (!this.closed) this.timers.push(setTimeout(tick, ms));
    };
    tick();
  }

  onClose(fn) { this.cleanups.push(fn); }

  fail(error) {
    if (this.closed) return;
    if (error instanceof ApiError && error.status === 401) {
      signOut("The token was refused (401); sign in again.");
      return;
    }
    $("page-error").textContent = error instanceof ApiError ? `${error.status} ${error.code}: ${error.message}` : String(error);
  }

  close() {
    this.controller.abort();
    this.timers.forEach(clearTimeout);
    this.cleanups.forEach((fn) => fn());
  }
}

let current = null;

function route() {
  if (!session.token) return showSignIn();
  const [name, ...rest] = (location.hash.slice(1) || "overview").split("/");
  const module = PAGES[name] || overview;
  if (current) current.close();
  $("page-error").textContent = "";
  const root = clear($("page"));
  root.dataset.page = PAGES[name] ? name : "overview";
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.page === root.dataset.page);
  current = new Page(root);
  const page = current;
  Promise.resolve(module.render(root, page, rest.map(decodeURIComponent))).catch((error) => page.fail(error));
}

function showApp() {
  $("sign-in").hidden = true;
  $("page").hidden = false;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = session.isAdmin ? "signed in as admin" : "signed in as an agent";
}

function showSignIn(message = "") {
  if (current) { current.close(); current = null; }
  clear($("page"));
  $("page").hidden = true;
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("token").value = "";
}

function signOut(message = "") {
  session.clear();
  showSignIn(message);
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  try {
    const role = await signIn(token);
    session.save(token, role);
    $("token").value = "";
    showApp();
    if (!location.hash) location.hash = "#overview";
    else route();
  } catch (error) {
    $("sign-in-error").textContent = error instanceof ApiError && error.status === 401
      ? "That token is not the admin's or any agent's."
      : `Sign-in failed: ${error.message}`;
  }
});

$("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);

if (session.token) { showApp(); route(); } else showSignIn();
