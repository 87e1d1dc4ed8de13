// Draws the task page's charts with uPlot from the JSON each (re)rendered fragment carries in its
// data-series attribute (htmx drops script elements from swapped content),
// and sends the browser to the sign-in page when a refresh finds the session gone.
(function () {
  "use strict";
  var PALETTE = ["#2f5d8a", "#b3261e", "#1e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037", "#c2185b"];
  var OUTCOME_COLORS = {
    valid: "#1e7d32", repaired: "#7cb342", invalid_json: "#b3261e", schema_violation: "#e53935",
    truncated: "#ad1457", refusal: "#6a1b9a", timeout: "#ef6c00", upstream_error: "#5d4037",
    rate_limited: "#f9a825"
  };
  var charts = [];

  function markersPlugin(markers) {
    return {
      hooks: {
        draw: [function (u) {
          var ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#687385";
          ctx.fillStyle = "#1d2430";
          ctx.setLineDash([4, 3]);
          ctx.font = (11 * devicePixelRatio) + "px system-ui, sans-serif";
          markers.forEach(function (m) {
            var x = Math.round(u.valToPos(m[0], "x", true));
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) { return; }
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.fillText(m[1], x + 3 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
          });
          ctx.restore();
        }]
      }
    };
  }

  function build(el, data) {
    var width = Math.max(el.clientWidth, 300);
    var kind = el.getAttribute("data-chart");
    var series = [{}], rows = [data.x], opts;
    if (kind === "rates") {
      data.models.forEach(function (m, i) {
        series.push({ label: m, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: false,
                      points: { show: true, size: 6 }, value: function (u, v) { return v == null ? "—" : v.toFixed(1) + " %"; } });
        rows.push(data.rates[i]);
      });
      opts = { axes: [{}, { label: "% of answered attempts", size: 60 }], scales: { y: { range: [0, null] } } };
    } else {
      data.outcomes.forEach(function (o, i) {
        series.push({ label: o, stroke: OUTCOME_COLORS[o] || PALETTE[i % PALETTE.length], width: 2, points: { size: 4 } });
        rows.push(data.mix[i]);
      });
      opts = { axes: [{}, { label: "attempts", size: 60 }], plugins: [markersPlugin(data.markers)] };
    }
    opts.width = width;
    opts.height = 220;
    opts.series = series;
    return new uPlot(opts, rows, el);
  }

  function drawAll() {
    charts.forEach(function (c) { c.destroy(); });
    charts = [];
    if (typeof uPlot === "undefined") { return; }
    document.querySelectorAll("[data-chart]").forEach(function (el) {
      var source = el.closest("[data-series]");
      if (!source) { return; }
      el.textContent = "";
      charts.push(build(el, JSON.parse(source.getAttribute("data-series"))));
    });
  }

  document.addEventListener("DOMContentLoaded", drawAll);
  // htmx:load fires on each piece of content htmx puts in the page (an outerHTML swap's old
  // element is detached by then, so events on it would not reach the document)
  document.addEventListener("htmx:load", function (e) {
    var elt = e.detail && e.detail.elt;
    if (elt && elt.querySelector && elt !== document.body && elt.querySelector("[data-chart]")) { drawAll(); }
  });
  document.addEventListener("htmx:responseError", function (e) {
    if (e.detail.xhr.status === 401) {
      window.location.assign("/ui/signin?next=" + encodeURIComponent(window.location.pathname + window.location.search));
    }
  });
})();
