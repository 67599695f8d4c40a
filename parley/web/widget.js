// <parley-call>: a voice call to a Parley server, embeddable in any page.
//
//   <script type="module" src="https://HOST/widget.js"></script>
//   <parley-call server="https://HOST" label="Talk to us" theme="auto" position="bottom-right"></parley-call>
//
// Attributes: server (default: where this script came from), label (the button's text), theme
// (auto | light | dark), position (inline | bottom-right | bottom-left), video (none | camera | screen |
// both: which video toggles the call offers; none, the default, never asks for a camera; an agent whose
// profile says `video = false` gets no toggles either). DOM events, bubbling out of the shadow root:
// `parley-state` {state, reason, message, callId}, `parley-transcript` {role, text, final} and
// `parley-video` {source, state, reason, message, agent, available}. Properties and methods: .client (the
// ParleyClient), .start(), .hangUp(), and
// .tokenProvider, an async function returning a join token for servers that require one (or the
// `token` attribute). `agent="NAME"` calls that agent profile; what its instruction is filled with comes
// from `data-var-NAME="value"` attributes and the `.variables` property ({name: value}, which wins),
// read when a call starts.
// No build step and no request anywhere but the Parley server; the server must list the page's origin
// in PARLEY_ALLOWED_ORIGINS.
import { Captions } from "./client/captions.js";
import { ParleyClient } from "./parley-client.js";
import { VIDEO_MODES, canShareScreen } from "./client/video.js";

const SCRIPT_ORIGIN = new URL(import.meta.url).origin;

const STYLE = `
:host {
  all: initial;
  display: inline-block;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  font-size: 15px;
  line-height: 1.4;
  --bg: #ffffff; --fg: #1b1b1f; --muted: #4a4a55; --panel: #f3f3f6; --border: #8a8a96;
  --accent: #0a7d32; --danger: #b3261e; --focus: #1a56db; --error-bg: #fde2e0; --error-fg: #7a1510;
  --shadow: 0 .5rem 1.5rem rgba(0, 0, 0, .18);
}
:host([hidden]) { display: none; }
:host([theme="dark"]) {
  --bg: #1d1d23; --fg: #ececf1; --muted: #b8b8c4; --panel: #2a2a32; --border: #6e6e7a;
  --focus: #8ab4ff; --error-bg: #4a1714; --error-fg: #ffd9d5; --shadow: 0 .5rem 1.5rem rgba(0, 0, 0, .5);
}
@media (prefers-color-scheme: dark) {
  :host(:not([theme="light"]):not([theme="dark"])) {
    --bg: #1d1d23; --fg: #ececf1; --muted: #b8b8c4; --panel: #2a2a32; --border: #6e6e7a;
    --focus: #8ab4ff; --error-bg: #4a1714; --error-fg: #ffd9d5; --shadow: 0 .5rem 1.5rem rgba(0, 0, 0, .5);
  }
}
:host([position="bottom-right"]), :host([position="bottom-left"]) {
  position: fixed; bottom: 1rem; z-index: 2147483000;
}
:host([position="bottom-right"]) { right: 1rem; }
:host([position="bottom-left"]) { left: 1rem; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
.widget { display: flex; flex-direction: column; gap: .5rem; align-items: flex-start; color: var(--fg); }
:host([position="bottom-right"]) .widget { align-items: flex-end; flex-direction: column-reverse; }
:host([position="bottom-left"]) .widget { flex-direction: column-reverse; }
button {
  font: inherit; cursor: pointer; border-radius: 999px; border: 1px solid var(--border);
  background: var(--panel); color: var(--fg); padding: .45rem 1rem;
}
button { min-height: 44px; min-width: 44px; } /* a target a thumb can hit */
button:disabled { opacity: .45; cursor: default; }
button:focus-visible { outline: 3px solid var(--focus); outline-offset: 2px; }
.call {
  display: inline-flex; align-items: center; gap: .5rem; background: var(--accent); border-color: var(--accent);
  color: #fff; font-weight: 600; padding: .65rem 1.2rem; box-shadow: var(--shadow);
}
.call svg { width: 1.1em; height: 1.1em; fill: currentColor; }
.hangup { background: var(--danger); border-color: var(--danger); color: #fff; }
button[aria-pressed="true"] { background: #5c4400; border-color: #5c4400; color: #fff; }
.panel {
  width: min(22rem, calc(100vw - 2rem)); background: var(--bg); border: 1px solid var(--border);
  border-radius: .8rem; padding: .75rem; box-shadow: var(--shadow); display: flex; flex-direction: column; gap: .5rem;
}
.status { margin: 0; font-weight: 600; }
.status[data-state="error"], .status[data-state="warning"] {
  background: var(--error-bg); color: var(--error-fg); padding: .4rem .6rem; border-radius: .4rem;
}
.speaking { display: flex; gap: 1rem; color: var(--muted); font-size: .9em; }
.who { display: inline-flex; align-items: center; gap: .35rem; }
.dot { width: .7rem; height: .7rem; border-radius: 50%; border: 2px solid var(--border); }
.who.on { color: var(--fg); font-weight: 600; }
.who.on .dot { background: var(--accent); border-color: var(--accent); }
.captions {
  list-style: none; margin: 0; padding: .4rem .6rem; background: var(--panel); border-radius: .5rem;
  max-height: 9rem; overflow-y: auto; font-size: .95em;
}
.captions:empty { display: none; }
.captions li { margin: .15rem 0; }
.captions .who-label { font-weight: 700; }
.captions .sources { margin: .15rem 0 0 1rem; padding: 0; font-size: .9em; }
.captions .sources a { color: var(--focus); }
.actions { display: flex; flex-wrap: wrap; gap: .5rem; justify-content: flex-end; }
.video-status { margin: 0; color: var(--muted); font-size: .9em; }
.recorded {
  margin: 0; font-size: .85em; color: var(--fg); background: var(--panel); border: 1px solid var(--border);
  padding: .2rem .6rem; border-radius: .4rem;
}
.video-status:empty { display: none; }
@media (max-width: 40rem), (pointer: coarse) {
  .captions { font-size: 16px; max-height: 35vh; } /* phones: readable at arm's length */
  .actions button { flex: 1 1 auto; }
}
.self-view { width: 8rem; aspect-ratio: 16 / 9; object-fit: contain; background: #000; border-radius: .4rem; align-self: flex-end; }
`;

