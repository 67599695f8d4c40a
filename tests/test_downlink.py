"""The downlink: upsampled once, paced 20 ms frames, silence when idle, an instant cut on barge-in."""

from __future__ import annotations

import itertools
import time

import numpy as np

from parley.agent.downlink import FADE_SAMPLES, FRAME_SAMPLES, ModelAudio, PlayoutBuffer, PlayoutTrack


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16)


def drain(buffer: PlayoutBuffer) -> np.ndarray:
    out, _ = buffer.pop(buffer.queued)
    return out


def test_chunks_are_resampled_to_48k_without_clicks_at_boundaries() -> None:
    buffer = PlayoutBuffer()
    audio = ModelAudio(buffer)
    source = tone(1.0, 24000)
    for i in range(0, source.size, 4800 // 7):  # odd chunk sizes, like bursts from the network
        audio.push(source[i : i + 4800 // 7].tobytes(), time.monotonic())
    audio.end_turn()
    out = drain(buffer)
    assert abs(out.size - 2 * source.size) <= 2
    # a clean 440 Hz tone: no sample-to-sample jump beyond what the sine itself makes
    max_step = 12000 * 2 * np.pi * 440 / 48000
    assert np.abs(np.diff(out[100:-100].astype(np.int32))).max() < max_step * 1.2


def test_upsampled_speech_band_keeps_its_tone_and_its_images_far_down() -> None:
    for freq in (1000.0, 4000.0, 10000.0):  # a 24 kHz stream's images land at 24 kHz - f
        buffer = PlayoutBuffer()
        audio = ModelAudio(buffer)
        audio.push(tone(1.0, 24000, freq).tobytes(), time.monotonic())
        audio.end_turn()
        out = drain(buffer)[4800:43200].astype(float) * np.hanning(38400)
        spectrum = np.abs(np.fft.rfft(out))
        bins = np.fft.rfftfreq(out.size, 1 / 48000)
        level = spectrum[np.argmin(np.abs(bins - freq))]
        image = spectrum[np.argmin(np.abs(bins - (24000 - freq)))]
        assert level > 0.9 * 12000 * out.size / 4  # the tone at its own level (Hann window: gain 1/2)
        assert 20 * np.log10(image / level) < -80


def test_a_turn_starts_on_its_first_sample_and_keeps_nothing_of_the_last() -> None:
    buffer = PlayoutBuffer()
    audio = ModelAudio(buffer)
    click = np.zeros(480, np.int16)
    click[0] = 20000
    audio.push(tone(0.2, 24000).tobytes(), time.monotonic())
    audio.interrupt()
    drain(buffer)
    audio.end_turn()
    audio.push(click.tobytes(), time.monotonic())
    audio.end_turn()
    out = drain(buffer)
    assert out.size == 960
    assert int(np.argmax(np.abs(out))) == 0  # not delayed by the filter, and no tone left before it
    assert np.abs(out[40:]).max() < 20  # the interrupted tone did not leak into this turn


async def test_track_emits_paced_20ms_mono_frames_and_silence_when_idle() -> None:
    buffer = PlayoutBuffer()
    track = PlayoutTrack(buffer)
    buffer.push(tone(0.1, 48000), time.monotonic())
    started = time.monotonic()
    frames = [await track.recv() for _ in range(25)]
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 2.0  # 25 frames are 0.5 s of audio, not a burst (nor a stall)
    for i, frame in enumerate(frames):
        assert frame.samples == FRAME_SAMPLES and frame.sample_rate == 48000
        assert frame.format.name == "s16" and frame.layout.name == "mono"
        if i < 5:  # the audio is contiguous; silence after it may skip ahead if the loop stalled
            assert frame.pts == i * FRAME_SAMPLES
        else:
            assert frame.pts >= frames[i - 1].pts + FRAME_SAMPLES
    loud = [np.abs(f.to_ndarray()).max() > 1000 for f in frames]
    assert loud[:5] == [True] * 5 and not any(loud[5:])
    assert track.silent_frames == 20


def test_interrupt_cuts_the_queue_with_a_short_fade_and_ignores_the_rest_of_the_turn() -> None:
    buffer = PlayoutBuffer()
    audio = ModelAudio(buffer)
    audio.push(tone(2.0, 24000).tobytes(), time.monotonic())
    assert buffer.queued > 90000
    dropped = audio.interrupt()
    assert dropped > 90000 - FADE_SAMPLES
    assert buffer.queued <= FADE_SAMPLES
    audio.push(tone(1.0, 24000).tobytes(), time.monotonic())  # late audio of the interrupted turn
    tail = drain(buffer)
    assert tail.size <= FADE_SAMPLES
    assert abs(int(tail[-1])) < 12000 * 0.05  # faded to near zero: no click
    audio.end_turn()
    audio.push(tone(0.5, 24000).tobytes(), time.monotonic())  # the next turn plays again
    assert buffer.queued > 20000


def test_buffer_pop_reports_when_a_chunk_starts_playing() -> None:
    buffer = PlayoutBuffer()
    buffer.push(np.ones(1500, np.int16), 10.0)
    buffer.push(np.ones(500, np.int16), 11.0)
    first, started = buffer.pop(960)
    assert first.size == 960 and started == 10.0
    second, started = buffer.pop(960)
    assert second.size == 960 and started == 11.0  # the second chunk began inside this frame
    rest, started = buffer.pop(960)
    assert rest.size == 80 and started is None


async def test_frames_encode_with_aiortcs_opus_encoder() -> None:
    from aiortc.codecs.opus import OpusEncoder

    buffer = PlayoutBuffer()
    track = PlayoutTrack(buffer)
    encoder = OpusEncoder()
    buffer.push(tone(0.2, 48000), time.monotonic())
    payloads: list[bytes] = []
    for _ in range(5):
        payloads += encoder.encode(await track.recv())[0]
    assert len(payloads) >= 4  # one packet per 20 ms frame (the first may be held back)


async def test_a_reply_after_a_stalled_loop_is_paced_from_its_arrival_and_never_early() -> None:
    # The call summary's downlink p50 read -14 and -114 ms: after a stall, the track caught up with its
    # clock by sending the first chunk's frames in a burst, so later chunks started before their due.
    buffer = PlayoutBuffer()
    latencies: list[float] = []
    track = PlayoutTrack(buffer, lambda due: latencies.append(time.monotonic() - due))
    for _ in range(5):
        await track.recv()  # silence: the clock runs
    time.sleep(0.09)  # noqa: ASYNC251 - the event loop stalls, as the emulator's resampling did
    arrived = time.monotonic()
    for _ in range(5):
        buffer.push(tone(0.1, 48000), arrived)  # the reply, five chunks at once (Gemini sends ahead)
    sent: list[float] = []
    pts: list[int] = []
    for _ in range(25):
        frame = await track.recv()
        sent.append(time.monotonic())
        pts.append(frame.pts)
    assert len(latencies) == 5
    assert min(latencies) >= 0, f"a chunk started before it was due: {latencies}"
    assert max(latencies) < 0.06
    # paced from the first audio: 24 frames after the first take ~0.48 s, not a burst
    assert sent[-1] - sent[0] > 0.4
    # the silence the stall swallowed is skipped in the RTP clock, not squeezed in after it
    assert pts[0] - 4 * FRAME_SAMPLES >= 48000 * 0.08


def test_settled_digital_silence_is_sent_as_one_reused_packet_and_speech_after_it_is_intact() -> None:
    import opuslib

    from parley.agent.downlink import PLAYOUT_RATE, MonoOpusEncoder
    from parley.caller import load_wav
    from tests.audio import snr_db

    speech = load_wav("tests/data/speech.wav")  # 48 kHz mono
    speech = speech[: speech.size // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    before, after = speech[:50], speech[50:150]
    frames = [*before, *[np.zeros(FRAME_SAMPLES, np.int16)] * 100, *after]

    encoder = MonoOpusEncoder()
    packets = [encoder.encode(frame) for frame in frames]
    # every silent frame once the encoder settled is the same packet, not a fresh encode
    assert encoder.frames_reused >= 90
    assert len(set(packets[60:150])) == 1 and len(packets[100]) <= 8

    # what the browser hears: the silence decodes to silence, and the speech after it as well as from
    # an encoder that encoded every silent frame (the same settings, straight libopus)
    plain = opuslib.Encoder(PLAYOUT_RATE, 1, opuslib.APPLICATION_RESTRICTED_LOWDELAY)
    opuslib.api.encoder.encoder_ctl(plain.encoder_state, opuslib.api.ctl.set_bitrate, 48000)
    reference = [bytes(plain.encode(frame.tobytes(), FRAME_SAMPLES)) for frame in frames]
    assert packets[60:150] == reference[60:150]  # byte for byte what would have gone anyway

    def decoded(stream: list[bytes]) -> np.ndarray:
        decoder = opuslib.Decoder(PLAYOUT_RATE, 1)
        pcm = b"".join(decoder.decode(p, FRAME_SAMPLES) for p in stream)
        return np.frombuffer(pcm, np.int16)

    ours, theirs = decoded(packets), decoded(reference)
    silence = ours[60 * FRAME_SAMPLES : 150 * FRAME_SAMPLES]
    assert np.abs(silence).max() == 0
    delay = 120  # CELT low-delay look-ahead: 2.5 ms at 48 kHz
    original = after.reshape(-1)[:-FRAME_SAMPLES]
    start = 150 * FRAME_SAMPLES + delay
    ours_snr = snr_db(original, ours[start : start + original.size])
    theirs_snr = snr_db(original, theirs[start : start + original.size])
    assert ours_snr > 10 and ours_snr > theirs_snr - 0.5, (ours_snr, theirs_snr)


async def test_settled_silence_goes_out_as_dtx_every_400_ms_and_the_next_reply_at_once() -> None:
    import opuslib

    from parley.agent.downlink import DTX_REFRESH_S, PLAYOUT_RATE, MonoOpusEncoder
    from parley.caller import load_wav
    from tests.audio import snr_db

    speech = load_wav("tests/data/speech.wav")[: PLAYOUT_RATE // 2]  # 0.5 s, 48 kHz mono
    buffer = PlayoutBuffer()
    track = PlayoutTrack(buffer, encoder=MonoOpusEncoder(), dtx=True)
    sent: list[tuple[float, int, bytes]] = []  # (sent at, pts, payload)

    async def receive_until(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            packet = await track.recv()
            sent.append((time.monotonic(), int(packet.pts), bytes(packet)))

    buffer.push(speech, time.monotonic())
    await receive_until(3.0)  # the reply, the silence settling, then DTX
    dtx = [(at, pts) for at, pts, payload in sent if len(payload) == 1]
    assert len(dtx) >= 5, [len(p) for _, _, p in sent]
    # the refreshes keep to the stream's clock, as its frames do: sent when their timestamps say, late
    # only by the timer (each sent at once, a whole frame early, they drifted 10-20 ms a refresh)
    offsets = [at - pts / PLAYOUT_RATE for at, pts in dtx]
    assert max(offsets) - min(offsets) < 0.04, offsets
    first_dtx = next(i for i, (_, _, payload) in enumerate(sent) if len(payload) == 1)
    assert first_dtx <= 25 + 20  # 25 frames of speech, the encoder's tail, then DTX at once
    # while in DTX only one packet per DTX_REFRESH_S leaves, and the RTP clock keeps wall time
    for (at, pts), (next_at, next_pts) in itertools.pairwise(dtx):
        assert next_pts - pts == round((next_pts - pts) / FRAME_SAMPLES) * FRAME_SAMPLES
        assert DTX_REFRESH_S - 0.03 < next_at - at < DTX_REFRESH_S + 0.3
        assert abs((next_pts - pts) / PLAYOUT_RATE - (next_at - at)) < 0.03
    in_dtx = [s for s in sent if s[0] >= dtx[0][0]]
    assert all(len(payload) == 1 for _, _, payload in in_dtx)

    # the next reply leaves the moment it comes, not at the next refresh
    await_from = time.monotonic()
    buffer.push(speech, time.monotonic())
    reply = await track.recv()
    assert time.monotonic() - await_from < 0.05
    assert len(bytes(reply)) > 10
    last_at, last_pts, _ = sent[-1]
    assert abs((int(reply.pts) - last_pts) / PLAYOUT_RATE - (time.monotonic() - last_at)) < 0.03
    sent.append((time.monotonic(), int(reply.pts), bytes(reply)))
    await receive_until(0.6)
    assert track.frames_skipped > 50 and track.frames_sent < 25 + 25 + 45 + 10

    # decoded by pts (a receiver plays DTX as silence), the second reply is as clean as the first
    decoder = opuslib.Decoder(PLAYOUT_RATE, 1)
    heard = np.zeros(sent[-1][1] + FRAME_SAMPLES, np.int16)
    for _, pts, payload in sent:
        heard[pts : pts + FRAME_SAMPLES] = np.frombuffer(decoder.decode(payload, FRAME_SAMPLES), np.int16)
    delay = 120  # CELT's 2.5 ms look-ahead
    original = speech[:-FRAME_SAMPLES]
    first = snr_db(original, heard[delay : delay + original.size])
    start = int(reply.pts) + delay
    second = snr_db(original, heard[start : start + original.size])
    assert first > 10 and second > first - 1.0, (first, second)
    assert np.abs(heard[dtx[0][1] : dtx[-1][1]]).max() < 50  # the DTX stretch is silence
