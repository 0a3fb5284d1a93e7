// edgeq dashboard: refresh the page every few seconds while nothing is selected or typed,
// and "select all" for the bulk forms. The pages work without this file.
(function () {
  "use strict";
  var seconds = parseInt(document.body.dataset.refresh || "0", 10);
  var busy = function () {
    var el = document.activeElement;
    if (el && (el.tagName === "INPUT" || el.tagName === "SELECT" || el.tagName === "TEXTAREA")) return true;
    return document.querySelector("input[type=checkbox]:checked") !== null;
  };
  if (seconds > 0) {
    setInterval(function () { if (!busy() && !document.hidden) location.reload(); }, seconds * 1000);
  }
  document.addEventListener("change", function (ev) {
    var all = ev.target.closest("[data-all]");
    if (!all) return;
    document.querySelectorAll("input[type=checkbox][name=id]").forEach(function (box) { box.checked = all.checked; });
  });
})();
