/**
 * A hand-written SVG bar chart (no dependencies): panels stacked vertically, each a set of
 * horizontal bars scaled to that panel's largest value, the value printed at each bar's end.
 */

/** One bar: a label on the left, a length proportional to value. */
export interface Bar {
  label: string;
  value: number;
  /** Bars of one group share a colour (e.g. "load", "baseline", "lru", "lrfu"). */
  group: string;
}

/** One panel: a title, a unit printed after each value, and its bars top to bottom. */
export interface Panel {
  title: string;
  unit: string;
  bars: Bar[];
  /** Digits after the decimal point of printed values. */
  digits: number;
}

/** Layout in SVG user units (pixels at 100%). */
const WIDTH = 760;
const LABEL_WIDTH = 250;
/** Room right of the longest bar for its value. */
const VALUE_WIDTH = 110;
const BAR_HEIGHT = 18;
const BAR_GAP = 6;
const TITLE_HEIGHT = 28;
const PANEL_GAP = 18;
const MARGIN = 12;
const FONT = "font-family='sans-serif' font-size='12'";
/** Colour per group; groups not listed get FALLBACK_COLOUR. */
const COLOURS: Record<string, string> = {
  cold: "#c0504d",
  warm: "#f39c12",
  baseline: "#7f8c8d",
  resident: "#2c3e50",
  lru: "#2980b9",
  lrfu: "#27ae60",
};
const FALLBACK_COLOUR = "#8e44ad";

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** The SVG document for panels, with a title line and an optional footnote line. */
export function barChart(title: string, panels: Panel[], footnote = ""): string {
  const barArea = WIDTH - 2 * MARGIN - LABEL_WIDTH - VALUE_WIDTH;
  const parts: string[] = [];
  let y = MARGIN + 16;
  parts.push(`<text x='${MARGIN}' y='${y}' ${FONT} font-weight='bold'>${esc(title)}</text>`);
  y += PANEL_GAP;
  for (const p of panels) {
    parts.push(
      `<text x='${MARGIN}' y='${y + 16}' ${FONT} font-weight='bold'>${esc(p.title)}</text>`,
    );
    y += TITLE_HEIGHT;
    const max = Math.max(...p.bars.map((b) => b.value), Number.MIN_VALUE);
    for (const b of p.bars) {
      const w = Math.max(1, (b.value / max) * barArea);
      const x0 = MARGIN + LABEL_WIDTH;
      const ty = y + BAR_HEIGHT - 5;
      const colour = COLOURS[b.group] ?? FALLBACK_COLOUR;
      parts.push(
        `<text x='${x0 - 6}' y='${ty}' ${FONT} text-anchor='end'>${esc(b.label)}</text>`,
        `<rect x='${x0}' y='${y}' width='${w.toFixed(1)}' height='${BAR_HEIGHT}' ` +
          `fill='${colour}'/>`,
        `<text x='${(x0 + w + 6).toFixed(1)}' y='${ty}' ${FONT}>` +
          `${b.value.toFixed(p.digits)} ${esc(p.unit)}</text>`,
      );
      y += BAR_HEIGHT + BAR_GAP;
    }
    y += PANEL_GAP;
  }
  if (footnote) {
    parts.push(`<text x='${MARGIN}' y='${y}' ${FONT} fill='#555'>${esc(footnote)}</text>`);
    y += PANEL_GAP;
  }
  const height = y + MARGIN;
  return `<svg xmlns='http://www.w3.org/2000/svg' width='${WIDTH}' height='${height}' ` +
    `viewBox='0 0 ${WIDTH} ${height}'>\n<rect width='100%' height='100%' fill='white'/>\n` +
    parts.join("\n") + "\n</svg>\n";
}
