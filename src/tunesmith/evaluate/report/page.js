(function () {
  "use strict";
  function chart() {
    var svg = document.getElementById("loss-chart");
    if (!svg) return;
    var d = svg.dataset, x0 = +d.x0, x1 = +d.x1, y0 = +d.y0, y1 = +d.y1;
    var ml = +d.ml, mt = +d.mt, pw = +d.pw, ph = +d.ph;
    var series = [];
    svg.querySelectorAll("polyline[data-points]").forEach(function (el) {
      try { series.push({name: el.getAttribute("data-series"), pts: JSON.parse(el.getAttribute("data-points"))}); }
      catch (e) { /* leave the static chart as it is */ }
    });
    var hover = document.getElementById("loss-chart-hover");
    if (!hover || !series.length) return;
    var line = hover.querySelector("line"), label = hover.querySelector("text");
    function nearest(pts, step) {
      var best = null;
      for (var i = 0; i < pts.length; i++) {
        if (best === null || Math.abs(pts[i][0] - step) < Math.abs(best[0] - step)) best = pts[i];
      }
      return best;
    }
    svg.addEventListener("mousemove", function (ev) {
      var r = svg.getBoundingClientRect();
      var px = (ev.clientX - r.left) * (svg.viewBox.baseVal.width / r.width);
      if (px < ml || px > ml + pw) { hover.setAttribute("visibility", "hidden"); return; }
      var step = x0 + (px - ml) / pw * (x1 - x0);
      var parts = [];
      series.forEach(function (s) {
        var p = nearest(s.pts, step);
        if (p) parts.push(s.name + " " + p[1].toFixed(4) + " @ " + p[0]);
      });
      line.setAttribute("x1", px); line.setAttribute("x2", px);
      label.setAttribute("x", Math.min(px + 6, ml + pw - 220));
      label.textContent = parts.join("   ");
      hover.setAttribute("visibility", "visible");
    });
    svg.addEventListener("mouseleave", function () { hover.setAttribute("visibility", "hidden"); });
  }
  function filters() {
    var buttons = document.querySelectorAll(".filters button");
    buttons.forEach(function (b) {
      b.addEventListener("click", function () {
        var f = b.getAttribute("data-filter");
        buttons.forEach(function (o) { o.classList.toggle("active", o === b); });
        document.querySelectorAll("article.example").forEach(function (a) {
          var s = a.getAttribute("data-status");
          a.classList.toggle("hidden", !(f === "all" || s === f || (f === "fail" && s === "unknown")));
        });
      });
    });
  }
  try { chart(); filters(); } finally { document.body.setAttribute("data-rendered", "1"); }
})();
