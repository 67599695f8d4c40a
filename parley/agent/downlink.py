"""Downlink: the model's 24 kHz speech, upsampled once on arrival and played out as paced 20 ms frames.

`ModelAudio` turns each chunk from Gemini into 48 kHz samples with one stateful upsampler per turn (no
clicks at chunk boundaries) and queues them in a `PlayoutBuffer`. `PlayoutTrack` is the outgoing WebRTC
track: aiortc's sender asks for frames as fast as it can encode them, so the track paces itself on an
absolute clock and sends silence whenever the buffer is empty. Every frame it returns is built here, so
no malformed frame can reach the encoder (one bad frame silently kills aiortc's sender).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import opuslib
import opuslib.api.ctl as opus_ctl
import opuslib.api.encoder as opus_encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender

from parley.agent.upsampler import Upsampler

PLAYOUT_RATE = 48000
FRAME_SAMPLES = PLAYOUT_RATE // 50  # 20 ms: longer frames become several packets with one timestamp
TIME_BASE = fractions.Fraction(1, PLAYOUT_RATE)
FADE_SAMPLES = PLAYOUT_RATE * 5 // 1000  # a 5 ms fade on a cut avoids a click
# A sender that fell this far behind its clock (a stalled loop) starts a new clock rather than bursting.
MAX_LATENESS_S = 0.1
# Speech, mono: 48 kbps is plenty (aiortc's encoder spends 96 kbps on stereo copies of mono).
DOWNLINK_BITRATE = 48000
# The track starts a chunk this long after it could have at the least, over the last TRIM_WINDOW chunk
# starts, at most: any more is slack left by a late chunk, given back by moving the clock earlier.
TRIM_KEEP_S = 0.004
TRIM_WINDOW = 10
TRIM_MAX_S = 0.06  # at most this much at once (a burst of 3 frames), well below MAX_LATENESS_S
# A stream whose next chunk is late waits this long for it (the clock slips) before sending silence:
# longer than a frame, so the concealment of a lost uplink packet (it comes with the next one) is in time.
UNDERRUN_WAIT_S = 0.025
# Discontinuous transmission: once the agent's silence has settled, one 1-byte Opus DTX packet goes out,
# then one every DTX_REFRESH_S (libwebrtc's own Opus DTX rhythm), and nothing between them.
DTX_REFRESH_S = 0.4
DTX_FRAMES_BETWEEN = round(DTX_REFRESH_S * PLAYOUT_RATE / FRAME_SAMPLES) - 1  # skipped between two
# One frame of silence for every track (read-only: it is handed to the encoder and the recorder).
SILENT_FRAME = np.zeros(FRAME_SAMPLES, np.int16)
SILENT_FRAME.flags.writeable = False


class PlayoutBuffer:
    """48 kHz mono samples waiting to be played, as a queue of chunks with a read offset."""

    def __init__(self) -> None:
        # (samples, arrival time, when an ideal player would start them: at arrival, or when the audio
        # ahead of them has played, whichever is later)
        self._chunks: deque[tuple[np.ndarray, float, float]] = deque()
        self._offset = 0
        self.queued = 0
        self._ideal_end = 0.0
        self._waiter: asyncio.Future[bool] | None = None
        # A live source (real-time audio, like the loopback's echo) is never ahead of its clock: any audio
        # queued is lateness, so the track measures (and trims) its slack from arrival, not from `due`.
        self.live = False
        # For the chunk the last pop() started: when its first sample would have played in the ideal
        # player, as a time to compare with the frame's send time (its offset in the frame taken off).
        self.started_due: float | None = None

    def push(self, samples: np.ndarray, arrived_at: float) -> None:
        if samples.size:
            due = max(arrived_at, self._ideal_end)
            self._ideal_end = due + samples.size / PLAYOUT_RATE
            self._chunks.append((samples, arrived_at, due))
            self.queued += samples.size
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(True)

    async def wait_for_audio(self, timeout_s: float) -> bool:
        """Wait until something is pushed (True) or `timeout_s` passes (False)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout_s, _resolve, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def pop(self, count: int) -> tuple[np.ndarray, float | None]:
        """Up to `count` samples, and the arrival time of the first chunk this read started, if any."""
        parts: list[np.ndarray] = []
        started_chunk_at: float | None = None
        taken = 0
        while count and self._chunks:
            chunk, arrived_at, due = self._chunks[0]
            if self._offset == 0 and started_chunk_at is None:
                started_chunk_at = arrived_at
                self.started_due = due - taken / PLAYOUT_RATE
            take = min(count, chunk.size - self._offset)
            parts.append(chunk[self._offset : self._offset + take])
            self._offset += take
            count -= take
            taken += take
            if self._offset == chunk.size:
                self._chunks.popleft()
                self._offset = 0
        out = np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else np.zeros(0, np.int16)
        self.queued -= out.size
        return out, started_chunk_at

    def cut(self) -> int:
        """Drop everything queued except a short fade-out of what would have played next."""
        dropped = self.queued
        head, _ = self.pop(FADE_SAMPLES)
        self._chunks.clear()
        self._offset = 0
        self.queued = 0
        self._ideal_end = 0.0
        if head.size:
            ramp = np.linspace(1.0, 0.0, head.size, endpoint=False)
            self.push((head * ramp).astype(np.int16), time.monotonic())
        return dropped - head.size


