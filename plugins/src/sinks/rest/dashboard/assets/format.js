// Numbers as people read them: 1.2k, 350 ms, 2 min ago.

/** A count: 950, 1.2k, 3.4M. */
export function count(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "–";
  const abs = Math.abs(n);
  if (abs < 1000) return String(Math.round(n));
  if (abs < 1e6) return trim(n / 1e3) + "k";
  if (abs < 1e9) return trim(n / 1e6) + "M";
  return trim(n / 1e9) + "G";
}

/** An exact count with thousands separators, for the cards. */
export function exact(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "–";
  return Math.round(n).toLocaleString("en-US");
}

function trim(x) {
  return (Math.abs(x) < 10 ? x.toFixed(1) : x.toFixed(0)).replace(/\.0$/, "");
}

/** A rate per minute: 12/min, 1.2k/min. */
export function perMinute(n) {
  return typeof n === "number" ? count(n) + "/min" : "–";
}

/** A percentage: 99.5%. */
export function percent(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "–";
  return (n >= 99.95 || n === 0 ? n.toFixed(0) : n.toFixed(1)) + "%";
}

/** A duration: 350 ms, 2.1 s, 3.5 min, 2.0 h. */
export function duration(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "–";
  if (ms < 1000) return Math.round(ms) + " ms";
  if (ms < 60_000) return trim(ms / 1000) + " s";
  if (ms < 3_600_000) return trim(ms / 60_000) + " min";
  return trim(ms / 3_600_000) + " h";
}

/** How long ago `ms` milliseconds is: just now, 12 s ago, 2 min ago. */
export function ago(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "never";
  if (ms < 2000) return "just now";
  if (ms < 60_000) return Math.floor(ms / 1000) + " s ago";
  if (ms < 3_600_000) return Math.floor(ms / 60_000) + " min ago";
  if (ms < 86_400_000) return Math.floor(ms / 3_600_000) + " h ago";
  return Math.floor(ms / 86_400_000) + " d ago";
}

/** A timestamp (RFC 3339) as local time. */
export function time(text) {
  const t = Date.parse(text);
  return Number.isNaN(t) ? "–" : new Date(t).toLocaleString();
}
