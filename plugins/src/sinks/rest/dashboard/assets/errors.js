// Loaded first, as a classic script: keeps every uncaught error of the
// page's scripts (window.flowpulseErrors) and shows the newest in the
// banner, so a failure is visible instead of a blank panel.
(function () {
  "use strict";
  var errors = [];
  window.flowpulseErrors = errors;
  function show(text) {
    if (errors.length < 50) errors.push(text);
    var banner = document.getElementById("banner-error");
    if (banner) banner.textContent = "The page hit an error: " + text;
  }
  window.addEventListener("error", function (e) {
    show(e.message || String(e.error || "error"));
  });
  window.addEventListener("unhandledrejection", function (e) {
    show(String(e.reason && e.reason.message ? e.reason.message : e.reason));
  });
})();
