// Line charts drawn in SVG by the page's own code: the elements are made
// once, and each render only rewrites the paths' `d` and the axis labels.

const NS = "http://www.w3.org/2000/svg";
const W = 600;
const H = 160;
const PAD_TOP = 10;
const PAD_BOTTOM = 16;

function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  parent.appendChild(e);
  return e;
}

export class LineChart {
  /**
   * @param {SVGElement} svg
   * @param {string[]} names one per series
   * @param {(v: number) => string} label the axis labels
   */
  constructor(svg, names, label) {
    this.label = label;
    for (const y of [PAD_TOP, (PAD_TOP + H - PAD_BOTTOM) / 2, H - PAD_BOTTOM]) {
      el("line", { class: "grid", x1: 0, x2: W, y1: y, y2: y }, svg);
    }
    this.top = el("text", { class: "axis", x: 4, y: PAD_TOP + 10 }, svg);
    this.bottom = el("text", { class: "axis", x: 4, y: H - PAD_BOTTOM - 3 }, svg);
    this.span = el("text", { class: "axis", x: W - 4, y: H - 3, "text-anchor": "end" }, svg);
    this.paths = names.map((name, i) => {
      const p = el("path", { class: `line s${i}`, d: "" }, svg);
      el("title", {}, p).textContent = name;
      return p;
    });
    if (names.length > 1) {
      names.forEach((name, i) => {
        const t = el("text", { class: `axis`, x: W - 4 - (names.length - 1 - i) * 40, y: PAD_TOP + 10, "text-anchor": "end" }, svg);
        t.textContent = name;
        t.classList.add(`s${i}`);
      });
    }
  }

  /** Draws `points`: [{t: ms, values: [number per series]}], oldest first. */
  draw(points) {
    if (points.length === 0) {
      this.paths.forEach((p) => p.setAttribute("d", ""));
      this.top.textContent = "";
      this.bottom.textContent = "no data yet";
      this.span.textContent = "";
      return;
    }
    const t0 = points[0].t;
    const t1 = Math.max(points[points.length - 1].t, t0 + 1);
    let max = 0;
    for (const p of points) for (const v of p.values) if (Number.isFinite(v) && v > max) max = v;
    if (max <= 0) max = 1;
    const x = (t) => ((t - t0) / (t1 - t0)) * W;
    const y = (v) => H - PAD_BOTTOM - (v / max) * (H - PAD_BOTTOM - PAD_TOP);
    this.paths.forEach((path, i) => {
      let d = "";
      for (const p of points) {
        const v = p.values[i];
        if (!Number.isFinite(v)) continue;
        d += (d ? "L" : "M") + x(p.t).toFixed(1) + " " + y(v).toFixed(1);
      }
      path.setAttribute("d", d);
    });
    this.top.textContent = this.label(max);
    this.bottom.textContent = this.label(0);
    const minutes = Math.round((t1 - t0) / 60000);
    this.span.textContent = minutes >= 1 ? `${minutes} min` : `${Math.round((t1 - t0) / 1000)} s`;
  }
}
