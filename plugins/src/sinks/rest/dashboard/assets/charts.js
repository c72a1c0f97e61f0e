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

  /**
   * Draws `series` (a Series): line `k` of the chart is `lines[k](series, i)`
   * for each point `i`, oldest first.
   */
  draw(series, lines) {
    const n = series.len;
    if (n === 0) {
      this.paths.forEach((p) => p.setAttribute("d", ""));
      this.top.textContent = "";
      this.bottom.textContent = "no data yet";
      this.span.textContent = "";
      return;
    }
    const t0 = series.tAt(0);
    const t1 = Math.max(series.tAt(n - 1), t0 + 1);
    let max = 0;
    for (const line of lines) {
      for (let i = 0; i < n; i++) {
        const v = line(series, i);
        if (Number.isFinite(v) && v > max) max = v;
      }
    }
    if (max <= 0) max = 1;
    const x = (t) => ((t - t0) / (t1 - t0)) * W;
    const y = (v) => H - PAD_BOTTOM - (v / max) * (H - PAD_BOTTOM - PAD_TOP);
    this.paths.forEach((path, k) => {
      const parts = [];
      for (let i = 0; i < n; i++) {
        const v = lines[k](series, i);
        if (!Number.isFinite(v)) continue;
        parts.push((parts.length ? "L" : "M") + x(series.tAt(i)).toFixed(1) + " " + y(v).toFixed(1));
      }
      path.setAttribute("d", parts.join(""));
    });
    this.top.textContent = this.label(max);
    this.bottom.textContent = this.label(0);
    const minutes = Math.round((t1 - t0) / 60000);
    this.span.textContent = minutes >= 1 ? `${minutes} min` : `${Math.round((t1 - t0) / 1000)} s`;
  }
}

/**
 * Chart points by timestamp in fixed columns of numbers (typed arrays, a
 * ring): an hour of points costs the same memory at minute 10 as at minute
 * 60, and no object per point.
 */
export class Series {
  constructor(columns, capacity = 1024) {
    this.columns = columns;
    this.cap = capacity;
    this.t = new Float64Array(capacity);
    this.v = new Float64Array(capacity * columns);
    this.start = 0;
    this.len = 0;
  }

  slot(i) {
    return (this.start + i) % this.cap;
  }

  tAt(i) {
    return this.t[this.slot(i)];
  }

  value(i, column) {
    return this.v[this.slot(i) * this.columns + column];
  }

  write(i, t, values) {
    const s = this.slot(i);
    this.t[s] = t;
    for (let c = 0; c < this.columns; c++) this.v[s * this.columns + c] = values[c];
  }

  /** Adds the point at `t`, or replaces the one with the same timestamp. */
  upsert(t, values) {
    let i = this.len - 1;
    while (i >= 0 && this.tAt(i) > t) i--;
    if (i >= 0 && this.tAt(i) === t) {
      this.write(i, t, values);
      return;
    }
    if (this.len === this.cap) this.grow();
    // Usually an append; a late point shifts the newer ones by one.
    for (let j = this.len; j > i + 1; j--) {
      const from = this.slot(j - 1);
      const to = this.slot(j);
      this.t[to] = this.t[from];
      for (let c = 0; c < this.columns; c++) this.v[to * this.columns + c] = this.v[from * this.columns + c];
    }
    this.len++;
    this.write(i + 1, t, values);
  }

  /** Forgets points older than `t`. */
  dropBefore(t) {
    while (this.len > 0 && this.tAt(0) < t) {
      this.start = (this.start + 1) % this.cap;
      this.len--;
    }
  }

  grow() {
    const t = new Float64Array(this.cap * 2);
    const v = new Float64Array(this.cap * 2 * this.columns);
    for (let i = 0; i < this.len; i++) {
      const s = this.slot(i);
      t[i] = this.t[s];
      for (let c = 0; c < this.columns; c++) v[i * this.columns + c] = this.v[s * this.columns + c];
    }
    this.t = t;
    this.v = v;
    this.cap *= 2;
    this.start = 0;
  }
}
