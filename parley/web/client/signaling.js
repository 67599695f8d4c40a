// The HTTP side of a call (WHIP-style: one POST with the whole offer, no trickle) and the peer
// connection's state as one word, for browsers with and without connectionState.
import { ParleyError } from "./events.js";

const GATHER_TIMEOUT_MS = 3000;

/** The peer connection's state; from ICE alone where a browser has no connectionState. */
export function connectionState(pc) {
  if (pc.connectionState) return pc.connectionState;
  const ice = pc.iceConnectionState;
  return { completed: "connected", checking: "connecting" }[ice] || ice;
}

/** Resolves when ICE gathering is done, or after timeoutMs: send what there is (no trickle over HTTP). */
export function gathered(pc, timeoutMs = GATHER_TIMEOUT_MS) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { clearTimeout(timer); resolve(); };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done());
    pc.addEventListener("icecandidate", (event) => !event.candidate && done());
  });
}

/** Resolves true once pc is connected, false when it fails, closes or timeoutMs passes. */
export function waitConnected(pc, timeoutMs) {
  return new Promise((resolve) => {
    const check = () => {
      const state = connectionState(pc);
      if (state === "connected") finish(true);
      else if (state === "failed" || state === "closed") finish(false);
    };
    const finish = (ok) => {
      clearTimeout(timer);
      pc.removeEventListener("connectionstatechange", check);
      pc.removeEventListener("iceconnectionstatechange", check);
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    pc.addEventListener("connectionstatechange", check);
    pc.addEventListener("iceconnectionstatechange", check);
    check();
  });
}

/**
 * Call attempt() until it returns something true, with growing pauses, while active() and until the
 * deadline (performance.now() time); a 4xx ends the attempts (the call is gone or the server will not
 * have us: retrying will not help). Returns attempt()'s result, or false.
 */
export async function retry(deadline, active, attempt) {
  let wait = 500;
  while (active() && performance.now() < deadline) {
    try {
      const result = await attempt();
      if (result) return result;
    } catch (error) {
      if (error instanceof ParleyError && error.status >= 400 && error.status < 500) return false;
    }
    await new Promise((resolve) => setTimeout(resolve, wait));
    wait = Math.min(wait * 2, 4000);
  }
  return false;
}

/** The Parley server's HTTP API: /v1/config and /v1/calls. Errors are ParleyErrors with a reason. */
export class Signaling {
  /**
   * @param {string} base the server's base URL, no trailing slash
   * @param {string|function(): (string|Promise<string>)|null} token a join token, or a function fetching one
   * @param {object} [choice] which agent a new call asks for and what it fills in: `agent` (a name) and
   *   `variables` ({name: string}), each a value or a function read at every new call
   */
  constructor(base, token = null, { agent = null, variables = null } = {}) {
    this.base = base;
    this.token = token;
    this.agent = agent;
    this.variables = variables;
  }

  /** GET /v1/config: {iceServers, emulator, model, agent} (the agent asked for: a 404 when unknown). */
  async config() {
    const agent = typeof this.agent === "function" ? this.agent() : this.agent;
    const path = agent ? `/v1/config?agent=${encodeURIComponent(agent)}` : "/v1/config";
    const response = await this.fetch(path, { headers: { Accept: "application/json" } });
    if (!response.ok) throw await refusal(response);
    return response.json();
  }

  /** POST /v1/calls with a complete offer (and `resume` when rejoining a call): the answer {id, sdp}. */
  async offer(sdp, resumeId) {
    const body = { sdp, type: "offer" };
    if (resumeId) body.resume = resumeId;
    else {
      // A rejoin carries on its call's agent; a new call names one (else the server's default).
      const agent = typeof this.agent === "function" ? this.agent() : this.agent;
      const variables = typeof this.variables === "function" ? this.variables() : this.variables;
      if (agent) body.agent = String(agent);
      if (variables && Object.keys(variables).length) body.variables = variables;
    }
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    const token = typeof this.token === "function" ? await this.token() : this.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    // The resume goes in the query too: the server admits a rejoin without a (maybe expired) token.
    const path = resumeId ? `/v1/calls?resume=${encodeURIComponent(resumeId)}` : "/v1/calls";
    const response = await this.fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
    if (!response.ok) throw await refusal(response);
    return response.json();
  }

  /** DELETE /v1/calls/{id}; never throws. keepalive: the request outlives a page being left. */
  hangUp(callId, { keepalive = false } = {}) {
    const init = { method: "DELETE", ...(keepalive ? { keepalive: true } : {}) };
    return this.fetch(`/v1/calls/${callId}`, init).catch(() => {});
  }

  async fetch(path, init) {
    try {
      return await fetch(`${this.base}${path}`, { mode: "cors", credentials: "omit", ...init });
    } catch {
      // A network error, or a cross-origin request the server would not answer.
      throw new ParleyError("unreachable");
    }
  }
}

/** A refused request as a ParleyError (with .status): busy (503), unauthorized, forbidden, refused. */
async function refusal(response) {
  const body = await response.json().catch(() => ({}));
  const message = typeof body.error === "string" ? body.error : "";
  let error;
  if (response.status === 503) error = new ParleyError("busy", response.headers.get("Retry-After") || "");
  else if (response.status === 401) error = new ParleyError("unauthorized", message);
  else if (response.status === 403) {
    error = new ParleyError("forbidden", message);
    console.warn(`Parley: ${message || "this origin is not allowed"}`);
  } else error = new ParleyError("refused", message || `HTTP ${response.status}`);
  error.status = response.status;
  return error;
}
