// The panels, updated in place: each keyed row or tile is made once and
// then only its text changes.

import * as fmt from "./format.js";

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.appendChild(c);
  return e;
}

function setText(e, text) {
  if (e.textContent !== text) e.textContent = text;
}

export function cards(doc) {
  const o = doc.overview;
  const set = (id, text) => setText(document.getElementById(id), text);
  set("card-total", fmt.exact(o.total_workflows));
  set("card-running", fmt.exact(o.running_workflows));
  set("card-paused", fmt.exact(o.paused_workflows));
  set("card-completed", fmt.exact(o.completed_workflows));
  set("card-failed", fmt.exact(o.failed_workflows));
  set("card-cancelled", fmt.exact(o.cancelled_workflows));
  set("card-success", fmt.percent(o.success_rate_percent));
  set("card-error", fmt.percent(o.error_rate_percent));
  set("card-throughput", fmt.perMinute(doc.throughput_per_minute));
}

/** Keyed children of `parent`: made by `make(key)` once, updated by `update(el, item)`. */
function keyed(parent, items, key, make, update) {
  const existing = new Map();
  for (const child of parent.children) existing.set(child.dataset.key, child);
  let before = parent.firstChild;
  for (const item of items) {
    const k = key(item);
    let e = existing.get(k);
    if (e) existing.delete(k);
    else {
      e = make(item);
      e.dataset.key = k;
    }
    update(e, item);
    if (e !== before) parent.insertBefore(e, before);
    else before = before.nextSibling;
    before = e.nextSibling;
  }
  for (const stale of existing.values()) stale.remove();
}

function health(rate) {
  if (rate >= 95) return "good";
  if (rate >= 80) return "warn";
  return "bad";
}

export function agents(container, list, asOfMs) {
  keyed(
    container,
    list,
    (a) => a.agent_type,
    (a) => h("div", { class: "tile", role: "listitem" },
      h("div", { class: "name", text: a.agent_type }),
      h("div", { class: "stats" })),
    (e, a) => {
      e.dataset.health = health(a.success_rate_percent);
      const seen = Date.parse(a.last_seen);
      const age = Number.isNaN(seen) ? "never" : fmt.ago(Math.max(0, asOfMs - seen));
      setText(e.lastChild, `${fmt.percent(a.success_rate_percent)} success · p95 ${fmt.duration(a.p95_duration_ms)} · ${fmt.count(a.total_tasks)} tasks · seen ${age}`);
      e.setAttribute("aria-label", `${a.agent_type}: ${e.lastChild.textContent}`);
    },
  );
}

export function types(tbody, list) {
  keyed(
    tbody,
    list,
    (t) => t.workflow_type,
    (t) => h("tr", {}, h("th", { scope: "row", text: t.workflow_type }), h("td"), h("td"), h("td"), h("td")),
    (e, t) => {
      const c = e.children;
      setText(c[1], fmt.exact(t.total));
      setText(c[2], fmt.exact(t.completed));
      setText(c[3], fmt.exact(t.failed));
      setText(c[4], fmt.percent(t.success_rate_percent));
    },
  );
}

/**
 * Alerts as list items with their buttons; `actions` has acknowledge(alert,
 * comment, until), resolve(alert) and history(alert) returning the changes.
 */
export function alerts(list, items, actions) {
  keyed(
    list,
    items,
    (a) => a.id,
    (a) => {
      const li = h("li", { class: "alert" });
      const head = h("div", { class: "head" },
        h("span", { class: "sevtag" }),
        h("span", { class: "title" }),
        h("span", { class: "state muted" }),
        h("span", { class: "mute-tag" }));
      const message = h("div", { class: "message" });
      const value = h("div", { class: "muted value" });
      const buttons = h("div", { class: "actions" });
      const comment = h("input", { "aria-label": "Comment", placeholder: "comment (optional)", class: "ack-comment" });
      const until = h("input", { type: "datetime-local", "aria-label": "Acknowledged until (optional)", class: "ack-until" });
      const ack = h("button", { type: "button", class: "ack", text: "Acknowledge" });
      const resolve = h("button", { type: "button", class: "resolve", text: "Resolve" });
      const show = h("button", { type: "button", class: "show-history", "aria-expanded": "false", text: "History" });
      const runbook = h("a", { class: "runbook", rel: "noreferrer", text: "Runbook" });
      const answer = h("span", { class: "answer", role: "status" });
      buttons.append(comment, until, ack, resolve, show, runbook, answer);
      const history = h("ol", { class: "history" });
      history.hidden = true;
      li.append(head, message, value, buttons, history);
      const run = async (button, action) => {
        button.disabled = true;
        answer.className = "answer";
        answer.textContent = "";
        try {
          await action();
        } catch (e) {
          answer.className = "answer error";
          answer.textContent = e.message;
        } finally {
          button.disabled = false;
        }
      };
      ack.addEventListener("click", () => run(ack, () => {
        const u = until.value ? new Date(until.value).toISOString() : undefined;
        return actions.acknowledge(li.alert, comment.value || undefined, u);
      }));
      resolve.addEventListener("click", () => run(resolve, () => actions.resolve(li.alert)));
      show.addEventListener("click", () => run(show, async () => {
        if (!history.hidden) {
          history.hidden = true;
          show.setAttribute("aria-expanded", "false");
          return;
        }
        const changes = await actions.history(li.alert);
        history.replaceChildren(...changes.map((c) => h("li", {
          text: `${fmt.time(c.at)}: ${c.from_status || "–"} → ${c.to_status} by ${c.actor}${c.comment ? ` (“${c.comment}”)` : ""}`,
        })));
        history.hidden = false;
        show.setAttribute("aria-expanded", "true");
      }));
      return li;
    },
    (li, a) => {
      li.alert = a;
      li.dataset.severity = a.severity;
      li.dataset.status = a.status;
      const [sev, title, state, mute] = li.firstChild.children;
      setText(sev, a.severity.toUpperCase());
      setText(title, a.instance ? `${a.rule_name} (${a.instance})` : a.rule_name);
      const by = a.status === "acknowledged" ? ` by ${a.acknowledged_by}` : a.status === "resolved" ? ` by ${a.resolved_by}` : "";
      setText(state, `${a.status}${by} · since ${fmt.time(a.created_at)}`);
      setText(mute, a.muted ? "muted" : "");
      setText(li.children[1], a.message);
      setText(li.children[2], `${a.metric} = ${a.value === null || a.value === undefined ? "no value" : a.value} (${a.operator} ${a.threshold})`);
      const buttons = li.children[3];
      const open = a.status !== "resolved";
      for (const b of buttons.querySelectorAll(".ack, .ack-comment, .ack-until")) b.hidden = a.status !== "triggered";
      buttons.querySelector(".resolve").hidden = !open;
      const runbook = buttons.querySelector(".runbook");
      if (a.runbook_url && /^https?:\/\//.test(a.runbook_url)) {
        runbook.href = a.runbook_url;
        runbook.hidden = false;
      } else {
        runbook.removeAttribute("href");
        runbook.hidden = true;
      }
      for (const b of buttons.querySelectorAll("button, input")) {
        const label = b.getAttribute("aria-label") || b.textContent;
        if (b.tagName === "BUTTON") b.setAttribute("aria-label", `${b.textContent}: ${title.textContent}`);
        else b.setAttribute("aria-label", label.split(":")[0] + `: ${title.textContent}`);
      }
    },
  );
}

/** One event as a line. */
export function eventLine(e) {
  const what = e.agent_type || e.workflow_type || "";
  return `${e.timestamp || ""}  ${e.type || "?"}  ${e.workflow_id || ""}  ${what}`;
}
