"""The paper's numbers (PAPER.md section 5; ILSVRC-2012 validation, top-1 / top-5 error %), the scales they
were measured at, and how the report names them."""

from __future__ import annotations

PAPER_SCALES: dict[str, tuple[int, int]] = {"256": (256, 256), "384": (384, 384), "256-512": (256, 512)}
# Test scales of the paper's tables: one scale (Table 3), three scales (Tables 4-6).
PAPER_Q_SINGLE = {"256": "256", "384": "384", "256-512": "384"}
PAPER_Q_MULTI = {"256": "224,256,288", "384": "352,384,416", "256-512": "256,384,512"}

TABLE3: dict[tuple[str, str], tuple[float, float]] = {
    ("A", "256"): (29.6, 10.4),
    ("A-LRN", "256"): (29.7, 10.5),
    ("B", "256"): (28.7, 9.9),
    ("C", "256"): (28.1, 9.4),
    ("C", "384"): (28.1, 9.3),
    ("C", "256-512"): (27.3, 8.8),
    ("D", "256"): (27.0, 8.8),
    ("D", "384"): (26.8, 8.7),
    ("D", "256-512"): (25.6, 8.1),
    ("E", "256"): (27.3, 9.0),
    ("E", "384"): (26.9, 8.7),
    ("E", "256-512"): (25.5, 8.0),
}
TABLE4: dict[tuple[str, str], tuple[float, float]] = {
    ("B", "256"): (28.2, 9.6),
    ("C", "256"): (27.7, 9.2),
    ("C", "384"): (27.8, 9.2),
    ("C", "256-512"): (26.3, 8.2),
    ("D", "256"): (26.6, 8.6),
    ("D", "384"): (26.5, 8.6),
    ("D", "256-512"): (24.8, 7.5),
    ("E", "256"): (26.9, 8.7),
    ("E", "384"): (26.7, 8.6),
    ("E", "256-512"): (24.8, 7.5),
}
EVAL_PROTOCOLS = ("dense", "multicrop", "dense+multicrop")
TABLE5: dict[tuple[str, str], tuple[float, float]] = {
    ("D", "dense"): (24.8, 7.5),
    ("D", "multicrop"): (24.6, 7.5),
    ("D", "dense+multicrop"): (24.4, 7.2),
    ("E", "dense"): (24.8, 7.5),
    ("E", "multicrop"): (24.6, 7.4),
    ("E", "dense+multicrop"): (24.4, 7.1),
}
TABLE6: dict[str, tuple[float, float]] = {
    "dense": (24.0, 7.1),
    "multicrop": (23.9, 7.2),
    "dense+multicrop": (23.7, 6.8),
}
TABLE6_SUBMISSION = (24.7, 7.5)  # the 7-net ILSVRC submission, not reproduced (it mixes nets of other recipes)

# Section 4.1: B-5x5's top-1 error is 7% above B's (one centre crop); read as relative, it stands at 1.07 x B's
PAPER_B5X5_RELATIVE = 1.07


def paper_scale_text(label: str) -> str:
    """The paper's name of a training scale: "S=256" or "S=[256,512]"."""
    lo, hi = PAPER_SCALES[label]
    return f"S={lo}" if lo == hi else f"S=[{lo},{hi}]"


def paper_value(table: str, cell: str) -> float | None:
    """The paper's top-1 error of a cell, or None (B-5x5's: 7% above B's, section 4.1)."""
    if (table, cell) == ("3", "B-5x5@256"):
        return round(PAPER_B5X5_RELATIVE * TABLE3[("B", "256")][0], 2)
    if table in ("3", "4"):
        arch, label = cell.split("@")
        v = (TABLE3 if table == "3" else TABLE4).get((arch, label))
    elif table == "5":
        arch, protocol = cell.split("@")
        v = TABLE5.get((arch, protocol))
    else:
        v = TABLE6.get(cell)
    return v[0] if v else None


__all__ = [
    "EVAL_PROTOCOLS",
    "PAPER_B5X5_RELATIVE",
    "PAPER_Q_MULTI",
    "PAPER_Q_SINGLE",
    "PAPER_SCALES",
    "TABLE3",
    "TABLE4",
    "TABLE5",
    "TABLE6",
    "TABLE6_SUBMISSION",
    "paper_scale_text",
    "paper_value",
]
