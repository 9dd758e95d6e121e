"""How many scans (SOS segments) the first image of a JPEG stream declares, read from its markers.

A progressive JPEG's decode work is its pixels times its scans: libjpeg runs every scan over
every coefficient block, so a small file that repeats one scan thousands of times holds a decode
thread for seconds while its header looks harmless. Counting the scans before decoding lets that
file be refused up front, as the pixel cap refuses a decompression bomb.

The walk follows the stream as libjpeg does, so nothing is counted that libjpeg would not run:
segment payloads (APPn, COM: an EXIF thumbnail's own SOS) are skipped by their length; inside a
scan's entropy-coded data an 0xFF byte is followed by 0x00 (stuffing), an RSTn marker or more
0xFF fill bytes, so the first other marker ends the scan; and counting stops at the first EOI
(what follows it, e.g. an MPO file's second image, is never decoded). Plain Python over the
markers, with the entropy data skipped by a regex: milliseconds for a body of the largest
allowed size.
"""

from __future__ import annotations

import re
from typing import Final

# The default limit (SWIN_MAX_JPEG_SCANS). libjpeg's own progressive scripts write 6 scans for
# grey, 10 for YCbCr and 18 for CMYK, and other encoders' files seen in the wild hold 7 to 11:
# 100 leaves over 5x room for a hand-tuned script on an image of ordinary size.
DEFAULT_MAX_SCANS: Final = 100
# Scans times pixels may not exceed this many scans of an image at the pixel cap: room for the
# 18 scans of libjpeg's CMYK script at the largest size, while a large image can no longer spend
# all of DEFAULT_MAX_SCANS (a 6300 x 6300 grey file of 100 scans is 161 KB and seconds of CPU).
SCAN_PASSES: Final = 20

_SOI: Final = b"\xff\xd8"
_SOS: Final = 0xDA
_EOI: Final = 0xD9
# Markers without a length field: TEM and RST0..RST7 (SOI cannot recur in a valid stream).
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})
# The next marker after entropy-coded data: one or more 0xFF, then a byte that is neither
# stuffing (0x00) nor a restart marker (RST0..RST7); the group is the marker's code.
_MARKER_AFTER_SCAN: Final = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")


def count_scans(data: bytes, *, stop_after: int | None = None) -> int:
    """Scans of the first image in ``data``; 0 if it is not a JPEG stream (no SOI).

    Stops counting once past ``stop_after`` (the caller's limit): a bomb's excess need not be
    walked. A truncated or malformed stream counts the scans found before the damage; deciding
    that the file is broken is the decoder's job.
    """
    if not data.startswith(_SOI):
        return 0
    scans, pos, end = 0, len(_SOI), len(data)
    while pos < end:
        marker, pos = _next_marker(data, pos)
        if marker is None or marker == _EOI:
            break
        if marker in _STANDALONE:
            continue
        if pos + 2 > end:
            break
        segment_end = pos + int.from_bytes(data[pos : pos + 2], "big")
        if marker != _SOS:
            pos = segment_end
            continue
        scans += 1
        if stop_after is not None and scans > stop_after:
            break
        pos = _end_of_entropy_data(data, segment_end)
    return scans


def _next_marker(data: bytes, pos: int) -> tuple[int | None, int]:
    """(marker code, position after it) of the first marker at or after ``pos``.

    Bytes other than 0xFF between segments are garbage that libjpeg skips (with a warning), and
    so does this; several 0xFF in a row are fill bytes before the code.
    """
    pos = data.find(b"\xff", pos)
    while pos != -1 and pos + 1 < len(data):
        code = data[pos + 1]
        if code not in (0xFF, 0x00):
            return code, pos + 2
        pos = data.find(b"\xff", pos + 1)
    return None, len(data)


def _end_of_entropy_data(data: bytes, pos: int) -> int:
    """Where the marker that ends the scan starting at ``pos`` begins (its first 0xFF)."""
    match = _MARKER_AFTER_SCAN.search(data, pos)
    return len(data) if match is None else match.start()
