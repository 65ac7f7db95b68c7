// Draws the dashboard's chart with plotly.js (served by relay from the plotly package).
// The data is the page's own JSON (stats(by=...)["series"]); nothing is fetched.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const data = JSON.parse(document.getElementById("chart-data").textContent);
  const traces = data.series.map((s) => ({
    x: data.x, y: s.y, name: s.name, type: "bar", marker: { color: s.color },
  }));
  // Whole numbers on the y axis, about six ticks whatever the counts.
  const most = Math.max(1, ...data.series.flatMap((s) => s.y));
  const layout = {
    barmode: "group", bargap: 0.15, height: 320, margin: { l: 40, r: 10, t: 10, b: 40 },
    legend: { orientation: "h", y: -0.2 }, yaxis: { rangemode: "tozero", tick0: 0, dtick: Math.max(1, Math.ceil(most / 6)) },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
  };
  Plotly.newPlot("chart", traces, layout, { displaylogo: false, responsive: true });
});
