// Usage over time: one metric per day as an SVG bar chart, with the numbers in a table.
import { api, query } from "./api.js";
import { field, h, s, table } from "./dom.js";

export async function render(main) {
  const days = h("select", { name: "days" }, [7, 30, 90].map((d) => h("option", { value: String(d), selected: d === 30 ? true : null }, `Last ${d} days`)));
  const metric = h("select", { name: "metric" });
  const agents = await api("GET", "/v1/agents");
  const agent = h("select", { name: "agent_id" }, h("option", { value: "" }, "All agents"),
    agents.items.map((a) => h("option", { value: a.id }, a.name)));
  const chart = h("div", {});
  const numbers = h("div", {});
  let items = [];

  const draw = () => {
    const m = metric.value;
    const n = Number(days.value);
    const series = [];
    const today = new Date();
    for (let i = n - 1; i >= 0; i -= 1) {
      const d = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i));
      const key = d.toISOString().slice(0, 10);
      const q = items.filter((x) => x.key === key && x.metric === m).reduce((acc, x) => acc + x.quantity, 0);
      series.push([key, q]);
    }
    chart.replaceChildren(barChart(series, m));
    numbers.replaceChildren(table(["Day", "Metric", "Quantity", "Records"],
      items.filter((x) => !m || x.metric === m).map((x) => h("tr", {},
        h("td", {}, x.key), h("td", {}, x.metric), h("td", {}, fmt(x.quantity)), h("td", {}, String(x.records)))),
      "Usage by day"));
  };
  const load = async () => {
    const from = new Date(Date.now() - Number(days.value) * 86400e3).toISOString();
    ({ items } = await api("GET", `/v1/usage${query({ group_by: "day", from, agent_id: agent.value })}`));
    const metrics = [...new Set(items.map((x) => x.metric))].sort();
    const keep = metric.value;
    metric.replaceChildren(...(metrics.length ? metrics : ["(no usage yet)"]).map((x) =>
      h("option", { value: metrics.length ? x : "", selected: x === keep ? true : null }, x)));
    draw();
  };
  days.addEventListener("change", load);
  agent.addEventListener("change", load);
  metric.addEventListener("change", draw);
  main.append(h("h1", {}, "Usage"),
    h("div", { class: "row" }, field("Period", days), field("Agent", agent), field("Metric", metric)),
    chart, h("h2", {}, "Numbers"), numbers);
  await load();
}

function fmt(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

function barChart(series, metricName) {
  const W = 900;
  const H = 260;
  const pad = { l: 56, r: 10, t: 10, b: 40 };
  const max = Math.max(1e-9, ...series.map(([, v]) => v));
  const bw = (W - pad.l - pad.r) / series.length;
  const y = (v) => H - pad.b - (v / max) * (H - pad.t - pad.b);
  const total = series.reduce((a, [, v]) => a + v, 0);
  const label = `${metricName || "usage"} per day: total ${fmt(total)}, highest day ${fmt(max === 1e-9 ? 0 : max)}`;
  const every = Math.ceil(series.length / 10);
  return s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label },
    s("title", {}, label),
    s("line", { class: "axis", x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b }),
    s("line", { class: "axis", x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b }),
    s("text", { x: pad.l - 6, y: pad.t + 10, "text-anchor": "end" }, fmt(max === 1e-9 ? 0 : max)),
    s("text", { x: pad.l - 6, y: H - pad.b, "text-anchor": "end" }, "0"),
    series.map(([day, v], i) => [
      s("rect", { class: "bar", x: pad.l + i * bw + 1, y: y(v), width: Math.max(1, bw - 2), height: H - pad.b - y(v) },
        s("title", {}, `${day}: ${fmt(v)}`)),
      i % every === 0 ? s("text", { x: pad.l + i * bw + bw / 2, y: H - pad.b + 14, "text-anchor": "middle" }, day.slice(5)) : null,
    ]));
}
