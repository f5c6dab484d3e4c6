"""Colour maps of the datasets' label ids, as ``(256, 3)`` uint8 arrays indexed by class id.

* VOC (and the embedded set, which uses the VOC layout): the standard Pascal VOC bit-interleaved
  map (0 black, 255 cream).
* ADE20k: the 150 colours of the scene-parsing benchmark's class list (class ``k`` in 1..150
  gets the benchmark's colour ``k - 1``); 0 ("other", background here) is black, ids above 150
  are unused and grey.
"""

from __future__ import annotations

import numpy as np

_ADE150 = """
787878 b47878 06e6e6 503232 04c803 787850 8c8c8c cc05ff e6e6e6 04fa07 e005ff ebff07 96053d
787846 08ff33 ff0652 8fff8c ccff04 ff3307 cc4603 0066c8 3de6fa ff0633 0b66ff ff0747 ff09e0
0907e6 dcdcdc ff095c 7009ff 08ffd6 07ffe0 ffb806 0aff47 ff290a 07ffff e0ff08 6608ff ff3d06
ffc207 ff7a08 00ff14 ff0829 ff0599 0633ff eb0cff a09614 00a3ff 8c8c8c fa0a0f 14ff00 1fff00
ff1f00 ffe000 99ff00 0000ff ff4700 00ebff 00adff 1f00ff 0bc8c8 ff5200 00fff5 003dff 00ff70
00ff85 ff0000 ffa300 ff6600 c2ff00 008fff 33ff00 0052ff 00ff29 00ffad 0a00ff adff00 00ff99
ff5c00 ff00ff ff00f5 ff0066 ffad00 ff0014 ffb8b8 001fff 00ff3d 0047ff ff00cc 00ffc2 00ff52
000aff 0070ff 3300ff 00c2ff 007aff 00ffa3 ff9900 00ff0a ff7000 8fff00 5200ff a3ff00 ffeb00
08b8aa 8500ff 00ff5c b800ff ff001f 00b8ff 00d6ff ff0070 5cff00 00e0ff 70e0ff 46b8a0 a300ff
9900ff 47ff00 ff00a3 ffcc00 ff008f 00ffeb 85ff00 ff00eb f500ff ff007a fff500 0abed4 d6ff00
00ccff 1400ff ffff00 0099ff 0029ff 00ffcc 2900ff 29ff00 ad00ff 00f5ff 4700ff 7a00ff 00ffb8
005cff b8ff00 0085ff ffd600 19c2c2 66ff00 5c00ff
"""


def voc_palette() -> np.ndarray:
    """The Pascal VOC colour map: bit ``j`` of the id's three low-order bit planes sets bit
    ``7 - j`` of red, green and blue."""
    ids = np.arange(256)
    rgb = np.zeros((256, 3), dtype=np.uint8)
    for j in range(8):
        for channel in range(3):
            rgb[:, channel] |= (((ids >> (3 * j + channel)) & 1) << (7 - j)).astype(np.uint8)
    return rgb


def ade_palette() -> np.ndarray:
    """ADE20k: 0 black, 1..150 the benchmark's colours, the rest grey."""
    colours = [bytes.fromhex(h) for h in _ADE150.split()]
    rgb = np.full((256, 3), 128, dtype=np.uint8)
    rgb[0] = 0
    rgb[1 : 1 + len(colours)] = np.frombuffer(b"".join(colours), dtype=np.uint8).reshape(-1, 3)
    return rgb


def palette(dataset: str) -> np.ndarray:
    """The colour map of ``dataset`` (``(256, 3)`` uint8)."""
    if dataset == "ade":
        return ade_palette()
    return voc_palette()
