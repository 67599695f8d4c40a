"""The uplink decoder: in-order packets straight through, losses concealed or recovered, late ones dropped."""

from __future__ import annotations

import gc

import numpy as np
import opuslib
import opuslib.api.ctl as ctl
import opuslib.api.encoder as opus_encoder
from aiortc.rtp import RtpPacket

from parley.agent.uplink import OpusUplink
from parley.caller import load_wav
from tests.audio import snr_db

SPEECH = "tests/data/speech.wav"


def encode_speech(fec: bool) -> tuple[np.ndarray, list[bytes]]:
    """The test speech at 16 kHz and its 20 ms Opus packets (48 kHz encoder, as browsers use)."""
    speech48 = load_wav(SPEECH)[: 48000 * 3]
    encoder = opuslib.Encoder(48000, 1, opuslib.APPLICATION_VOIP)
    if fec:
        opus_encoder.encoder_ctl(encoder.encoder_state, ctl.set_inband_fec, 1)
        opus_encoder.encoder_ctl(encoder.encoder_state, ctl.set_packet_loss_perc, 20)
    packets = [
        encoder.encode(speech48[i : i + 960].tobytes(), 960) for i in range(0, speech48.size - 959, 960)
    ]
    speech16 = speech48[::3]
    return speech16, packets


def rtp(seq: int, payload: bytes) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=seq & 0xFFFF, timestamp=(seq * 960) & 0xFFFFFFFF)
    packet._data = payload  # type: ignore[attr-defined]
    return packet


def run(packets: list[tuple[int, bytes]]) -> tuple[np.ndarray, OpusUplink]:
    out: list[bytes] = []
    uplink = OpusUplink(lambda pcm, _t: out.append(pcm))
    for seq, payload in packets:
        assert uplink.add(rtp(seq, payload)) == (False, None)
    return np.frombuffer(b"".join(out), dtype=np.int16), uplink


def test_in_order_packets_decode_to_16k_pcm_at_once() -> None:
    _, packets = encode_speech(fec=False)
    out: list[bytes] = []
    uplink = OpusUplink(lambda pcm, _t: out.append(pcm))
    for seq, payload in enumerate(packets):
        uplink.add(rtp(seq, payload))
        # every packet is decoded before add() returns: no buffering at all
        assert len(out) == seq + 1
        assert len(out[-1]) == 320 * 2
    assert uplink.stats.packets == len(packets)
    assert uplink.stats.concealed == uplink.stats.recovered == uplink.stats.late == 0


def test_losses_are_filled_so_the_stream_stays_continuous() -> None:
    _, packets = encode_speech(fec=True)
    lost = {22, 60, 61, 82, 83, 84}
    clean, _ = run(list(enumerate(packets)))
    lossy, uplink = run([(s, p) for s, p in enumerate(packets) if s not in lost])
    assert lossy.size == clean.size  # no frame vanished: Gemini hears continuous audio
    assert uplink.stats.recovered == 3  # the last frame of each gap comes from the next packet's FEC
    assert uplink.stats.concealed == 3
    # what fills the gaps resembles the lost speech, where silence would score 0 dB
    lost_samples = np.concatenate([np.arange(s * 320, (s + 1) * 320) for s in sorted(lost)])
    assert np.abs(clean[lost_samples]).mean() > 300  # there was speech to lose
    assert snr_db(clean[lost_samples], lossy[lost_samples]) > 3


def test_late_and_duplicate_packets_are_dropped_not_replayed() -> None:
    _, packets = encode_speech(fec=False)
    order = [0, 1, 2, 4, 3, 5, 5, 6]
    pcm, uplink = run([(s, packets[s]) for s in order])
    assert uplink.stats.late == 2  # 3 arrived after 4, and 5 twice
    assert pcm.size == 7 * 320  # 0..6 once each; 3 was concealed/recovered in place


def test_sequence_numbers_wrap_around() -> None:
    _, packets = encode_speech(fec=False)
    start = 0xFFFF - 3
    pcm, uplink = run([(start + i, packets[i]) for i in range(10)])
    assert pcm.size == 10 * 320
    assert uplink.stats.late == 0 and uplink.stats.concealed == 0


def test_a_long_gap_is_a_pause_not_a_loss() -> None:
    _, packets = encode_speech(fec=False)
    pcm, uplink = run([(0, packets[0]), (1, packets[1]), (500, packets[2])])
    assert uplink.stats.concealed == 0
    assert pcm.size == 3 * 320


def test_garbage_payload_is_concealed_not_fatal() -> None:
    _, packets = encode_speech(fec=False)
    pcm, uplink = run([(0, packets[0]), (1, b"\xff\xff\xff\xff\xff"), (2, packets[2])])
    assert uplink.stats.decode_errors == 1
    assert pcm.size == 3 * 320


def test_inband_fec_recovers_a_lost_frame_better_than_concealment() -> None:
    lost = {9, 22, 34, 66, 80}  # single losses in the middle of words
    scores = {}
    for fec in (False, True):
        _, packets = encode_speech(fec=fec)
        clean, _ = run(list(enumerate(packets)))
        lossy, _ = run([(s, p) for s, p in enumerate(packets) if s not in lost])
        idx = np.concatenate([np.arange(s * 320, (s + 1) * 320) for s in sorted(lost)])
        scores[fec] = snr_db(clean[idx], lossy[idx])
    assert scores[True] > scores[False] + 6, scores


def test_a_flood_is_throttled_to_a_little_faster_than_real_time() -> None:
    _, packets = encode_speech(fec=False)
    out: list[bytes] = []
    uplink = OpusUplink(lambda pcm, _t: out.append(pcm), flood_guard=True)
    for seq in range(400):  # 8 s of audio at once
        uplink.add(rtp(seq, packets[seq % len(packets)]))
    decoded_s = len(out) * 0.02
    assert 0.9 < decoded_s < 1.2  # the one-second burst allowance, then nothing
    assert uplink.stats.flood_dropped == 400 - len(out)


def test_decoding_matches_libopus_through_opuslib_and_leaves_no_garbage() -> None:
    _, packets = encode_speech(fec=True)
    lost = {5, 17, 18, 40}
    reference = opuslib.Decoder(16000, 1)
    expected: list[bytes] = []
    for seq, payload in enumerate(packets):
        if seq in lost:
            expected.append(
                reference.decode(b"", 320)
                if seq + 1 in lost
                else reference.decode(packets[seq + 1], 320, True)
            )
        else:
            expected.append(reference.decode(payload, 320))
    gc.collect()
    gc.disable()
    try:
        pcm, uplink = run([(s, p) for s, p in enumerate(packets) if s not in lost])
        garbage = gc.collect()
    finally:
        gc.enable()
    assert pcm.tobytes() == b"".join(expected)
    assert uplink.stats.concealed + uplink.stats.recovered == len(lost)
    # opuslib's own decode leaves two objects per frame for the cyclic collector (~300 here)
    assert garbage < 20, garbage
