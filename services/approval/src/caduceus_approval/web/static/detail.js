// A call's page script, served from /static so the page runs under its Content-Security-Policy (script-src
// 'self', no inline script): the time left counts down, and the page reloads when the call's status changes
// elsewhere (not while the approver is typing a comment, and not for the news the page already shows: the
// answer given on this page comes back on the stream too).
(function () {
  "use strict";
  var left = document.getElementById("left");
  if (left) {
    var expires = Date.parse(left.dataset.expires);
    setInterval(function () {
      var s = Math.max(0, Math.round((expires - Date.now()) / 1000));
      left.textContent = s === 0 ? "expired" : (s < 60 ? s + " s left" : Math.floor(s / 60) + " min left");
    }, 1000);
  }
  var status = document.getElementById("status");
  if (!status || !window.EventSource) return;
  var callId = status.dataset.callId;
  new EventSource("/events").addEventListener("approval", function (e) {
    var data = JSON.parse(e.data);
    var typing = document.activeElement && document.activeElement.id === "comment";
    if (data.call_id === callId && data.status !== status.dataset.status && !typing) window.location.reload();
  });
})();
