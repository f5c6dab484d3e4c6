"""Published final-step mIoU (%) of the baselines on the paper's settings, with their sources.

Each entry is (dataset, setting, method) -> (old, new, all, mean_all, source); ``None`` where the
source gives no value. *old* = step-0 foreground classes, *new* = the classes added later, *all*
= every class with background, *mean_all* = mean of *all* over the steps. VOC values are for the
overlapped protocol (what this pipeline runs).

Sources:

* MiB (Cermelli et al., CVPR 2020), Table 1 (VOC, overlapped columns) and Table 2 (ADE20k). The
  ADE20k numbers there follow MiB's own protocol, which splits the training images between the
  steps instead of the overlap filter used here, so they are a guide, not a target.
* PLOP (Douillard et al., CVPR 2021), Table 1 (VOC 19-1, 15-5, 15-1, with the mean over steps).
  PLOP's ADE20k and VOC 10-1 values are as quoted in later repositories' READMEs; they agree
  with the weighted-mean identity of old/new/all but were not read from the paper itself.
* LGKD's own per-setting tables (and MiB+LGKD) are only in the paper's PDF: no value is given
  here rather than a guessed one.
"""

from __future__ import annotations

from typing import NamedTuple


class Published(NamedTuple):
    old: float | None
    new: float | None
    all: float | None
    mean_all: float | None
    source: str


_MIB_VOC = "MiB paper, Table 1 (VOC, overlapped)"
_PLOP_VOC = "PLOP paper, Table 1 (VOC, overlapped)"
_MIB_ADE = "MiB paper, Table 2 (ADE20k, MiB's split of the training images)"
_PLOP_QUOTED = "PLOP paper, as quoted by later repositories (unverified)"


def _mib_voc(values: dict[str, tuple[float, float, float]]) -> dict[str, Published]:
    return {m: Published(o, n, a, None, _MIB_VOC) for m, (o, n, a) in values.items()}


PUBLISHED: dict[tuple[str, str], dict[str, Published]] = {
    ("voc", "19-1"): {
        **_mib_voc(
            {
                "FT": (6.8, 12.9, 7.1),
                "PI": (7.5, 14.0, 7.8),
                "EWC": (26.9, 14.0, 26.3),
                "RW": (23.3, 14.2, 22.9),
                "LwF": (51.2, 8.5, 49.1),
                "LwF-MC": (64.4, 13.3, 61.9),
                "ILT": (67.1, 12.3, 64.4),
                "MiB": (70.2, 22.1, 67.8),
                "Joint": (77.4, 78.0, 77.4),
            }
        ),
        "PLOP": Published(75.35, 37.35, 73.54, 75.47, _PLOP_VOC),
    },
    ("voc", "15-5"): {
        **_mib_voc(
            {
                "FT": (2.1, 33.1, 9.8),
                "PI": (1.6, 33.3, 9.5),
                "EWC": (24.3, 35.5, 27.1),
                "RW": (16.6, 34.9, 21.2),
                "LwF": (58.9, 36.6, 53.3),
                "LwF-MC": (58.1, 35.0, 52.3),
                "ILT": (66.3, 40.6, 59.9),
                "MiB": (75.5, 49.4, 69.0),
                "Joint": (79.1, 72.6, 77.4),
            }
        ),
        "PLOP": Published(75.73, 51.71, 70.09, 75.19, _PLOP_VOC),
    },
    ("voc", "15-1"): {
        **_mib_voc(
            {
                "FT": (0.2, 1.8, 0.6),
                "PI": (0.0, 1.8, 0.5),
                "EWC": (0.3, 4.3, 1.3),
                "RW": (0.0, 5.2, 1.3),
                "LwF": (1.0, 3.9, 1.8),
                "LwF-MC": (6.4, 8.4, 6.9),
                "ILT": (4.9, 7.8, 5.7),
                "MiB": (35.1, 13.5, 29.7),
                "Joint": (79.1, 72.6, 77.4),
            }
        ),
        "PLOP": Published(65.12, 21.11, 54.64, 67.21, _PLOP_VOC),
    },
    ("voc", "10-1"): {"PLOP": Published(44.03, 15.51, 30.45, None, _PLOP_QUOTED)},
    ("ade", "100-50"): {
        "FT": Published(0.0, 24.9, 8.3, None, _MIB_ADE),
        "LwF": Published(21.1, 25.6, 22.6, None, _MIB_ADE),
        "LwF-MC": Published(34.2, 10.5, 26.3, None, _MIB_ADE),
        "ILT": Published(22.9, 18.9, 21.6, None, _MIB_ADE),
        "MiB": Published(37.9, 27.9, 34.6, None, _MIB_ADE),
        "Joint": Published(44.3, 28.2, 38.9, None, _MIB_ADE),
        "PLOP": Published(41.87, 14.89, 32.94, None, _PLOP_QUOTED),
    },
    # MiB's 100-10 table gives one column per step, not one for all new classes.
    ("ade", "100-10"): {
        "FT": Published(0.0, None, 1.1, None, _MIB_ADE),
        "LwF": Published(0.1, None, 1.7, None, _MIB_ADE),
        "LwF-MC": Published(18.7, None, 14.3, None, _MIB_ADE),
        "ILT": Published(0.3, None, 1.4, None, _MIB_ADE),
        "MiB": Published(31.8, None, 25.9, None, _MIB_ADE),
        "Joint": Published(44.3, None, 38.9, None, _MIB_ADE),
        "PLOP": Published(40.48, 13.61, 31.59, None, _PLOP_QUOTED),
    },
    # 50-50: new = mean of MiB's two 50-class steps (equal class counts, so exactly their mIoU).
    ("ade", "50-50"): {
        "FT": Published(0.0, 11.0, 7.3, None, _MIB_ADE),
        "LwF": Published(5.7, 17.85, 13.9, None, _MIB_ADE),
        "LwF-MC": Published(27.8, 8.7, 15.1, None, _MIB_ADE),
        "ILT": Published(8.4, 12.0, 10.8, None, _MIB_ADE),
        "MiB": Published(35.5, 22.9, 27.0, None, _MIB_ADE),
        "Joint": Published(51.1, 33.25, 38.9, None, _MIB_ADE),
        "PLOP": Published(48.83, 20.99, 30.40, None, _PLOP_QUOTED),
    },
}

# Task names that are the same setting as a published one.
ALIASES = {("voc", "15-5s"): "15-1", ("ade", "50"): "50-50"}


def published(dataset: str, setting: str, method: str) -> Published | None:
    """The published numbers of ``method`` on ``dataset``/``setting``, or None."""
    setting = ALIASES.get((dataset, setting), setting)
    return PUBLISHED.get((dataset, setting), {}).get(method)
