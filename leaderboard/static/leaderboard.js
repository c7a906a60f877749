// sparsebench leaderboard: sorting and filtering driven by data attributes. No dependencies,
// no network: works from file://.
//   <table data-sortable>      th[data-kind="num"|"text"][data-better="asc"|"desc"|""]
//   td[data-sort]              the sort key; a cell without one (missing value) sorts last
//   form[data-filters=TABLE]   [data-filter="text"|"method"|"failed"|"columns"] controls
//   form[data-suite-filter]    suites (checkboxes) and [data-filter="reported"]: every table
//   tr[data-method][data-status][data-kind][data-suites]
(function () {
  "use strict";

  function sortKey(cell, kind) {
    if (!cell || !cell.hasAttribute("data-sort")) return null;
    var raw = cell.getAttribute("data-sort");
    if (kind === "num") {
      var f = parseFloat(raw);
      return isNaN(f) ? null : f;
    }
    return raw.toLowerCase();
  }

  function sortBy(table, th) {
    var headers = Array.prototype.slice.call(th.parentNode.children);
    var col = headers.indexOf(th);
    var kind = th.getAttribute("data-kind");
    var current = th.getAttribute("aria-sort");
    // First click: best first for metrics (data-better), ascending otherwise; then toggle.
    var dir;
    if (current === "ascending") dir = "descending";
    else if (current === "descending") dir = "ascending";
    else dir = th.getAttribute("data-better") === "desc" ? "descending" : "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (row, i) {
      return { row: row, pos: i, key: sortKey(row.cells[col], kind) };
    });
    keyed.sort(function (a, b) {
      if (a.key === null || b.key === null) {  // missing values last in either direction
        if (a.key === b.key) return a.pos - b.pos;
        return a.key === null ? 1 : -1;
      }
      var c = a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
      return (dir === "descending" ? -c : c) || a.pos - b.pos;
    });
    keyed.forEach(function (k) { body.appendChild(k.row); });
    headers.forEach(function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", dir);
  }

  // The page-wide suite filter: null when there is none (model pages), else the ticked suites.
  function suiteState() {
    var form = document.querySelector("form[data-suite-filter]");
    if (!form) return null;
    var suites = {};
    form.querySelectorAll("fieldset input").forEach(function (box) { suites[box.value] = box.checked; });
    var reported = form.querySelector('[data-filter="reported"]');
    return { suites: suites, reported: !reported || reported.checked };
  }

  function suiteVisible(row, state) {
    if (!state) return true;
    if (row.getAttribute("data-kind") !== "run") return state.reported;
    var suites = [];
    try { suites = JSON.parse(row.getAttribute("data-suites") || "[]"); } catch (e) { suites = []; }
    return suites.length === 0 || suites.some(function (s) { return state.suites[s] !== false; });
  }

  function applyFilters(form) {
    var table = document.getElementById(form.getAttribute("data-filters"));
    if (!table) return;
    var section = form.closest("section.board");
    var columns = form.querySelector('[data-filter="columns"]');
    if (section && columns) section.classList.toggle("all-columns", columns.checked);
    var state = suiteState();
    var text = form.querySelector('[data-filter="text"]').value.trim().toLowerCase();
    var methods = {};
    form.querySelectorAll('[data-filter="method"] input').forEach(function (box) {
      methods[box.value] = box.checked;
    });
    var showFailed = form.querySelector('[data-filter="failed"]').checked;
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    var shown = 0;
    rows.forEach(function (row) {
      var status = row.getAttribute("data-status");
      var visible = methods[row.getAttribute("data-method")] !== false &&
        (showFailed || row.getAttribute("data-kind") !== "run" || status === "ok" || status === "trial") &&
        suiteVisible(row, state) &&
        (!text || row.textContent.toLowerCase().indexOf(text) !== -1);
      row.hidden = !visible;
      if (visible) shown += 1;
    });
    var count = form.querySelector(".count");
    if (count) count.textContent = shown === rows.length ? rows.length + " rows" :
      shown + " of " + rows.length + " rows";
  }

  function copyText(id, button) {
    var node = document.getElementById(id);
    if (!node) return;
    var done = function () { button.textContent = "copied"; };
    var fallback = function () {  // file:// pages may not get the async clipboard API
      var range = document.createRange();
      range.selectNodeContents(node);
      var sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      try { if (document.execCommand("copy")) done(); } catch (e) { /* selected for ^C */ }
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(node.textContent).then(done, fallback);
    } else {
      fallback();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table[data-sortable]").forEach(function (table) {
      table.querySelectorAll("thead th").forEach(function (th) {
        var button = th.querySelector("button") || th;
        button.addEventListener("click", function () { sortBy(table, th); });
      });
    });
    document.querySelectorAll("form[data-filters]").forEach(function (form) {
      form.addEventListener("submit", function (e) { e.preventDefault(); });
      form.addEventListener("input", function () { applyFilters(form); });
      form.addEventListener("change", function () { applyFilters(form); });
    });
    var suites = document.querySelector("form[data-suite-filter]");
    if (suites) {
      var refresh = function () {
        document.querySelectorAll("form[data-filters]").forEach(applyFilters);
      };
      suites.addEventListener("submit", function (e) { e.preventDefault(); });
      suites.addEventListener("change", refresh);
    }
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        copyText(button.getAttribute("data-copy"), button);
      });
    });
  });
})();
