// Small inline-SVG charts for the HTML report (line chart, histogram): plain strings, no plotting
// library and no script, so the report renders offline in any browser.

export const escapeXml = (s: string): string =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&#39;");

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

const W = 560;
const H = 300;
const M = { left: 52, right: 16, top: 28, bottom: 44 };
const PW = W - M.left - M.right;
const PH = H - M.top - M.bottom;

const f = (v: number) => (Math.round(v * 100) / 100).toString();

function frame(title: string, xLabel: string, yLabel: string, body: string, extra = ""): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${escapeXml(title)}" font-family="sans-serif" font-size="11">`,
    `<title>${escapeXml(title)}</title>`,
    `<text x="${W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">${escapeXml(title)}</text>`,
    `<text x="${M.left + PW / 2}" y="${H - 6}" text-anchor="middle">${escapeXml(xLabel)}</text>`,
    `<text transform="translate(14 ${M.top + PH / 2}) rotate(-90)" text-anchor="middle">${escapeXml(yLabel)}</text>`,
    `<rect x="${M.left}" y="${M.top}" width="${PW}" height="${PH}" fill="none" stroke="#888"/>`,
    body,
    extra,
    "</svg>",
  ].join("\n");
}

function yAxis(lo: number, hi: number, ticks: number, fmt: (v: number) => string): { body: string; y: (v: number) => number } {
  const y = (v: number) => M.top + PH - ((v - lo) / (hi - lo || 1)) * PH;
  const parts: string[] = [];
  for (let k = 0; k <= ticks; k++) {
    const v = lo + ((hi - lo) * k) / ticks;
    parts.push(
      `<line x1="${M.left}" x2="${M.left + PW}" y1="${f(y(v))}" y2="${f(y(v))}" stroke="#ddd"/>`,
      `<text x="${M.left - 4}" y="${f(y(v) + 4)}" text-anchor="end">${escapeXml(fmt(v))}</text>`,
    );
  }
  return { body: parts.join("\n"), y };
}

export interface LineSeries {
  name: string;
  /** [x, y]; y null leaves a gap in the line. */
  points: [number, number | null][];
}

export interface LineChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: LineSeries[];
  /** Log2 x axis (annotation budgets from 1/64 to 1). */
  xLog?: boolean;
  /** Tick positions on x with their labels; default 5 evenly spaced. */
  xTicks?: { value: number; label: string }[];
  yRange?: [number, number];
  /** Draw a dot at every point (few points), or only lines (many). */
  dots?: boolean;
}

