"""Checks on the caller's SDP offer, and the one change Parley makes to aiortc's answer."""

from __future__ import annotations

import re

from aiortc.sdp import SessionDescription


class OfferError(ValueError):
    """An offer Parley cannot answer; `status` is the HTTP status that says why (400 or 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


VIDEO_CODECS = ("video/vp8", "video/h264")


def check_offer(sdp: str) -> None:
    """Raise OfferError unless `sdp` is an offer with an audio section that can carry Opus, and at
    most one video section (camera or screen, VP8 or H.264) beside it."""
    if not sdp.lstrip().startswith("v=0"):
        raise OfferError(400, "malformed SDP: an offer starts with 'v=0'")
    if not re.search(r"^o=", sdp, re.MULTILINE) or not re.search(r"^m=", sdp, re.MULTILINE):
        raise OfferError(400, "malformed SDP: no origin (o=) or media (m=) line")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:
        raise OfferError(400, f"malformed SDP: {type(exc).__name__}") from None
    audio = [m for m in description.media if m.kind == "audio"]
    video = [m for m in description.media if m.kind == "video" and m.port != 0]
    if not audio:
        if video:
            raise OfferError(422, "the offer has video but no audio m-line: video comes only with audio")
        raise OfferError(422, "the offer has no audio m-line")
    if len(video) > 1:
        raise OfferError(
            422,
            f"the offer has {len(video)} video m-lines: send one, camera or screen (switch by replaceTrack)",
        )
    if video and not any(c.mimeType.lower() in VIDEO_CODECS for c in video[0].rtp.codecs):
        raise OfferError(422, "the offer's video offers neither VP8 nor H.264")
    if not any(codec.mimeType.lower() == "audio/opus" for m in audio for codec in m.rtp.codecs):
        raise OfferError(422, "the offer's audio does not include Opus")
    for media in audio + video:
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise OfferError(400, f"malformed SDP: the {media.kind} section has no ICE credentials")
        if media.dtls is None or not media.dtls.fingerprints:
            raise OfferError(400, f"malformed SDP: the {media.kind} section has no DTLS fingerprint")


def ask_for_inband_fec(sdp: str) -> str:
    """Add `useinbandfec=1` to the answer's Opus format so browsers send FEC we can recover losses from.

    aiortc writes no fmtp line for Opus at all, so without this a browser never sends in-band FEC.
    """
    lines = sdp.split("\r\n")
    opus_pts = {m.group(1) for line in lines if (m := re.match(r"a=rtpmap:(\d+) opus/48000", line, re.I))}
    out: list[str] = []
    has_fmtp = {
        m.group(1) for line in lines if (m := re.match(r"a=fmtp:(\d+) ", line)) and m.group(1) in opus_pts
    }
    for line in lines:
        fmtp = re.match(r"a=fmtp:(\d+) (.*)", line)
        if fmtp and fmtp.group(1) in opus_pts and "useinbandfec" not in fmtp.group(2):
            line = f"{line};useinbandfec=1"
        out.append(line)
        rtpmap = re.match(r"a=rtpmap:(\d+) opus/48000", line, re.I)
        if rtpmap and rtpmap.group(1) not in has_fmtp:
            out.append(f"a=fmtp:{rtpmap.group(1)} minptime=10;useinbandfec=1")
    return "\r\n".join(out)
