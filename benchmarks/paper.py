"""The published Table 1 of PersonaLive (CVPR 2026, arXiv 2512.11253), shipped in ``paper_table.csv``.

Self-reenactment on TalkingHead-1KH (LPIPS, tLP (self)); cross-reenactment on LV100 (ID-SIM, FVD,
tLP (cross)); FPS and latency on an unstated GPU. The paper's latency equals one 4-frame step's compute
(4 / 15.82 FPS = 0.253 s), so it sits in our ``latency (s)`` column (median step time), not in
``frame latency (s)``. These rows are printed beside measured ones with ``source = paper``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PAPER_CSV = Path(__file__).with_name("paper_table.csv")
PAPER_SOURCE = "paper (PersonaLive Tab. 1)"


def paper_rows() -> pd.DataFrame:
    df = pd.read_csv(PAPER_CSV, encoding="utf-8")
    df.insert(1, "source", PAPER_SOURCE)
    df["note"] = df["note"].fillna("")
    return df
