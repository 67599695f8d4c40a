// Microphones and playback: opening the microphone (with the browser's echo canceller, noise
// suppression and gain control), listing devices, level meters, and playing the agent from an
// <audio> element, so the echo canceller has it as its reference (Web Audio is for analysis only).
import { ParleyError } from "./events.js";

export function dbfs(buffer) {
  let sum = 0;
  for (let i = 0; i < buffer.length; i += 1) sum += buffer[i] * buffer[i];
  const rms = Math.sqrt(sum / buffer.length);
  return rms > 1e-6 ? 20 * Math.log10(rms) : -120;
}

/** A level meter on a MediaStream (analysis only: never connected to the speakers). */
export class Meter {
  constructor(context, stream) {
    this.source = context.createMediaStreamSource(stream);
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 1024; // ~21 ms at 48 kHz, about one tick
    this.buffer = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
  }

  level() {
    this.analyser.getFloatTimeDomainData(this.buffer);
    return dbfs(this.buffer);
  }

  disconnect() {
    try { this.source.disconnect(); } catch { /* already */ }
  }
}

/** The microphones (labels only once permission is given). */
export async function microphones() {
  if (!navigator.mediaDevices?.enumerateDevices) return [];
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices.filter((d) => d.kind === "audioinput");
}

/**
 * Open a microphone. Throws ParleyError: insecure, mic-denied, no-mic or mic-busy.
 * @param {string} deviceId "" for the default one
 * @param {boolean} muted start with the track disabled
 * @param {function(): void} onEnded the track stopped by itself (unplugged, taken by another app)
 */
export async function openMic(deviceId, muted, onEnded) {
  if (!navigator.mediaDevices?.getUserMedia) throw new ParleyError("insecure");
  const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  if (deviceId) audio.deviceId = { exact: deviceId };
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio, video: false });
    stream.getAudioTracks().forEach((track) => {
      track.enabled = !muted;
      track.addEventListener("ended", onEnded);
    });
    return stream;
  } catch (error) {
    if (error?.name === "NotAllowedError" || error?.name === "SecurityError") throw new ParleyError("mic-denied");
    if (error?.name === "NotFoundError" || error?.name === "OverconstrainedError") throw new ParleyError("no-mic");
    throw new ParleyError("mic-busy", error?.message);
  }
}

/** Play an <audio> element; onAutoplay(blocked) says whether the browser wants a tap first. */
export function play(audio, onAutoplay) {
  const playing = audio.play?.();
  playing?.then(() => onAutoplay(false)).catch((error) => {
    // An element with no source yet rejects with NotSupportedError: that is no block.
    if (error?.name === "NotAllowedError") onAutoplay(true);
  });
}

/**
 * Allow playback (mobile autoplay rules): call it inside a user gesture. Returns the AudioContext
 * (made once, resumed every time) the meters use.
 */
export function unlock(context, audio, onAutoplay) {
  const AudioContextClass = globalThis.AudioContext || globalThis.webkitAudioContext;
  const ctx = context || (AudioContextClass ? new AudioContextClass() : null);
  ctx?.resume?.().catch(() => {});
  if (audio) {
    audio.muted = false;
    // Play something now, in the gesture (silence until the agent's track arrives): the element
    // may then play without one, as Safari and mobile browsers require.
    if (!audio.srcObject && ctx?.createMediaStreamDestination) {
      audio.srcObject = ctx.createMediaStreamDestination().stream;
    }
    play(audio, onAutoplay);
  }
  return ctx;
}