export function lineChart(o: LineChartOptions): string {
  const tx = (x: number) => (o.xLog ? Math.log2(x) : x);
  const xs = o.series.flatMap((s) => s.points.map((p) => tx(p[0])));
  let x0 = Math.min(...xs);
  let x1 = Math.max(...xs);
  if (!(x1 > x0)) {
    x0 -= 1;
    x1 += 1;
  }
  // A margin of 4% each side keeps points at the ends off the frame.
  const pad = (x1 - x0) * 0.04;
  x0 -= pad;
  x1 += pad;
  const [lo, hi] = o.yRange ?? [0, 1];
  const { body: yBody, y } = yAxis(lo, hi, 5, (v) => v.toFixed(1));
  const x = (v: number) => M.left + ((tx(v) - x0) / (x1 - x0)) * PW;
  const ticks =
    o.xTicks ??
    Array.from({ length: 5 }, (_, k) => {
      const v = x0 + ((x1 - x0) * k) / 4;
      const value = o.xLog ? 2 ** v : v;
      return { value, label: Number.isInteger(value) ? String(value) : value.toFixed(1) };
    });
  const parts = [yBody];
  for (const t of ticks) {
    parts.push(
      `<line x1="${f(x(t.value))}" x2="${f(x(t.value))}" y1="${M.top + PH}" y2="${M.top + PH + 4}" stroke="#888"/>`,
      `<text x="${f(x(t.value))}" y="${M.top + PH + 16}" text-anchor="middle">${escapeXml(t.label)}</text>`,
    );
  }
  o.series.forEach((s, i) => {
    const colour = PALETTE[i % PALETTE.length]!;
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    let d = "";
    let pen = false;
    for (const [px, py] of pts) {
      if (py === null) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${f(x(px))} ${f(y(py))}`;
      pen = true;
    }
    parts.push(`<path d="${d}" fill="none" stroke="${colour}" stroke-width="1.6"><title>${escapeXml(s.name)}</title></path>`);
    if (o.dots) {
      for (const [px, py] of pts) {
        if (py === null) continue;
        parts.push(`<circle cx="${f(x(px))}" cy="${f(y(py))}" r="3" fill="${colour}"><title>${escapeXml(`${s.name}: ${py.toFixed(4)}`)}</title></circle>`);
      }
    }
  });
  const legendWidth = 30 + 6 * Math.max(0, ...o.series.map((s) => s.name.length));
  const legend =
    o.series.length < 2
      ? ""
      : `<rect x="${M.left + 4}" y="${M.top + 2}" width="${Math.min(PW - 8, legendWidth)}" height="${o.series.length * 14 + 4}" fill="#fff" fill-opacity="0.8"/>` +
        o.series
          .map((s, i) => {
            const ly = M.top + 12 + i * 14;
            return `<rect x="${M.left + 8}" y="${ly - 8}" width="10" height="10" fill="${PALETTE[i % PALETTE.length]!}"/><text x="${M.left + 22}" y="${ly + 1}">${escapeXml(s.name)}</text>`;
          })
          .join("\n");
  return frame(o.title, o.xLabel, o.yLabel, parts.join("\n"), legend);
}

export interface HistogramOptions {
  title: string;
  xLabel: string;
  values: readonly number[];
  /** Bins split [lo, hi] evenly; the last bin includes hi. */
  bins: number;
  range: [number, number];
  /** A dashed vertical line (e.g. the match threshold 0.5). */
  marker?: { value: number; label: string };
}

/** Counts per bin, the last bin closed on the right. */
export function histogramCounts(values: readonly number[], bins: number, [lo, hi]: [number, number]): number[] {
  const counts = new Array<number>(bins).fill(0);
  for (const v of values) {
    if (!(v >= lo && v <= hi)) continue;
    counts[Math.min(bins - 1, Math.floor(((v - lo) / (hi - lo)) * bins))]!++;
  }
  return counts;
}

export function histogram(o: HistogramOptions): string {
  const counts = histogramCounts(o.values, o.bins, o.range);
  // Whole-number ticks at a round step (1, 2, 5, 10, ...), the axis ending on one.
  const most = Math.max(1, ...counts);
  const raw = most / 5;
  const p = 10 ** Math.floor(Math.log10(Math.max(1, raw)));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw)!;
  const top = Math.ceil(most / step) * step;
  const { body: yBody, y } = yAxis(0, top, top / step, (v) => String(Math.round(v)));
  const [lo, hi] = o.range;
  const x = (v: number) => M.left + ((v - lo) / (hi - lo)) * PW;
  const bw = PW / o.bins;
  const parts = [yBody];
  counts.forEach((c, i) => {
    const a = lo + ((hi - lo) * i) / o.bins;
    const b = lo + ((hi - lo) * (i + 1)) / o.bins;
    parts.push(
      `<rect x="${f(M.left + i * bw + 0.5)}" y="${f(y(c))}" width="${f(bw - 1)}" height="${f(M.top + PH - y(c))}" fill="#1f77b4"><title>${escapeXml(`[${a.toFixed(2)}, ${b.toFixed(2)}${i === o.bins - 1 ? "]" : ")"}: ${c}`)}</title></rect>`,
    );
  });
  for (let k = 0; k <= 5; k++) {
    const v = lo + ((hi - lo) * k) / 5;
    parts.push(`<text x="${f(x(v))}" y="${M.top + PH + 16}" text-anchor="middle">${f(v)}</text>`);
  }
  if (o.marker !== undefined) {
    const mx = f(x(o.marker.value));
    parts.push(
      `<line x1="${mx}" x2="${mx}" y1="${M.top}" y2="${M.top + PH}" stroke="#d62728" stroke-dasharray="4 3"/>`,
      `<text x="${mx}" y="${M.top - 3}" text-anchor="middle" fill="#d62728">${escapeXml(o.marker.label)}</text>`,
    );
  }
  return frame(o.title, o.xLabel, "objects", parts.join("\n"));
}
