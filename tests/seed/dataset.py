"""The seed's input: the maritime sample as the JSON lines its Flink jobs and Wayeb read.

Test infrastructure, standard library only. The port's ``make run`` reads
``data/maritime-eval.jsonl`` (not in its repository; its ``data/maritime.csv`` is
our ``vendor/wayeb-sample/227592820.csv`` with CRLF line ends) and splits it with
``python/split_dataset.py --train-pct 0.2``: the earliest 20 % of the records
(``train.jsonl``) train the starting model with Wayeb's ``learnSPST`` (domain
``maritimejson``), the other 80 % (``infer.jsonl``) are the stream
``python/data_feeder.py`` produces, one line per message, to ``maritime_input``.

Both readers take the same JSON object per line: the jobs' ``MaritimeParser`` and
Wayeb's ``MaritimeWAStreamSourceJSON`` read ``timestamp``, ``mmsi``, ``lon``,
``lat``, ``speed``, ``cog``, ``trh`` (as ``heading``), ``next_timestamp``, the
twelve ``entry_*``/``exit_*`` fields and ``critical_bitstring`` (expanded into
eight flags). That is the record of ``tests/rtcef/maritime.py`` (the original
services' input), so the conversion is its ``convert``: this module only splits
its output. Differences from ``split_dataset.py``, none of which changes
anything for this one-vessel sample: the inference part stays in time order
(the port sorts it by ``(mmsi, timestamp)``, which for several vessels would
send the stream back in time at each new vessel and make the jobs' event-time
windows drop the late records), and a record is written as the converter wrote
it (the port re-serialises it with ``json.dumps``; the readers do not care).

Usage: ``python -m tests.seed.dataset OUT_DIR [--source CSV] [--train-pct 0.2] [--limit N]``
(writes ``maritime.jsonl``, ``train.jsonl`` and ``infer.jsonl``; prints the statistics).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.rtcef import maritime
from tests.seed import build

#: The sample the port's ``data/maritime.csv`` is a copy of.
SAMPLE = build.port_source_dir().parent / "wayeb-sample" / "227592820.csv"
#: ``--train-pct`` of the port's ``prepare-data`` target.
TRAIN_FRACTION = 0.2


@dataclass(frozen=True)
class Prepared:
    """The files written, their sizes and the stream time they cover (seconds)."""

    full: Path
    train: Path
    infer: Path
    train_records: int
    infer_records: int
    infer_first_timestamp: int
    infer_last_timestamp: int
    complex_events: int


def prepare(
    out_dir: Path,
    source: Path = SAMPLE,
    *,
    train_fraction: float = TRAIN_FRACTION,
    limit: int | None = None,
) -> Prepared:
    """Convert ``source`` into ``out_dir/maritime.jsonl`` and split it as the port does.

    The first ``int(records * train_fraction)`` records go to ``train.jsonl``,
    the rest to ``infer.jsonl``; ``limit`` converts only the first rows.
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction {train_fraction} is not between 0 and 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    full = out_dir / "maritime.jsonl"
    stats = maritime.convert(source, full, limit=limit)
    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    split = int(len(lines) * train_fraction)
    if split == 0 or split == len(lines):
        raise maritime.SampleError(f"{source}: {len(lines)} records cannot be split")
    train, infer = out_dir / "train.jsonl", out_dir / "infer.jsonl"
    train.write_text("".join(lines[:split]), encoding="utf-8")
    infer.write_text("".join(lines[split:]), encoding="utf-8")
    return Prepared(
        full=full,
        train=train,
        infer=infer,
        train_records=split,
        infer_records=len(lines) - split,
        infer_first_timestamp=int(json.loads(lines[split])["timestamp"]),
        infer_last_timestamp=int(json.loads(lines[-1])["timestamp"]),
        complex_events=stats["complex_events"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the three files, print what was written as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder receiving the .jsonl files")
    parser.add_argument("--source", type=Path, default=SAMPLE, help="the sample CSV")
    parser.add_argument("--train-pct", type=float, default=TRAIN_FRACTION)
    parser.add_argument("--limit", type=int, help="convert only the first LIMIT rows")
    args = parser.parse_args(argv)
    try:
        prepared = prepare(
            args.out_dir, args.source, train_fraction=args.train_pct, limit=args.limit
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(prepared), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
