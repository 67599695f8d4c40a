"""Offer checks and the answer's request for in-band FEC."""

from __future__ import annotations

import pytest

from parley.agent.sdp import OfferError, ask_for_inband_fec, check_offer

ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
)


def test_answer_gets_useinbandfec_when_aiortc_wrote_no_fmtp() -> None:
    answer = ask_for_inband_fec(ANSWER)
    assert "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n" in answer


def test_existing_opus_fmtp_is_extended_not_duplicated() -> None:
    answer = ask_for_inband_fec(ANSWER.replace("PCMU/8000\r\n", "PCMU/8000\r\na=fmtp:111 minptime=10\r\n"))
    assert answer.count("a=fmtp:111") == 1
    assert "a=fmtp:111 minptime=10;useinbandfec=1" in answer


@pytest.mark.parametrize(
    ("sdp", "status"),
    [
        ("hello", 400),
        ("v=0\r\n", 400),
        (
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
            "a=rtpmap:96 VP8/90000\r\n",
            422,
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
            "a=rtpmap:0 PCMU/8000\r\n",
            422,
        ),
        (ANSWER, 400),  # opus but no ICE credentials or fingerprint
    ],
)
def test_bad_offers_are_refused_with_a_reason(sdp: str, status: int) -> None:
    with pytest.raises(OfferError) as refused:
        check_offer(sdp)
    assert refused.value.status == status
    assert refused.value.message
