// What a call reports: its states, the human message for each, the errors a call can end in, and the
// events that arrive on the `events` data channel. Shared by the client, the page and the widget, so
// both UIs say the same things.

export const STATES = ["idle", "connecting", "in-call", "reconnecting", "ended", "error"];

/** States in which a call is under way (a second start() is ignored, hangUp() tells the server). */
export const LIVE_STATES = ["connecting", "in-call", "reconnecting"];

const REASONS = {
  hangup: "You hung up.",
  peer_closed: "The connection was closed.",
  connection_failed: "The connection failed.",
  connection_lost: "The connection was lost and the call could not be resumed.",
  no_media: "No audio reached the server for too long.",
  gemini_error: "The voice model had an error.",
  server_shutdown: "The server is restarting. Call again in a moment.",
};

/** A default, human message for a state (both UIs use it, so they say the same things). */
export function describe(state, reason, extra) {
  switch (state) {
    case "idle": return "Ready";
    case "connecting": return "Connecting…";
    case "in-call": return extra === "resumed" ? "In call (reconnected)" : "In call";
    case "reconnecting": return "Connection lost, reconnecting…";
    case "ended": return `Call ended. ${REASONS[reason] || (reason ? `Reason: ${reason}.` : "")}`.trim();
    default: break;
  }
  switch (reason) {
    case "mic-denied": return "Microphone access was denied. Allow it in the browser's site settings, then call again.";
    case "no-mic": return "No microphone was found. Connect one, then call again.";
    case "mic-busy": return "The microphone could not be started: another app may be using it.";
    case "insecure": return "This page cannot use the microphone: it must be served over https.";
    case "unauthorized": return "This call needs a valid invitation: reload the page and try again.";
    case "connect-failed": return "The audio connection could not be set up: a firewall or VPN may be blocking it.";
    case "busy": return `The server is busy right now. Try again${extra ? ` in ${extra} s` : " soon"}.`;
    case "unreachable": return "Cannot reach the Parley server. Check your connection, then call again.";
    case "forbidden": return "This site is not allowed to use this Parley server.";
    case "refused": return `The server refused the call${extra ? `: ${extra}` : "."}`;
    default: return extra || "Something went wrong.";
  }
}

export class ParleyError extends Error {
  constructor(reason, detail = "") {
    super(describe("error", reason, detail));
    this.reason = reason;
    this.detail = detail;
  }
}

/** A data-channel message as an event object, or null when it is not JSON. */
export function parseEvent(data) {
  try {
    const event = JSON.parse(data);
    return event && typeof event === "object" ? event : null;
  } catch {
    return null;
  }
}

/** A `transcript` data-channel event as the client's `transcript` event detail. */
export function transcriptDetail(event) {
  return { role: event.role === "user" ? "user" : "agent", text: String(event.text || ""), final: Boolean(event.final) };
}

/** A `grounding` data-channel event as the client's `grounding` detail: only http(s) sources, as text. */
export function groundingDetail(event) {
  const sources = (Array.isArray(event.sources) ? event.sources : [])
    .filter((source) => source && /^https?:\/\//i.test(String(source.uri || "")))
    .map((source) => ({ uri: String(source.uri), title: String(source.title || source.uri) }));
  const queries = (Array.isArray(event.queries) ? event.queries : []).map(String);
  return { sources, queries };
}
