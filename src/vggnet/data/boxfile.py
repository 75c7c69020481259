"""The box CSV of a data set (localisation, Appendix A): one line ``image,x0,y0,x1,y1,class`` per object, under a
header. Written here, below :mod:`vggnet.boxes` (which reads it and transforms boxes with the images), so that the
embedded data sets can record their boxes without importing the localisation side.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

from ..files import atomic_write

CSV_HEADER = ("image", "x0", "y0", "x1", "y1", "class")
BOXES_FILE = "boxes.csv"  # the box CSV's name at a data set's root


def write_box_csv(path: str | os.PathLike, rows: Sequence[tuple[str, float, float, float, float, str]]) -> None:
    """Write (image, x0, y0, x1, y1, class) rows with a header, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEADER)
            w.writerows([r[0], *(f"{v:g}" for v in r[1:5]), r[5]] for r in rows)

    atomic_write(path, write)


__all__ = ["CSV_HEADER", "write_box_csv"]
