// The web chat's page script: live updates over SSE, sending without a reload, and the approvals panel.
// Everything received is shown with textContent, never parsed as HTML.
(function () {
  "use strict";
  const app = document.getElementById("app");
  if (!app) return;
  const csrf = app.dataset.csrf;
  const conversation = app.dataset.conversation;
  const transcript = document.getElementById("transcript");

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function scrollDown() { window.scrollTo(0, document.body.scrollHeight); }

  function callItem(update) {
    let item = transcript.querySelector('li.call[data-call-id="' + CSS.escape(update.call_id) + '"]');
    if (!item) {
      item = el("li", "entry call");
      item.dataset.callId = update.call_id;
      const head = el("div", "call-head");
      head.appendChild(el("span", "tool", update.tool || ""));
      item.appendChild(head);
      transcript.appendChild(item);
    }
    return item;
  }

  function show(update) {
    if (update.kind === "call") {
      const item = callItem(update);
      item.appendChild(el("pre", "args", JSON.stringify(update.args || {}, null, 1)));
    } else if (update.kind === "decision") {
      const item = callItem(update);
      item.querySelector(".call-head").appendChild(el("span", "verdict " + update.status, update.status));
      item.appendChild(el("p", "reason", update.status + ": " + (update.text || "")));
    } else if (update.kind === "outcome") {
      const item = callItem(update);
      item.querySelector(".call-head").appendChild(el("span", "outcome " + update.status, update.status));
      item.appendChild(el("pre", "result", update.text || ""));
    } else if (update.kind === "notice") {
      transcript.appendChild(el("li", "entry notice", update.text));
      refreshApprovals();
    } else if (update.kind === "error") {
      transcript.appendChild(el("li", "entry error", update.text));
      setBusy(false);
    } else if (update.kind === "reply") {
      transcript.appendChild(el("li", "entry agent " + (update.status || "ok"), update.text));
      setBusy(false);
    }
    scrollDown();
  }

  const compose = document.getElementById("compose");
  function setBusy(busy) {
    if (!compose) return;
    compose.querySelector("button").disabled = busy;
  }

  if (conversation && transcript) {
    const events = new EventSource("/c/" + encodeURIComponent(conversation) + "/events");
    let lost = false;
    events.addEventListener("update", function (event) { show(JSON.parse(event.data)); });
    // The stream came back after a break: what happened meanwhile is stored, so show the conversation as kept.
    events.addEventListener("error", function () { lost = true; });
    events.addEventListener("open", function () {
      if (lost && !compose.querySelector("textarea").value) window.location.reload();
    });
    compose.addEventListener("submit", async function (event) {
      event.preventDefault();
      const box = compose.querySelector("textarea");
      const text = box.value.trim();
      if (!text) return;
      setBusy(true);
      const response = await fetch("/c/" + encodeURIComponent(conversation) + "/messages", {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
        body: JSON.stringify({text: text}),
      }).catch(function () { return null; });
      if (!response) {  // no answer at all: the chat is restarting, or the network is down
        transcript.appendChild(el("li", "entry error", "not sent: the chat could not be reached (it may be " +
                                                       "restarting); send your message again in a moment"));
        setBusy(false);
      } else if (response.ok) {
        if (!transcript.querySelector("li.person")) {  // the conversation is named after its first message
          const title = document.querySelector(".conversation-title");
          const current = document.querySelector("#conversations a[aria-current] .title");
          const name = text.split(/\s+/).join(" ").slice(0, 80);
          if (title && title.firstChild) title.firstChild.textContent = name + " ";
          if (current) current.textContent = name;
        }
        transcript.appendChild(el("li", "entry person", text));
        box.value = "";
      } else {
        const body = await response.json().catch(function () { return {}; });
        transcript.appendChild(el("li", "entry error", body.error || ("not sent (HTTP " + response.status + ")")));
        setBusy(false);
      }
      scrollDown();
    });
    compose.querySelector("textarea").addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); compose.requestSubmit(); }
    });
  }

  // --- approvals waiting for the signed-in person -------------------------------------------------------
  const panel = document.getElementById("approvals");
  const list = document.getElementById("approval-list");

  function minutesLeft(iso) {
    const left = Math.round((Date.parse(iso) - Date.now()) / 60000);
    return left <= 0 ? "expiring" : "expires in " + left + " min";
  }

  async function answer(approval, verdict, item) {
    item.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    const response = await fetch("/api/approvals/" + encodeURIComponent(approval.call_id) + "/" + verdict, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify({digest: approval.digest}),
    });
    const body = await response.json().catch(function () { return {}; });
    if (response.ok) {
      item.replaceChildren(el("p", "answered", "You answered " + verdict + " for " + approval.tool + ": " + body.status));
    } else {
      item.appendChild(el("p", "answer-error", body.error || ("not counted (HTTP " + response.status + ")")));
      item.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
    }
  }

  async function refreshApprovals() {
    if (!panel || app.dataset.approvals !== "on") return;
    const response = await fetch("/api/approvals", {credentials: "same-origin"}).catch(function () { return null; });
    if (!response || !response.ok) return;
    const body = await response.json();
    const shown = new Set();
    body.approvals.forEach(function (approval) {
      shown.add(approval.call_id);
      if (list.querySelector('li[data-call-id="' + CSS.escape(approval.call_id) + '"]')) return;
      const item = el("li");
      item.dataset.callId = approval.call_id;
      item.appendChild(el("div", "tool", approval.tool));
      item.appendChild(el("div", "meta", "asked by " + approval.requester + " in " + approval.workspace + ", " +
                                         minutesLeft(approval.expires_at)));
      item.appendChild(el("pre", "args", JSON.stringify(approval.args, null, 1)));
      item.appendChild(el("p", "reason", approval.reason));
      const actions = el("div", "actions");
      const yes = el("button", "approve", "Approve");
      const no = el("button", "deny", "Deny");
      yes.type = no.type = "button";
      yes.addEventListener("click", function () { answer(approval, "approve", item); });
      no.addEventListener("click", function () { answer(approval, "deny", item); });
      actions.append(yes, no);
      item.appendChild(actions);
      list.appendChild(item);
    });
    list.querySelectorAll("li[data-call-id]").forEach(function (item) {
      if (!shown.has(item.dataset.callId) && item.querySelector("button")) item.remove();
    });
    panel.hidden = list.children.length === 0;
  }

  if (panel) {
    refreshApprovals();
    setInterval(refreshApprovals, 3000);
  }
})();
