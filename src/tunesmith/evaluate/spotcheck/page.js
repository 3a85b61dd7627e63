(function () {
  "use strict";
  var root = document.getElementById("spotcheck");
  var pageId = root.getAttribute("data-spotcheck");
  var served = location.protocol === "http:" || location.protocol === "https:";
  var storeKey = "tunesmith-spotcheck:" + pageId;
  var articles = Array.prototype.slice.call(document.querySelectorAll("article.item"));
  var ids = articles.map(function (a) { return a.getAttribute("data-item-id"); });
  var state = {};
  ids.forEach(function (id) { state[id] = {ship_A: null, ship_B: null, preference: null}; });
  var statusEl = document.getElementById("save-status");
  function setStatus(t) { statusEl.textContent = t; }

  function apply(answers) {
    if (!answers || typeof answers !== "object") return;
    ids.forEach(function (id) {
      var a = answers[id];
      if (!a || typeof a !== "object") return;
      ["ship_A", "ship_B", "preference"].forEach(function (f) { if (f in a) state[id][f] = a[f]; });
    });
  }
  function render() {
    var done = 0;
    articles.forEach(function (art, idx) {
      var s = state[ids[idx]];
      art.querySelectorAll("input[type=radio]").forEach(function (inp) {
        var f = inp.getAttribute("data-field"), v = s[f];
        var want = f === "preference" ? v : (v === true ? "yes" : v === false ? "no" : null);
        inp.checked = want !== null && inp.value === want;
      });
      var complete = s.ship_A !== null && s.ship_B !== null && s.preference !== null;
      art.classList.toggle("done", complete);
      if (complete) done++;
    });
    document.getElementById("progress").textContent = done + " / " + ids.length + " answered";
  }
  function doc() {
    return {spotcheck: pageId, updated: new Date().toISOString(), answers: state};
  }
  function saveLocal() {
    try { localStorage.setItem(storeKey, JSON.stringify(doc())); } catch (e) { /* storage may be off */ }
  }
  var queue = Promise.resolve();
  function post(body) {
    queue = queue.then(function () {
      return fetch("/answers", {method: "POST", headers: {"Content-Type": "application/json"},
                                body: JSON.stringify(body), cache: "no-store"});
    }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      setStatus("saved to answers.json");
    }).catch(function (e) {
      setStatus("could not save to the server (" + e.message + "); answers are kept in this browser: use download");
    });
    return queue;
  }
  function onChange(ev) {
    var inp = ev.target;
    if (!inp || !inp.getAttribute) return;
    var f = inp.getAttribute("data-field");
    if (!f) return;
    var id = ids[+inp.getAttribute("data-idx")];
    state[id][f] = f === "preference" ? inp.value : inp.value === "yes";
    render();
    saveLocal();
    if (served) {
      var s = state[id];
      post({id: id, ship_A: s.ship_A, ship_B: s.ship_B, preference: s.preference});
    } else {
      setStatus("saved in this browser (download the answers when done)");
    }
  }
  root.addEventListener("change", onChange);
  document.getElementById("download").addEventListener("click", function () {
    var blob = new Blob([JSON.stringify(doc(), null, 2) + "\n"], {type: "application/json"});
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "answers.json";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  });

  try { apply((JSON.parse(localStorage.getItem(storeKey) || "null") || {}).answers); } catch (e) { /* ignore */ }
  var ready = served
    ? fetch("/answers", {cache: "no-store"}).then(function (r) { return r.ok ? r.json() : null; })
        .then(function (d) {
          if (d) apply(d.answers);
          setStatus("answers are saved to the server as you go");
        })
        .catch(function () { setStatus("server not reachable; answers are kept in this browser"); })
    : Promise.resolve().then(function () {
        setStatus("opened as a file: answers are kept in this browser; use download when done");
      });
  ready.then(function () {
    render();
    document.body.setAttribute("data-rendered", "1");
  });
})();
