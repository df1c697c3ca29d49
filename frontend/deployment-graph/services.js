// The service cards of the deployment page (server-rendered in app/templates/ui/deployment.html):
// health, its message and the restart count from the live state, and CPU and memory charts
// (uPlot) from the agent's figures (GET /api/v1/deployments/<id>/metrics).
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

const KEEP = 360;           // samples per chart: 30 min at one every 5 s
const MIB = 1024 * 1024;

const cards = () => Array.from(document.querySelectorAll(".service-card[data-service]"));

// Health as the agent reported it, unless its figures show the container is not running now:
// the agent's reconcile restarts it within seconds (agent/service.py reconcile).
export function shownHealth(health, step, running) {
  if (running && health.health === "ready" && !running.has(step)) {
    return { ...health, health: "restarting", message: "its container is not running; the agent starts it again" };
  }
  return health;
}

export function showHealth(services, running) {
  for (const card of cards()) {
    const step = card.dataset.service;
    const health = services[step];
    if (!health) continue;
    const shown = shownHealth(health, step, running);
    const badge = card.querySelector(".health");
    if (badge.dataset.health !== shown.health) {
      badge.className = `health health-${shown.health}`;
      badge.dataset.health = shown.health;
      badge.textContent = shown.health;
    }
    const message = card.querySelector(".health-message");
    message.textContent = shown.message || "";
    message.hidden = !shown.message;
    card.querySelector(`[data-testid="restarts-${step}"]`).textContent = String(health.restarts);
  }
}

function chartOptions(el, label, stroke) {
  return {
    width: Math.max(200, el.clientWidth || 300),
    height: 120,
    legend: { show: false },
    cursor: { show: true, drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max * 1.2, label === "cpu" ? 5 : 16)] } },
    axes: [{ size: 30 }, { size: 45 }],
    series: [{}, { label, stroke, width: 2, fill: `${stroke}22`, spanGaps: true }],
  };
}

export class Charts {
  constructor() {
    this.data = new Map();   // step -> {t: [], cpu: [], memory: []}
    this.plots = new Map();  // chart element -> uPlot
    window.addEventListener("resize", () => this.resize());
  }

  add(at, containers) {
    const t = Math.round(new Date(at).getTime() / 1000);
    const running = new Set();
    const byStep = new Map();
    for (const c of containers) {
      if (c.role !== "service" || !c.step_id) continue;
      running.add(c.step_id);
      byStep.set(c.step_id, c);
    }
    for (const card of cards()) {
      const step = card.dataset.service;
      const series = this.data.get(step) || { t: [], cpu: [], memory: [] };
      const sample = byStep.get(step);
      series.t.push(t);
      series.cpu.push(sample && sample.cpu_percent != null ? sample.cpu_percent : null);
      series.memory.push(sample && sample.memory_usage != null ? +(sample.memory_usage / MIB).toFixed(2) : null);
      for (const key of ["t", "cpu", "memory"]) series[key] = series[key].slice(-KEEP);
      this.data.set(step, series);
      this.draw(card, step, series, sample);
    }
    this.problem(null);
    return running;
  }

  draw(card, step, series, sample) {
    for (const el of card.querySelectorAll(".chart[data-chart]")) {
      const kind = el.dataset.chart;
      const values = series[kind];
      const data = [series.t, values];
      let plot = this.plots.get(el);
      if (!plot && values.every((v) => v == null)) continue; // no figure yet: no empty axes
      if (!plot) {
        plot = new uPlot(chartOptions(el, kind, kind === "cpu" ? "#2d7ff9" : "#8e44ad"), data, el);
        this.plots.set(el, plot);
      } else {
        plot.setData(data);
      }
      el.dataset.points = String(values.filter((v) => v != null).length);
      const now = card.querySelector(`[data-testid="${kind}-now-${step}"]`);
      const last = values[values.length - 1];
      if (now) now.textContent = last == null ? "" : kind === "cpu" ? `now ${last.toFixed(1)} %` : `now ${last.toFixed(1)} MiB`;
      if (kind === "memory" && sample && sample.memory_limit && now && last != null) {
        now.textContent += ` of ${(sample.memory_limit / MIB).toFixed(0)}`;
      }
    }
  }

  problem(message) {
    for (const el of document.querySelectorAll(".metrics-problem")) {
      el.textContent = message ? `Metrics unavailable: ${message}` : "";
      el.hidden = !message;
    }
  }

  resize() {
    for (const [el, plot] of this.plots) plot.setSize({ width: Math.max(200, el.clientWidth || 300), height: 120 });
  }
}
