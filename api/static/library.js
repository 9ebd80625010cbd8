/* The library page, live: poll the summaries, swap in server-rendered entries that
   changed, draw playback progress on the waveform. Without this script the page still
   works; it just needs a reload to show progress. */
(function () {
  "use strict";

  var list = document.getElementById("entries");
  if (!list) { return; }
  var pollUrl = list.dataset.pollUrl;
  var entryUrl = list.dataset.entryUrl;
  var firstPage = list.dataset.firstPage === "1";
  var live = document.getElementById("library-live");
  var empty = document.getElementById("library-empty");
  var FAST_MS = 1500;
  var SLOW_MS = 5000;
  var timer = null;
  var stopped = false;

  function entries() {
    return Array.prototype.slice.call(list.querySelectorAll(":scope > li.entry"));
  }

  function entryFor(uploadId) {
    return document.getElementById("entry-" + uploadId);
  }

  function isFinal(status) {
    return status === "IN_LIBRARY" || status === "FAILED";
  }

  function unfinishedIds() {
    return entries().filter(function (el) { return !isFinal(el.dataset.status); })
      .map(function (el) { return el.dataset.uploadId; });
  }

  function toElement(html) {
    var template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  function place(el) {
    var created = Number(el.dataset.createdMs);
    var older = entries().find(function (other) {
      return Number(other.dataset.createdMs) < created;
    });
    list.insertBefore(el, older || null);
  }

  function announce(summary, arrived) {
    if (!live) { return; }
    if (summary.status === "IN_LIBRARY") {
      live.textContent = summary.title + " is ready in your library.";
    } else if (summary.status === "FAILED") {
      live.textContent = summary.title + " could not be added. " + (summary.reason || "");
    } else if (arrived) {
      live.textContent = summary.title + " arrived from " + summary.app + " and is being processed.";
    }
  }

  function isPlaying(el) {
    return Array.prototype.some.call(el.querySelectorAll("audio"), function (audio) {
      return !audio.paused;
    });
  }

  function refresh(summary, current) {
    var fresh = !current || current.dataset.status !== "IN_LIBRARY";
    var url = entryUrl.replace("UPLOAD_ID", encodeURIComponent(summary.upload_id)) +
      (fresh ? "?fresh=1" : "");
    return fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var el = toElement(html);
        var now = entryFor(summary.upload_id);
        if (now) { now.replaceWith(el); } else { place(el); }
        wire(el);
        if (empty) { empty.hidden = true; }
        if (!current || current.dataset.status !== el.dataset.status) {
          announce(summary, !current);
        }
      });
  }

  function apply(data) {
    var work = [];
    data.uploads.forEach(function (summary) {
      var current = entryFor(summary.upload_id);
      if (current && current.dataset.version === summary.version) { return; }
      if (!current && !(firstPage && data.newest.indexOf(summary.upload_id) >= 0)) { return; }
      if (current && isPlaying(current)) { return; }
      work.push(refresh(summary, current));
    });
    data.missing.forEach(function (uploadId) {
      var el = entryFor(uploadId);
      if (el) { el.remove(); }
    });
    return Promise.all(work);
  }

  function schedule() {
    clearTimeout(timer);
    if (stopped || document.hidden) { return; }
    timer = setTimeout(poll, unfinishedIds().length ? FAST_MS : SLOW_MS);
  }

  function poll() {
    var ids = unfinishedIds();
    var url = pollUrl + (ids.length ? "?ids=" + encodeURIComponent(ids.join(",")) : "");
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.redirected || response.status === 401 || response.status === 403) {
          stopped = true;  // signed out meanwhile: stop asking
          return null;
        }
        return response.ok ? response.json() : null;
      })
      .then(function (body) { return body ? apply(body.data) : null; })
      .catch(function () { /* a missed poll is retried by the next one */ })
      .then(schedule);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { clearTimeout(timer); } else { poll(); }
  });

  /* One sound at a time; the waveform shows how far it has played and seeks on click. */
  function wire(root) {
    root.querySelectorAll("audio").forEach(function (audio) {
      audio.addEventListener("play", function () {
        document.querySelectorAll("audio").forEach(function (other) {
          if (other !== audio && !other.paused) { other.pause(); }
        });
      });
    });
    root.querySelectorAll("[data-player]").forEach(function (player) {
      var audio = player.querySelector("audio.player-audio");
      var svg = player.querySelector("svg.waveform");
      var rect = svg ? svg.querySelector(".wave-played-rect") : null;
      if (!audio || !svg || !rect) { return; }
      var width = svg.viewBox.baseVal.width;
      function draw() {
        var duration = audio.duration;
        var played = duration ? width * Math.min(1, audio.currentTime / duration) : 0;
        rect.setAttribute("width", String(played));
      }
      ["timeupdate", "seeked", "loadedmetadata", "ended", "emptied"].forEach(function (name) {
        audio.addEventListener(name, draw);
      });
      svg.addEventListener("click", function (event) {
        var box = svg.getBoundingClientRect();
        var fraction = Math.max(0, Math.min(1, (event.clientX - box.left) / box.width));
        function seek() { audio.currentTime = fraction * audio.duration; }
        if (audio.readyState >= 1 && audio.duration) { seek(); } else {
          audio.addEventListener("loadedmetadata", seek, { once: true });
          audio.load();
        }
      });
    });
  }

  wire(document);
  schedule();
}());
