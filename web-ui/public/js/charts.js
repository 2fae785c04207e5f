// Time-series charts on uPlot (vendor/uPlot.esm.js, the npm package byte for byte). A
// TimeChart owns one uPlot instance, follows its container's width, and is fed whole series
// from the live history (js/live.js) on every sample.

import uPlot from '../vendor/uPlot.esm.js';

export const COLORS = ['#1f6feb', '#2da44e', '#cf222e', '#bf8700', '#8250df', '#0a7f86', '#d4570b', '#6e7781'];

export class TimeChart {
  /**
   * @param {HTMLElement} container  where the chart goes (its width is followed)
   * @param {object} options  {title, series: [{label, color?}], format: (number) => string, height?}
   */
  constructor(container, { title, series, format, height = 170 }) {
    this.container = container;
    const fmt = format || ((v) => String(v));
    const opts = {
      title,
      width: Math.max(container.clientWidth, 240),
      height,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: (u, min, max) => (max === null ? [Date.now() / 1000 - 60, Date.now() / 1000] : [Math.min(min, max - 60), max]) }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [
        { stroke: '#57606a', grid: { stroke: '#eaeef2' } },
        { stroke: '#57606a', grid: { stroke: '#eaeef2' }, size: 84, values: (u, splits) => splits.map(fmt) },
      ],
      series: [
        {},
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.color || COLORS[i % COLORS.length],
          width: 2,
          points: { show: false },
          value: (u, v) => (v === null || v === undefined ? '—' : fmt(v)),
        })),
      ],
    };
    this.plot = new uPlot(opts, [[], ...series.map(() => [])], container);
    this.resize = new ResizeObserver(() => {
      const width = Math.max(container.clientWidth, 240);
      if (width !== this.plot.width) this.plot.setSize({ width, height });
    });
    this.resize.observe(container);
  }

  /** Replaces the data: `times` in seconds since the epoch, one array per series. */
  setData(times, columns) {
    this.plot.setData([times, ...columns]);
  }

  destroy() {
    this.resize.disconnect();
    this.plot.destroy();
  }
}