const MIC_ICON = `<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M12 14a3 3 0 0 0 3-3V5a3 3 0 0 0-6 0v6a3 3 0 0 0 3 3zm5-3a5 5 0 0 1-10 0H5a7 7 0 0 0 6 6.92V21h2v-3.08A7 7 0 0 0 19 11h-2z"/></svg>`;

class ParleyCall extends HTMLElement {
  // A new agent may take video where the old one did not: a fresh client reads /v1/config again.
  static get observedAttributes() { return ["label", "server", "video", "agent"]; }

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = `
      <style>${STYLE}</style>
      <div class="widget" part="widget">
        <button class="call" type="button" part="button">${MIC_ICON}<span class="label"></span></button>
        <p class="recorded" part="recorded" hidden>This call is recorded.</p>
        <div class="panel" part="panel" hidden>
          <p class="status" role="status" aria-live="polite"></p>
          <div class="speaking" aria-hidden="true">
            <span class="who user"><span class="dot"></span>You</span>
            <span class="who agent"><span class="dot"></span>Agent</span>
          </div>
          <ol class="captions" role="log" aria-label="Captions"></ol>
          <video class="self-view" muted playsinline autoplay hidden aria-label="What the agent sees"></video>
          <p class="video-status" aria-live="polite"></p>
          <div class="actions" hidden>
            <button class="unlock" type="button" hidden>Tap to hear the agent</button>
            <button class="resume-mic" type="button" hidden>Resume microphone</button>
            <button class="camera" type="button" aria-pressed="false" hidden>Camera</button>
            <button class="screen" type="button" aria-pressed="false" hidden>Share screen</button>
            <button class="mute" type="button" aria-pressed="false">Mute</button>
            <button class="hangup" type="button">Hang up</button>
          </div>
        </div>
        <audio autoplay playsinline></audio>
      </div>`;
    this._els = {
      call: root.querySelector(".call"),
      label: root.querySelector(".label"),
      panel: root.querySelector(".panel"),
      status: root.querySelector(".status"),
      captions: root.querySelector(".captions"),
      actions: root.querySelector(".actions"),
      mute: root.querySelector(".mute"),
      hangup: root.querySelector(".hangup"),
      unlock: root.querySelector(".unlock"),
      resumeMic: root.querySelector(".resume-mic"),
      user: root.querySelector(".who.user"),
      agent: root.querySelector(".who.agent"),
      audio: root.querySelector("audio"),
      camera: root.querySelector(".camera"),
      screen: root.querySelector(".screen"),
      selfView: root.querySelector(".self-view"),
      videoStatus: root.querySelector(".video-status"),
      recorded: root.querySelector(".recorded"),
    };
    this._captions = new Captions(this._els.captions, 20);
    this._els.call.addEventListener("click", () => this.start());
    this._els.hangup.addEventListener("click", () => this.hangUp());
    this._els.mute.addEventListener("click", () => this._toggleMute());
    this._els.unlock.addEventListener("click", () => { this.client?.unlockAudio(); this._els.unlock.hidden = true; });
    this._els.resumeMic.addEventListener("click", () => { this.client?.unlockAudio(); this.client?.resumeMic(); });
    for (const source of ["camera", "screen"]) {
      this._els[source].addEventListener("click", () => {
        this.client.setVideo(this.client.video?.source === source ? null : source);
      });
    }
    this._renderLabel();
  }

  connectedCallback() {
    if (!this.client) this._makeClient();
  }

  disconnectedCallback() {
    if (this.client && !["idle", "ended", "error"].includes(this.client.state)) this.client.hangUp();
  }

  attributeChangedCallback(name) {
    if (name === "label") this._renderLabel();
    if (name !== "label" && this.client && ["idle", "ended", "error"].includes(this.client.state)) this._makeClient();
  }

  get server() { return this.getAttribute("server") || SCRIPT_ORIGIN; }

  get agent() { return this.getAttribute("agent") || null; }

  /** data-var-* attributes (the name after `data-var-`, as written), then the `variables` property. */
  _variables() {
    const fromAttributes = {};
    for (const { name, value } of this.attributes) {
      if (name.startsWith("data-var-")) fromAttributes[name.slice("data-var-".length)] = value;
    }
    return { ...fromAttributes, ...(this.variables || {}) };
  }

  /** none (the default: audio only, no camera prompt), camera, screen or both. */
  get video() {
    const mode = (this.getAttribute("video") || "none").toLowerCase();
    return VIDEO_MODES.includes(mode) ? mode : "none";
  }

  start() {
    this._captions.clear();
    return this.client.start();
  }

  hangUp() { return this.client.hangUp(); }

  _makeClient() {
    const client = new ParleyClient({
      server: this.server,
      audio: this._els.audio,
      // A join token: the `token` attribute, or a function the host page sets (fetching one per call).
      token: () => (this.tokenProvider ? this.tokenProvider() : this.getAttribute("token")),
      video: this.video !== "none",
      selfView: this._els.selfView,
      agent: () => this.agent,
      variables: () => this._variables(),
    });
    this.client = client;
    this._showToggles(true);
    // PARLEY_RECORD_AUDIO: callers are told before they press the button, not only once they speak.
    this._els.recorded.hidden = true;
    client.loadConfig().then(() => this._showRecorded(client), () => {}); // start() says why, if it fails
    client.addEventListener("state", ({ detail }) => {
      if (client !== this.client) return;
      this._showRecorded(client);
      this._showState(detail);
      this.dispatchEvent(new CustomEvent("parley-state", { detail, bubbles: true, composed: true }));
    });
    client.addEventListener("transcript", ({ detail }) => {
      if (client !== this.client) return;
      this._captions.add(detail);
      this.dispatchEvent(new CustomEvent("parley-transcript", { detail, bubbles: true, composed: true }));
    });
    client.addEventListener("event", ({ detail }) => { if (detail.type === "interrupted") this._captions.interrupted(); });
    client.addEventListener("grounding", ({ detail }) => { if (client === this.client) this._captions.sources(detail); });
    client.addEventListener("speaking", ({ detail }) => {
      this._els.user.classList.toggle("on", detail.user);
      this._els.agent.classList.toggle("on", detail.agent);
    });
    client.addEventListener("video", ({ detail }) => {
      if (client !== this.client) return;
      this._showToggles(detail.available); // an agent without video: none, and the status says why
      this._els.camera.setAttribute("aria-pressed", String(detail.source === "camera"));
      this._els.screen.setAttribute("aria-pressed", String(detail.source === "screen"));
      this._els.selfView.hidden = detail.state !== "on";
      this._els.videoStatus.textContent = detail.state === "off" && !detail.reason ? "" : detail.message;
      this.dispatchEvent(new CustomEvent("parley-video", { detail, bubbles: true, composed: true }));
    });
    client.addEventListener("autoplay", ({ detail }) => { this._els.unlock.hidden = !detail.blocked; });
    client.addEventListener("error", ({ detail }) => this._status("warning", detail.message));
    // Phones: a phone call takes the microphone (its track ends): say so and offer it back.
    client.addEventListener("mic", ({ detail }) => {
      if (client !== this.client) return;
      this._els.resumeMic.hidden = detail.state !== "interrupted";
      if (detail.state === "interrupted") this._status("warning", "The microphone was interrupted. The call is still on.");
      else if (client.state === "in-call") this._status("in-call", "In call");
    });
  }

  _showRecorded(client) {
    if (client === this.client) this._els.recorded.hidden = !client.config?.recorded;
  }

  /** The toggles the `video` attribute asks for, unless the agent takes no video. */
  _showToggles(available) {
    this._els.camera.hidden = !available || !["camera", "both"].includes(this.video);
    this._els.screen.hidden = !available || !["screen", "both"].includes(this.video) || !canShareScreen();
  }

  _renderLabel() {
    this._els.label.textContent = this.getAttribute("label") || "Talk to us";
  }

  _status(state, message) {
    this._els.status.textContent = message;
    this._els.status.dataset.state = state;
  }

  _showState({ state, message }) {
    const live = ["connecting", "in-call", "reconnecting"].includes(state);
    this._els.panel.hidden = state === "idle";
    this._els.actions.hidden = !live;
    this._els.call.hidden = live;
    this._status(state, message);
    if (!live) {
      this._els.unlock.hidden = true;
      this._els.resumeMic.hidden = true;
      this._els.mute.setAttribute("aria-pressed", "false");
    }
    // Keep keyboard focus on a visible control, but never pull it away from the host page.
    if (this.shadowRoot.activeElement) (live ? this._els.hangup : this._els.call).focus();
  }

  _toggleMute() {
    const muted = !this.client.muted;
    this.client.setMuted(muted);
    this._els.mute.setAttribute("aria-pressed", String(muted)); // the name stays "Mute": pressed means muted
  }
}

if (!customElements.get("parley-call")) customElements.define("parley-call", ParleyCall);

export { ParleyCall };
