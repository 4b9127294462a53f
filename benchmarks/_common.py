"""What every benchmark script shares: the data folder option and the load-average reading printed with results."""

from __future__ import annotations

import argparse
import os


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("LRSEARCH_DATA_DIR"),
        help="folder holding MNIST/raw (default: env LRSEARCH_DATA_DIR)",
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: a busy machine makes timings meaningless."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"
