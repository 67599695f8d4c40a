// A small bar plot of the response time of each agent turn (interrupted turns in another colour).
const SVG = "http://www.w3.org/2000/svg";

function el(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text != null) node.textContent = text;
  return node;
}

export function plotResponses(container, turns) {
  container.replaceChildren();
  const measured = turns.filter((t) => typeof t.ms === "number");
  if (!measured.length) {
    container.textContent = "No turn had a measured response time.";
    return;
  }
  const width = 600, height = 140, left = 40, bottom = 18, top = 10;
  const max = Math.max(500, ...measured.map((t) => t.ms));
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `response time per turn, ${measured.length} turns, longest ${Math.round(max)} ms` });
  const step = Math.min(48, (width - left - 10) / turns.length);
  const scale = (v) => ((height - bottom - top) * v) / max;
  for (const fraction of [0, 0.5, 1]) {
    const y = height - bottom - scale(max * fraction);
    svg.append(el("text", { x: 2, y: y + 3 }, `${Math.round(max * fraction)} ms`));
  }
  turns.forEach((turn, i) => {
    const x = left + i * step + step * 0.15;
    if (typeof turn.ms === "number") {
      const h = Math.max(1, scale(turn.ms));
      const bar = el("rect", { x, y: height - bottom - h, width: step * 0.7, height: h,
        class: turn.interrupted ? "bar interrupted" : "bar" });
      bar.append(el("title", {}, `turn ${turn.turn}: ${Math.round(turn.ms)} ms${turn.interrupted ? ", interrupted" : ""}`));
      svg.append(bar);
    }
    svg.append(el("text", { x: x + step * 0.2, y: height - 4 }, String(turn.turn)));
  });
  container.append(svg);
}
