// The inbox's page script, served from /static so the page runs under its Content-Security-Policy
// (script-src 'self', no inline script). Progressive: without JavaScript the page is complete; with it, new
// requests appear as they arrive (the server renders the rows; they replace the list as they are).
(function () {
  "use strict";
  var list = document.getElementById("inbox");
  if (!list || !window.EventSource) return;
  function refresh() {
    fetch("/inbox", {credentials: "same-origin"}).then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) list.innerHTML = html; });
  }
  var source = new EventSource("/events");
  source.addEventListener("approval", refresh);
  source.addEventListener("open", refresh);
})();
