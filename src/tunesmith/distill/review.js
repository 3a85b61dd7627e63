(function () {
  "use strict";
  var rowsEl = document.getElementById("rows");
  var statusEl = document.getElementById("save-status");
  var conflictEl = document.getElementById("conflict");
  var state = null, order = [], byId = {}, cards = {}, current = 0, saves = 0;
  var mode = null, modeId = null, queue = Promise.resolve(), editSeq = 0, editOk = false, validateTimer = null,
    saveWhenChecked = false;
  // a decision is made at once (the next row becomes current) and saved in order behind the others:
  // pending[id] = {n: decisions of the row not answered yet, status: what the row will be once they are saved};
  // unsaved[id] = {action, extra, why}: the row's last decision the server refused (or never got)
  var pending = {}, unsaved = {}, sending = 0;

  function el(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined && text !== null) n.textContent = text;
    return n;
  }
  function setStatus(text, kind) { statusEl.textContent = text; statusEl.className = kind || ""; }
  function api(path, body) {
    var init = {method: body === undefined ? "GET" : "POST", cache: "no-store", credentials: "same-origin"};
    if (body !== undefined) { init.headers = {"Content-Type": "application/json"}; init.body = JSON.stringify(body); }
    return fetch(path, init).then(function (r) {
      return r.text().then(function (t) {
        var d = null;
        try { d = JSON.parse(t); } catch (e) { d = null; }
        return {status: r.status, data: d};
      });
    });
  }
  function errorText(res) {
    var e = res.data && res.data.error;
    if (!e || !e.message) return "HTTP " + res.status;
    var more = (e.details || []).slice(0, 3).join("; ");
    return e.message + (more ? " (" + more + ((e.details || []).length > 3 ? "; \u2026" : "") + ")" : "");
  }

  function turnBlock(card, title, text, cls) {
    card.appendChild(el("h3", null, title));
    card.appendChild(text.trim() ? el("pre", cls, text) : el("p", "empty", "(empty)"));
  }
  // what a row will be once the decisions queued for it are saved
  function statusOf(id) { return pending[id] ? pending[id].status : byId[id].status; }
  function expected(id, action) {
    if (action === "undo") return "unreviewed";
    if (action === "reject") return "rejected";
    if (action === "edit") return "edited";
    var now = statusOf(id);  // accepting an edited row keeps the edit
    return now === "edited" || (!pending[id] && byId[id].original !== null) ? "edited" : "accepted";
  }
  function fillCard(card, row) {
    var box = card.querySelector(".editor,.rejectbox");  // an editor open on the row stays open
    var focused = box && box.contains(document.activeElement) ? document.activeElement : null;
    var p = pending[row.id], shown = p ? p.status : row.status, u = unsaved[row.id];
    card.textContent = "";
    card.className = "row status-" + shown + (row.in_target ? "" : " beyond") +
      (order[current] === row.id ? " current" : "") + (p ? " pending" : "") + (u ? " not-saved" : "");
    card.setAttribute("data-status", row.status);  // what the file says
    if (p) card.setAttribute("data-pending", p.status); else card.removeAttribute("data-pending");
    if (u) card.setAttribute("data-unsaved", u.action); else card.removeAttribute("data-unsaved");
    var h = el("h2", null, row.rank + " / " + order.length + " ");
    h.appendChild(el("span", "note", "(line " + row.line + ")"));
    h.appendChild(el("span", "badge", p ? p.status + " (saving\u2026)" : row.status));
    if (!row.in_target) h.appendChild(el("span", "beyond-label", "beyond the review target"));
    card.appendChild(h);
    if (u) card.appendChild(el("p", "unsaved", "not saved: " + u.action + ": " + u.why + ". Decide again."));
    row.turns.forEach(function (t, i) {
      if (i === row.answer_index) turnBlock(card, "answer", row.answer, "answer");
      else turnBlock(card, t.role, t.content, "prompt");
    });
    if (row.original !== null) turnBlock(card, "original answer (before the edit)", row.original, "original");
    if (row.status === "rejected") card.appendChild(el("p", "reason", row.reason ? "rejected: " + row.reason : "rejected"));
    var p = row.provenance, bits = [];
    if (p) {
      if (p.teacher_model) bits.push("teacher " + p.teacher_model);
      if (p.answered_by && p.answered_by !== p.teacher_model) bits.push("answered by " + p.answered_by);
      if (p.created) bits.push("written " + p.created);
      if (p.generation) bits.push("generation " + p.generation);
    }
    if (row.at) bits.push("decided " + row.at);
    if (bits.length) card.appendChild(el("p", "note prov", bits.join(" \u00b7 ")));
    var actions = el("div", "actions");
    [["accept", "accept (a)"], ["edit", "edit (e)"], ["reject", "reject (r)"], ["undo", "undo (u)"]].forEach(function (a) {
      var b = el("button", null, a[1]);
      b.type = "button";
      b.setAttribute("data-act", a[0]);
      if (a[0] === "undo" && shown === "unreviewed") b.disabled = true;
      actions.appendChild(b);
    });
    card.appendChild(actions);
    if (box) { card.appendChild(box); if (focused) focused.focus(); }
  }
  function refresh(id) { if (cards[id] && byId[id]) fillCard(cards[id], byId[id]); }

  function render(s) {
    var keep = state ? order[current] : undefined;
    state = s;
    document.title = "review: " + s.file;
    document.getElementById("file").textContent = s.file;
    document.getElementById("contract").textContent = s.contract ? "contract: " + s.contract : "no output contract (any non-empty answer)";
    order = s.rows.map(function (r) { return r.id; });
    byId = {}; cards = {};
    s.rows.forEach(function (r) { byId[r.id] = r; });
    rowsEl.textContent = "";
    s.rows.forEach(function (r, i) {
      if (!r.in_target && (i === 0 || s.rows[i - 1].in_target)) {
        rowsEl.appendChild(el("h2", "divider", "Beyond the review target: the rest of the file, in file order"));
      }
      var card = el("article", "row");
      card.id = "row-" + r.id;
      card.setAttribute("data-id", String(r.id));
      cards[r.id] = card;
      fillCard(card, r);
      rowsEl.appendChild(card);
    });
    Object.keys(unsaved).forEach(function (id) { if (!byId[id]) delete unsaved[id]; });
    // across a reload the first row whose decision was not saved becomes current (to decide it again),
    // else the current row stays current
    var redo = order.filter(function (id) { return unsaved[id]; })[0];
    current = Math.max(0, order.indexOf(redo !== undefined ? redo : keep));
    showProgress(s.progress);
    conflictEl.hidden = !s.disk_changed;
    if (s.disk_changed) document.getElementById("conflict-text").textContent =
      s.file + " changed on disk since it was read (edited by hand?). Nothing will be saved until you reload it from disk; the hand edit is kept.";
    setCurrent(current, false);
  }
  function showProgress(p) {
    document.getElementById("progress").textContent = p.text;
    document.getElementById("total").textContent = p.rows + " rows in the file; the first " + p.target +
      " (the most diverse) are the review target";
  }
  function update(d) {
    state.version = d.version;
    state.progress = d.progress;
    byId[d.row.id] = d.row;
    state.rows[order.indexOf(d.row.id)] = d.row;
    fillCard(cards[d.row.id], d.row);
    showProgress(d.progress);
  }

  function setCurrent(i, scroll) {
    if (!order.length) return;
    var old = cards[order[current]];
    if (old) old.classList.remove("current");
    current = Math.max(0, Math.min(order.length - 1, i));
    var card = cards[order[current]];
    card.classList.add("current");
    if (scroll !== false && card.scrollIntoView) card.scrollIntoView({block: "nearest"});
  }
  function move(step) { closeModes(); setCurrent(current + step); }
  function nextUndecided() {
    for (var k = 1; k <= order.length; k++) {
      var i = (current + k) % order.length;
      if (statusOf(order[i]) === "unreviewed") { setCurrent(i); return true; }
    }
    return false;
  }

  function closeModes() {
    mode = null;
    modeId = null;
    saveWhenChecked = false;
    Array.prototype.forEach.call(document.querySelectorAll(".editor,.rejectbox"), function (n) { n.remove(); });
  }
  // the decision acts on the row current now (or the row whose editor saves it), the next undecided row
  // becomes current at once, and the save goes out after every earlier one (each reads the version the
  // one before it wrote)
  function decide(action, extra, id) {
    if (id === undefined || id === null) id = order[current];
    closeModes();
    var status = expected(id, action);
    var p = pending[id] || (pending[id] = {n: 0, status: status});
    p.n++;
    p.status = status;
    sending++;
    refresh(id);
    if (action !== "undo" && order[current] === id) nextUndecided();
    showSaveStatus();
    queue = queue.then(function () { return send(id, action, extra || {}); });
    return queue;
  }
  function send(id, action, extra) {
    var body = {id: id, action: action, version: state.version};
    Object.keys(extra).forEach(function (k) { body[k] = extra[k]; });
    return api("/api/decision", body).then(function (res) {
      if (res.status === 200) { saved(id, res.data); return; }
      if (res.status === 409) {
        conflictEl.hidden = false;
        document.getElementById("conflict-text").textContent = errorText(res) + ". Reload it from disk to go on; " +
          "the hand edit and every earlier decision are kept.";
      }
      var problems = res.status === 422 && res.data && res.data.problems;
      failed(id, action, extra, problems && problems.length ? "the answer " + problems.join("; ") : errorText(res));
    }).catch(function (e) { failed(id, action, extra, "the server is not reachable (" + e.message + ")"); });
  }
  function settle(id) {
    var p = pending[id];
    if (p && --p.n <= 0) delete pending[id];
    sending--;
  }
  function saved(id, d) {
    settle(id);
    delete unsaved[id];
    update(d);
    saves++;
    document.body.setAttribute("data-saves", String(saves));
    showSaveStatus();
  }
  function failed(id, action, extra, why) {
    settle(id);
    unsaved[id] = {action: action, extra: extra, why: why};
    refresh(id);
    setStatus("not saved: " + why, "bad");
  }
  function showSaveStatus() {
    var bad = Object.keys(unsaved).length;
    if (bad) setStatus(bad + (bad === 1 ? " decision" : " decisions") + " not saved (marked on the row" +
      (bad === 1 ? "" : "s") + ")" + (sending ? "; saving the rest\u2026" : ""), "bad");
    else if (sending) setStatus("saving\u2026");
    else setStatus(order.some(function (i) { return statusOf(i) === "unreviewed"; }) ? "saved"
      : "saved; every row has a decision", "ok");
  }

  function openEditor() {
    closeModes();
    var row = byId[order[current]], card = cards[row.id], u = unsaved[row.id];
    mode = "edit";
    modeId = row.id;
    var box = el("div", "editor");
    var ta = el("textarea", "answer-input");
    ta.value = u && u.action === "edit" ? u.extra.answer : row.answer;  // an edit not saved is not lost
    ta.spellcheck = false;
    ta.setAttribute("aria-label", "edit the answer");
    var problems = el("ul", "problems"), valid = el("p", "valid");
    var buttons = el("div", "buttons");
    var save = el("button", "save", "save (Ctrl+Enter)"), cancel = el("button", "cancel", "cancel (Esc)");
    save.type = cancel.type = "button";
    save.disabled = true;
    buttons.appendChild(save); buttons.appendChild(cancel);
    box.appendChild(ta); box.appendChild(problems); box.appendChild(valid); box.appendChild(buttons);
    card.appendChild(box);
    if (box.scrollIntoView) box.scrollIntoView({block: "nearest"});
    save.addEventListener("click", saveEdit);
    cancel.addEventListener("click", closeModes);
    ta.addEventListener("input", function () { scheduleValidate(150); });
    scheduleValidate(0);
    ta.focus();
  }
  function showProblems(list) {
    var box = document.querySelector(".editor");
    if (!box) return;
    var ul = box.querySelector(".problems");
    ul.textContent = "";
    list.forEach(function (p) { ul.appendChild(el("li", null, "the answer " + p)); });
    editOk = !list.length;
    box.querySelector(".valid").textContent = editOk ? "meets the contract" : "";
    box.querySelector(".save").disabled = !editOk;
    box.setAttribute("data-state", editOk ? "valid" : "invalid");
    if (saveWhenChecked) { saveWhenChecked = false; saveEdit(); }
  }
  function scheduleValidate(delay) {
    var seq = ++editSeq;
    editOk = false;
    var box = document.querySelector(".editor");
    if (box) {  // until the answer is checked, it cannot be saved (and shows no stale verdict)
      box.querySelector(".save").disabled = true;
      box.querySelector(".valid").textContent = "checking\u2026";
      box.setAttribute("data-state", "checking");
    }
    clearTimeout(validateTimer);
    validateTimer = setTimeout(function () {
      var ta = document.querySelector(".answer-input");
      if (!ta) return;
      api("/api/validate", {answer: ta.value}).then(function (res) {
        if (seq !== editSeq || mode !== "edit") return;
        if (res.status === 200) showProblems(res.data.problems);
        else setStatus("cannot validate: " + errorText(res), "bad");
      }).catch(function (e) { setStatus("cannot validate: the server is not reachable (" + e.message + ")", "bad"); });
    }, delay);
  }
  function saveEdit() {
    var box = document.querySelector(".editor");
    if (!box || mode !== "edit") return;
    if (box.getAttribute("data-state") === "checking") {  // Ctrl+Enter right after typing: save once checked
      saveWhenChecked = true;
      setStatus("checking the answer before saving\u2026");
      return;
    }
    if (!editOk) { setStatus("fix the problems shown before saving", "bad"); return; }
    decide("edit", {answer: box.querySelector(".answer-input").value}, modeId);
  }
  function openReject() {
    closeModes();
    var card = cards[order[current]];
    mode = "reject";
    modeId = order[current];
    var box = el("div", "rejectbox");
    var input = el("input", "reason-input");
    input.type = "text";
    input.maxLength = 2000;
    input.placeholder = "reason (optional); Enter rejects, Esc cancels";
    input.setAttribute("aria-label", "reason for rejecting");
    var ok = el("button", "confirm", "reject (Enter)"), cancel = el("button", "cancel", "cancel (Esc)");
    ok.type = cancel.type = "button";
    box.appendChild(input); box.appendChild(ok); box.appendChild(cancel);
    card.appendChild(box);
    ok.addEventListener("click", confirmReject);
    cancel.addEventListener("click", closeModes);
    input.focus();
  }
  function confirmReject() {
    var input = document.querySelector(".reason-input");
    if (!input || mode !== "reject") return;
    decide("reject", {reason: input.value}, modeId);
  }
  function act(action) {
    if (action === "edit") openEditor();
    else if (action === "reject") openReject();
    else { closeModes(); decide(action, {}); }
  }

  rowsEl.addEventListener("click", function (ev) {
    var card = ev.target.closest ? ev.target.closest("article.row") : null;
    if (!card) return;
    var i = order.indexOf(+card.getAttribute("data-id"));
    var btn = ev.target.closest("button[data-act]");
    if (i !== current && (btn || !ev.target.closest(".editor,.rejectbox"))) { closeModes(); setCurrent(i, false); }
    if (btn) act(btn.getAttribute("data-act"));
  });
  document.addEventListener("keydown", function (ev) {
    var t = ev.target, tag = t && t.tagName;
    if (tag === "TEXTAREA" || tag === "INPUT" || (t && t.isContentEditable)) {
      if (t.classList.contains("answer-input")) {
        if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); saveEdit(); }
        else if (ev.key === "Escape") { ev.preventDefault(); closeModes(); }
      } else if (t.classList.contains("reason-input")) {
        if (ev.key === "Enter") { ev.preventDefault(); confirmReject(); }
        else if (ev.key === "Escape") { ev.preventDefault(); closeModes(); }
      }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !state) return;
    if (tag === "BUTTON" && (ev.key === "Enter" || ev.key === " ")) return;
    var key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    var keys = {a: "accept", e: "edit", r: "reject", u: "undo"};
    if (keys[key]) act(keys[key]);
    else if (key === "j" || key === "ArrowDown") move(1);
    else if (key === "k" || key === "ArrowUp") move(-1);
    else if (key === "n") { closeModes(); if (!nextUndecided()) setStatus("every row has a decision", "ok"); }
    else if (key === "Escape") closeModes();
    else return;
    ev.preventDefault();
  });
  document.getElementById("reload").addEventListener("click", function () {
    closeModes();
    queue = queue.then(function () {
      return api("/api/reload", {}).then(function (res) {
        if (res.status === 200) { render(res.data); setStatus("read again from disk", "ok"); }
        else setStatus("cannot reload: " + errorText(res), "bad");
      }).catch(function (e) { setStatus("cannot reload: the server is not reachable (" + e.message + ")", "bad"); });
    });
  });

  api("/api/state").then(function (res) {
    if (res.status !== 200) { setStatus("cannot load the rows: " + errorText(res), "bad"); return; }
    render(res.data);
    setStatus("every decision is saved to " + res.data.file + " at once");
    document.body.setAttribute("data-ready", "1");
  }).catch(function (e) { setStatus("the server is not reachable (" + e.message + ")", "bad"); });
})();