class ModelAudio:
    """Gemini's 24 kHz PCM16 chunks -> 48 kHz samples in the playout buffer, turn by turn."""

    def __init__(self, buffer: PlayoutBuffer) -> None:
        self._buffer = buffer
        self._upsampler = Upsampler()  # one stream per turn: flushed at its end, reset on a cut
        self._discarding = False

    def push(self, pcm: bytes, arrived_at: float) -> None:
        if self._discarding or not pcm:
            return
        samples = np.frombuffer(pcm, dtype="<i2")[: len(pcm) // 2]
        self._buffer.push(self._upsampler.upsample(samples), arrived_at)

    def interrupt(self) -> int:
        """Barge-in: cut what is queued and ignore the rest of this turn. Returns samples dropped."""
        self._discarding = True
        self._upsampler.reset()
        return self._buffer.cut()

    def end_turn(self) -> None:
        """The turn is over: play the upsampler's last samples and accept the next turn's audio."""
        if not self._discarding:
            self._buffer.push(self._upsampler.flush(), time.monotonic())
        self._discarding = False


def _resolve(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class MonoOpusEncoder:
    """Opus at 48 kHz mono, CELT only, on the event loop: ~60 us a 20 ms frame here.

    aiortc's own encoder upmixes to stereo and runs every frame through the thread pool, and its sender
    computes each frame's audio level in pure Python: a track that hands the sender encoded packets skips
    all three. The restricted-low-delay mode codes CELT only, which was measured 3.5 times cheaper than
    the voip mode's SILK/hybrid coding at this bitrate (58 vs 208 us a frame of speech), and its
    look-ahead is 4 ms shorter.

    Digital silence is encoded only until the encoder settles: its first few silent frames still carry
    the tail of the audio before them, then it emits one 3-byte CELT silence-flag packet over and over
    (the decoder outputs zeros for it whatever its state). Once two silent frames in a row came out
    identical, that packet is sent as it is for the rest of the silence (25 us of encoding saved a
    frame; the agent is silent most of a call). What the browser receives is byte for byte what the
    encoder would have sent; only the encoder's rate control resumes speech from a shorter silence."""

    def __init__(self, bitrate: int = DOWNLINK_BITRATE) -> None:
        self._encoder = opuslib.Encoder(PLAYOUT_RATE, 1, opuslib.APPLICATION_RESTRICTED_LOWDELAY)
        opus_encoder.encoder_ctl(self._encoder.encoder_state, opus_ctl.set_bitrate, bitrate)
        self._last_silent: bytes | None = None  # the packet of the previous frame, if it was silent
        self._silence: bytes | None = None  # the settled silence packet, while the silence lasts
        self.frames_reused = 0

    @property
    def settled(self) -> bool:
        """The silence has settled: the last frame encoded was silent and came out as the repeating
        silence packet, so the decoder's state is silence and nothing of the speech before is left."""
        return self._silence is not None

    def dtx_packet(self) -> bytes:
        """An Opus DTX frame: the settled packet's TOC byte alone (RFC 6716 3.1, code 0, no frame
        data). libwebrtc's receivers (Chromium, Firefox) take a packet of at most 2 bytes as DTX and play
        comfort noise until the next packet, instead of concealing a loss; libopus decodes it as
        concealment of silence, i.e. silence."""
        assert self._silence is not None
        return bytes([self._silence[0] & 0xFC])

    def encode(self, samples: np.ndarray) -> bytes:
        if samples.any():
            self._last_silent = self._silence = None
            return bytes(self._encoder.encode(samples.tobytes(), FRAME_SAMPLES))
        if self._silence is not None:
            self.frames_reused += 1
            return self._silence
        packet = bytes(self._encoder.encode(samples.tobytes(), FRAME_SAMPLES))
        if packet == self._last_silent:
            self._silence = packet
        self._last_silent = packet
        return packet


class _NoHistory(dict[int, Any]):
    def __setitem__(self, key: int, value: Any) -> None:
        pass


def drop_rtp_history(sender: RTCRtpSender) -> None:
    """Make an audio sender keep no copies of the packets it sent (aiortc 1.16's private attribute).

    aiortc keeps the last 128 for retransmission on a NACK, which only video negotiates (its Opus
    offers and answers carry no rtcp-fb: no browser NACKs audio). They were dead weight for the
    collector: four tracked objects a packet, all young (replaced every 2.6 s), ~10,000 in a 20-call
    process, each young-generation collection walking them all: 3-10 ms pauses (docs/benchmarks.md,
    "What the server's loop still paid for at 40 calls")."""
    attribute = "_RTCRtpSender__rtp_history"
    if not hasattr(sender, attribute):
        raise RuntimeError("this aiortc version has no sender packet history to replace; pin aiortc==1.16.0")
    setattr(sender, attribute, _NoHistory())


class PlayoutTrack(MediaStreamTrack):
    """The agent's voice: exactly 20 ms s16 mono 48 kHz frames, paced on a monotonic clock.

    With an `encoder`, recv() returns each frame Opus-encoded (an av.Packet), which aiortc's sender
    passes straight to RTP. The first audio after silence goes out at once rather than at the next
    tick, and slack that a late chunk left in the clock is given back (TRIM_KEEP_S).

    With `dtx` (and an encoder), settled silence is not sent frame by frame: one DTX packet, then one
    every DTX_REFRESH_S on the stream's 20 ms grid, the RTP clock running on between them (the agent
    is silent most of a call: ~2.5 instead of 50 packets a second then, and none of the send path's
    work for the rest)."""

    kind = "audio"

    def __init__(
        self,
        buffer: PlayoutBuffer,
        on_chunk_started: Callable[[float], None] | None = None,
        encoder: MonoOpusEncoder | None = None,
        on_frame: Callable[[np.ndarray, int], None] | None = None,
        dtx: bool = False,
    ) -> None:
        super().__init__()
        self.buffer = buffer
        self._on_frame = on_frame  # each frame's samples and pts as they leave (a recording)
        self._on_chunk_started = on_chunk_started
        self._encoder = encoder
        self._idle = True
        self._min_slack = float("inf")
        self._slack_samples = 0
        self._clock_start: float | None = None
        self._pts = 0
        self.frames_sent = 0
        self.silent_frames = 0
        self.frames_skipped = 0  # silent frames never sent: DTX, or the silence a stalled loop missed
        self._dtx = dtx and encoder is not None
        self._in_dtx = False  # the last frame sent was a DTX packet
        self._after_frame: list[Callable[[], None]] = []

    def after_next_frame(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the next frame leaves this track (for the barge-in and set-up timings)."""
        self._after_frame.append(callback)

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._clock_start is None:
            self._clock_start = now - self._pts / PLAYOUT_RATE
        due = self._clock_start + self._pts / PLAYOUT_RATE
        if self._in_dtx and self._idle and not self.buffer.queued:
            # In DTX: nothing to send until audio comes or the next refresh is due. The refresh keeps
            # to the stream's 20 ms grid, like any frame: each move of the grid (a skip sent at once)
            # can look to the browser like jitter of up to its 10 ms tick, and raise its target.
            refresh_at = due - FRAME_SAMPLES / PLAYOUT_RATE + DTX_REFRESH_S
            came = await self.buffer.wait_for_audio(refresh_at - now)
            now = time.monotonic()
            if not came and now - refresh_at < MAX_LATENESS_S:
                self._pts += DTX_FRAMES_BETWEEN * FRAME_SAMPLES
                self.frames_skipped += DTX_FRAMES_BETWEEN
            elif now > due:
                self._skip_silence(now, due)
            else:  # audio came before the next tick: it goes out at once (clock moved up)
                self._clock_start = now - self._pts / PLAYOUT_RATE
            due = now
        if due > now:
            if self._idle and not self.buffer.queued:
                # Nothing playing: audio that comes before the tick goes out at once (clock moved up).
                if await self.buffer.wait_for_audio(due - now):
                    self._clock_start = time.monotonic() - self._pts / PLAYOUT_RATE
            else:
                await asyncio.sleep(due - now)
        elif self._idle and now - due > FRAME_SAMPLES / PLAYOUT_RATE:
            # The loop stalled during silence: skip the silence it missed, in the RTP clock too. Sending
            # it late, or the next audio in a burst to catch up with the clock, made later chunks start
            # before they were due (a negative downlink latency) and the browser stretch the audio.
            self._skip_silence(now, due)
        elif now - due > MAX_LATENESS_S:
            self._clock_start = now - self._pts / PLAYOUT_RATE
        if not self._idle and not self.buffer.queued:
            # Mid-stream and the next chunk is late: wait a little for it rather than insert silence.
            waited_from = time.monotonic()
            if await self.buffer.wait_for_audio(UNDERRUN_WAIT_S):
                self._clock_start += time.monotonic() - waited_from
                self._min_slack, self._slack_samples = float("inf"), 0  # a new phase: judge it afresh
        samples, chunk_arrived_at = self.buffer.pop(FRAME_SAMPLES)
        self._idle = samples.size == 0
        if samples.size == 0:
            self.silent_frames += 1
            samples = SILENT_FRAME
        elif samples.size < FRAME_SAMPLES:
            samples = np.concatenate([samples, np.zeros(FRAME_SAMPLES - samples.size, np.int16)])
        if chunk_arrived_at is not None:
            # the time to measure the chunk's added latency from: the end of the audio queued ahead of it
            # when it came, if later than its arrival (that wait is playback, not latency); for a live
            # source, always its arrival (audio queued ahead of live audio is lateness)
            due_at = chunk_arrived_at if self.buffer.live else self.buffer.started_due or chunk_arrived_at
            self._trim(time.monotonic() - due_at)
            if self._on_chunk_started is not None:
                self._on_chunk_started(due_at)
        if self._on_frame is not None:
            self._on_frame(samples, self._pts)
        frame: av.AudioFrame | av.Packet
        if self._encoder is not None:
            payload = self._encoder.encode(samples)
            if self._dtx and self._idle and self._encoder.settled:
                payload = self._encoder.dtx_packet()
                self._in_dtx = True
            else:
                self._in_dtx = False
            frame = av.Packet(payload)
        else:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = PLAYOUT_RATE
        frame.time_base = TIME_BASE
        frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        self.frames_sent += 1
        if self._after_frame:
            callbacks, self._after_frame = self._after_frame, []
            for callback in callbacks:
                callback()
        return frame

    def send_on(self, sender: RTCRtpSender) -> None:
        drop_rtp_history(sender)
        sender.replaceTrack(self)

    def _skip_silence(self, now: float, due: float) -> None:
        """Silence not sent (DTX, or a stalled loop) is skipped in the RTP clock, in whole frames (a
        recording fills them in), and the clock is moved to `now` so the next frame goes out at once.
        The skip is rounded up: the next packet then looks a little early to the browser's jitter
        buffer, never late (a late-looking packet raises its target delay for a while)."""
        frames = -(-int((now - due) * PLAYOUT_RATE) // FRAME_SAMPLES)
        self._pts += frames * FRAME_SAMPLES
        self.frames_skipped += frames
        self._clock_start = now - self._pts / PLAYOUT_RATE

    def _trim(self, slack_s: float) -> None:
        """Chunks start `slack_s` later than they could: if even the least of a window is more than
        TRIM_KEEP_S (a late chunk pushed the clock back), move the clock up by the difference."""
        self._min_slack = min(self._min_slack, slack_s)
        self._slack_samples += 1
        if self._slack_samples >= TRIM_WINDOW:
            if self._min_slack > TRIM_KEEP_S and self._clock_start is not None:
                self._clock_start -= min(self._min_slack - TRIM_KEEP_S, TRIM_MAX_S)
            self._min_slack = float("inf")
            self._slack_samples = 0
