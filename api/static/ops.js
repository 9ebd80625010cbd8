/* The operator console: load the worker panel after the page (asking the workers takes
   up to a couple of seconds), and confirm before cancelling a job. */
(function () {
  "use strict";

  var panel = document.getElementById("workers-panel");
  var body = document.getElementById("workers-body");
  if (panel && body) {
    fetch(panel.dataset.src, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) { body.innerHTML = html; })
      .catch(function (error) {
        body.textContent = "Could not ask the workers: " + error.message;
      });
  }

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
    });
  });
}());
