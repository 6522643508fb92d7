// Steppe UI: live refresh without a framework. Every few seconds, fetch this page again and swap
// the contents of <main id="live"> (escaped, server-rendered HTML), keeping <details> open or
// closed as the user left them. Off while a form field has focus or the tab is hidden; the
// choice is remembered. Pages work without this file (a meta-refresh link stands in for it).
(function () {
  "use strict";
  var PERIOD_MS = 3000;
  var KEY = "steppe-ui-live";
  var main = document.getElementById("live");
  var toggle = document.getElementById("live-toggle");
  if (!main || !toggle || main.dataset.live !== "on") return;
  toggle.parentElement.hidden = false;
  toggle.checked = window.localStorage.getItem(KEY) !== "off";
  toggle.addEventListener("change", function () {
    window.localStorage.setItem(KEY, toggle.checked ? "on" : "off");
  });

  function editing() {
    var el = document.activeElement;
    return el && main.contains(el) && /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName);
  }

  function tick() {
    if (!toggle.checked || document.hidden || editing()) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Steppe-Live": "1" } })
      .then(function (response) {
        return response.ok ? response.text() : null;
      })
      .then(function (text) {
        if (text === null) return;
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("live");
        if (!fresh) {
          window.location.reload(); // signed out: the login page
          return;
        }
        var state = {};
        main.querySelectorAll("details[id]").forEach(function (d) { state[d.id] = d.open; });
        var dag = main.querySelector("figure.dag");
        var scroll = dag ? [dag.scrollLeft, dag.scrollTop] : null;
        main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
        main.querySelectorAll("details[id]").forEach(function (d) {
          if (d.id in state) d.open = state[d.id];
        });
        dag = main.querySelector("figure.dag");
        if (dag && scroll) {
          dag.scrollLeft = scroll[0];
          dag.scrollTop = scroll[1];
        }
        if (fresh.dataset.live !== "on") {
          window.clearInterval(timer);
          main.dataset.live = "off";
        }
      })
      .catch(function () { /* the server restarts or the network blips: try again next tick */ });
  }

  var timer = window.setInterval(tick, PERIOD_MS);
})();
