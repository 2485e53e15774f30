// Charts: time series drawn with the vendored uPlot (window.uPlot, loaded before the
// modules), coloured from the page's CSS variables so light and dark both read well,
// resized with their container; and tiny SVG sparklines for table cells.

const SVG = 'http://www.w3.org/2000/svg';
const dark = window.matchMedia('(prefers-color-scheme: dark)');

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** The i-th series colour of the palette (CSS `--chart-1` … `--chart-8`). */
export function color(i) {
  return cssVar(`--chart-${(i % 8) + 1}`);
}

function withAlpha(hex, alpha) {
  return /^#[0-9a-f]{6}$/i.test(hex) ? hex + alpha : hex;
}

/**
 * A time-series chart in `container`.
 * `series`: [{label, fmt?}] (y formatter for the legend); `axis`: y tick formatter;
 * `axisSize`: room for the y tick labels in px.
 * Update with `set(t, [ys...])` (t in seconds since the epoch).
 */
export class TimeChart {
  constructor(container, { series, height = 220, axis = (v) => String(v), fmt = (v) => String(v), axisSize = 58 }) {
    this.container = container;
    this.container.classList.add('chart');
    this.series = series;
    this.height = height;
    this.axis = axis;
    this.axisSize = axisSize;
    this.fmt = fmt;
    this.data = this.placeholder();
    this.build();
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(container);
    this.onTheme = () => this.build();
    dark.addEventListener('change', this.onTheme);
  }

  build() {
    this.plot?.destroy();
    const muted = cssVar('--muted');
    const line = cssVar('--line');
    const axis = {
      stroke: muted,
      grid: { stroke: line, width: 1 },
      ticks: { stroke: line, width: 1 },
      font: '11px system-ui, sans-serif',
    };
    const opts = {
      width: Math.max(200, this.container.clientWidth),
      height: this.height,
      cursor: { drag: { x: false, y: false } },
      scales: {
        // At least a minute wide, so the first samples do not stretch across the chart.
        x: {
          time: true,
          range: (u, min, max) => {
            const hi = max ?? Date.now() / 1000;
            return [Math.min(min ?? hi, hi - 60), hi];
          },
        },
        y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] },
      },
      series: [
        { value: (u, v) => (v == null ? '–' : new Date(v * 1000).toLocaleTimeString()) },
        ...this.series.map((s, i) => {
          const c = s.color || color(i);
          return {
            label: s.label,
            stroke: c,
            width: 2,
            fill: this.series.length <= 2 ? withAlpha(c, '1f') : undefined,
            points: { show: false },
            value: (u, v) => (v == null ? '–' : (s.fmt || this.fmt)(v)),
          };
        }),
      ],
      axes: [axis, { ...axis, size: this.axisSize, values: (u, ticks) => ticks.map((v) => this.axis(v)) }],
    };
    this.plot = new window.uPlot(opts, this.data, this.container);
  }

  fit() {
    const width = Math.max(200, this.container.clientWidth);
    if (this.plot && width !== this.plot.width) this.plot.setSize({ width, height: this.height });
  }

  /** The last minute without values: an empty chart still shows a sensible time axis. */
  placeholder() {
    const now = Date.now() / 1000;
    return [[now - 60, now], ...this.series.map(() => [null, null])];
  }

  /** Replaces the data: `t` and one array of values per series. */
  set(t, ys) {
    if (!t.length) this.data = this.placeholder();
    // uPlot spans a single x value over a day whatever the range function says:
    // give it an empty minute before the first sample.
    else if (t.length === 1) this.data = [[t[0] - 60, t[0]], ...ys.map((y) => [null, y[0]])];
    else this.data = [t.slice(), ...ys.map((y) => y.slice())];
    this.container.dataset.points = String(t.length);
    this.plot.setData(this.data);
  }

  destroy() {
    this.resize.disconnect();
    dark.removeEventListener('change', this.onTheme);
    this.plot?.destroy();
  }
}

/** A small line of recent values (an inline SVG), scaled from 0 to its maximum. */
export function sparkline(values, { width = 110, height = 26, index = 0 } = {}) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('aria-hidden', 'true');
  const vs = values.filter((v) => v !== null && v !== undefined);
  if (vs.length < 2) return svg;
  const max = Math.max(...vs, 1e-9);
  const step = width / (vs.length - 1);
  const pts = vs.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
  const area = document.createElementNS(SVG, 'polygon');
  area.setAttribute('points', `0,${height} ${pts.join(' ')} ${width},${height}`);
  area.setAttribute('style', `fill: var(--chart-${(index % 8) + 1}); opacity: .15`);
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', pts.join(' '));
  line.setAttribute('style', `fill: none; stroke: var(--chart-${(index % 8) + 1}); stroke-width: 1.6; stroke-linejoin: round`);
  svg.append(area, line);
  return svg;
}
