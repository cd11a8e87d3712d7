"""Turn the real maritime sample into the input stream the original RTCEF services consume.

Test infrastructure, standard library only. The source is Wayeb's
``data/maritime/227592820.csv`` (one vessel near Brest, no header, one AIS fix per
minute, the output of Wayeb's ``scripts/data/maritime/SyncedInterpolation``):
``timestamp (s), mmsi, lon, lat, speed, heading, course over ground, critical bitstring``.
The target is the file named by ``[replayer] DatasetPath``: JSON lines, one object
per line, no blank lines. The replayer (``services/replayer.py``) ``json.loads``
each line and produces it unchanged (or with ``timestamp`` shifted, in cyclic mode)
to ``input_stream`` as schemaless Avro (``schemas_maritime/input_stream-value.avsc``,
key ``{timestamp, mmsi}``). Every field below is written with the schema's type
(``long`` as a JSON integer, ``double`` as a JSON number with a fraction,
``string`` as a JSON string) and in the schema's order.

Values: a sample column (1-based), DERIVED from the sample, or a GUESS with its reason.
Readers: *Engine* = ``MaritimeWAStreamSourceOOF`` (domain ``maritimeOOF``, the Avro
record); *Factory* = ``MaritimeWAStreamSourceJSON`` (domain ``maritimejson``, the
Collector's JSON-lines buckets); both keep the same attributes. *Collector* reads
only ``TimeField = timestamp`` and writes each record back with ``json.dumps``.

======================  ======================================  ==================================
field                   value                                   read by
======================  ======================================  ==================================
timestamp               column 1 (seconds, int)                 Replayer (periods, cyclic shift,
                                                                Kafka key); Engine (stream time,
                                                                ``start_time`` cut, weekly
                                                                reports, ``pt``); Collector
                                                                (weekly buckets); Factory
                                                                (dataset first/last time)
mmsi                    column 2, as a string                   Kafka key; Wayeb ``partitionBy``
lon, lat                columns 3, 4                            the port pattern: Within-/
                                                                OutsideCircle and
                                                                DistanceBetween (haversine, km)
speed                   column 5 (knots)                        Wayeb ``speed`` (not used by
                                                                the port pattern)
trh                     column 6 (Wayeb calls it ``heading``)   Wayeb ``heading`` (not used)
cog                     column 7                                Wayeb ``cog`` (not used)
critical_bitstring      column 8, verbatim (8 chars of 0/1)     Wayeb: expanded into the eight
                                                                flags below (``"-1"`` = RESET)
change_in_speed_end     bit 0 of the bitstring                  nobody: Wayeb expands the
change_in_speed_start   bit 1                                   bitstring itself; written so
change_in_heading       bit 2                                   the record says the same thing
gap_end                 bit 3                                   as its bitstring
slow_motion_end         bit 4
slow_motion_start       bit 5
stop_end                bit 6
stop_start              bit 7
gap_start               DERIVED 0: Wayeb's own rule is          nobody: Wayeb recomputes it
                        ``timestamp == -1`` (a RESET row), and  from ``timestamp``
                        none are written
next_timestamp          DERIVED: time of this vessel's next     Wayeb ``nextCETimestamp``: only
                        port-entry match strictly after this    used when ``distance_min >= 1``
                        fix, -1 after the last one (the rule    (the port configs say -1, so it
                        of ``EnrichmentWithCEs``; the pattern   does not change any result)
                        is evaluated here, see below)
entry_nearcoast,        GUESS 0 (= no transition): needs the    Wayeb ``entryNearcoast`` ...
entry_nearcoast5k,      datAcron Brest area polygons (coast,    ``exitAnchorage``; no vendored
entry_fishing,          coast + 5 km, fishing, Natura 2000,     pattern or declaration uses
entry_natura,           ports, anchorages), which are neither   any of them
entry_nearports,        in the sample nor vendored
entry_anchorage,
exit_* (same six)
======================  ======================================  ==================================

The port-entry pattern (``patterns/enteringArea/pattern.sre``) is, per mmsi, two or
more fixes outside a 5 km circle around (-4.47530, 48.38273) followed by one inside;
Wayeb prepends Σ*, so a match is an inside fix right after at least two outside ones.
It reads ``lon``/``lat`` only (no precomputed area field). This vessel starts inside
that circle and enters it again 506 times in the sample (Wayeb's own ``recognition``
finds the same 506 match times, on the CSV and on this converter's output).

Not written, deliberately: the RESET rows (``timestamp`` -1, lon/lat -1, bitstring
``"-1"``) that ``SyncedInterpolation`` puts before a vessel's first fix and after a
gap of more than 30 minutes (the sample has 272 such gaps but no RESET row). The
replayer's cyclic mode shifts the records before the start period by an offset
taken from the file's first record (a -1 there would corrupt the wrap-around),
the Collector opens a weekly bucket at its first record's time (a -1 there closes
it at the next record), and the engine drops every record at or before
``start_time`` anyway. So a run can span a gap: with RESETs at those gaps the
pattern would match 368 times instead of 506. Rows of vessels with fewer than 60
matches or after a vessel's last match, which ``EnrichmentWithCEs`` drops, are
kept: the stream is the whole sample, one record per row.

The conversion reads the CSV twice (the first pass validates it, finds the matches
and counts; nothing is written if a row is bad) and keeps only the match times in
memory. The output depends on the input bytes alone.

Usage: ``python tests/rtcef/maritime.py SRC.csv OUT.json [--limit N]`` (prints the statistics).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypedDict

#: The port-entry pattern's circle: centre (lon, lat) and radius in km.
PORT_LON: Final = -4.47530
PORT_LAT: Final = 48.38273
PORT_RADIUS_KM: Final = 5.0
#: Wayeb's ``utils.SpatialUtils`` earth radius (metres); the distance is then divided by 1000.
EARTH_RADIUS_M: Final = 6371.0 * 1000

#: Flag names by position in ``critical_bitstring`` (Wayeb's ``annotationExpansion``).
BITS: Final = (
    "change_in_speed_end", "change_in_speed_start", "change_in_heading", "gap_end",
    "slow_motion_end", "slow_motion_start", "stop_end", "stop_start",
)  # fmt: skip
#: The areas of the entry/exit fields, in the schema's order.
AREAS: Final = ("nearcoast", "nearcoast5k", "fishing", "natura", "nearports", "anchorage")
#: The value schema's field names, in its order (the order the records are written in).
FIELDS: Final = (
    "timestamp", "mmsi", "speed", "trh", "cog", "lat", "lon",
    "change_in_heading", "change_in_speed_end", "change_in_speed_start",
    "slow_motion_start", "slow_motion_end", "stop_end", "stop_start",
    "gap_start", "gap_end", "next_timestamp",
    *(f"entry_{area}" for area in AREAS), *(f"exit_{area}" for area in AREAS),
    "critical_bitstring",
)  # fmt: skip
#: ``next_timestamp`` when no match follows (the value ``EnrichmentWithCEs`` writes).
NO_NEXT_MATCH: Final = -1

Value = int | float | str


class SampleError(ValueError):
    """The CSV is not a stream the converter can turn into a faithful input stream."""


class Stats(TypedDict):
    """What :func:`convert` wrote."""

    records: int
    first_timestamp: int
    last_timestamp: int
    records_per_month: dict[str, int]  # "YYYY-MM" (UTC) -> records, in time order
    complex_events: int  # port-entry matches (Wayeb's pattern, per mmsi)


@dataclass(frozen=True, slots=True)
class Fix:
    """One row of the sample."""

    timestamp: int
    mmsi: str
    lon: float
    lat: float
    speed: float
    heading: float
    cog: float
    bitstring: str


def distance_km(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Haversine distance, computed as Wayeb's ``SpatialUtils.point2pointDist`` does."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    delta_phi, delta_lambda = math.radians(lat2 - lat1), math.radians(lon2 - lon1)
    a = math.sin(delta_phi / 2) * math.sin(delta_phi / 2) + (
        math.cos(phi1) * math.cos(phi2) * math.sin(delta_lambda / 2) * math.sin(delta_lambda / 2)
    )
    return EARTH_RADIUS_M * 2 * math.atan2(math.sqrt(a), math.sqrt(1 - a)) / 1000


def within_port(fix: Fix) -> bool:
    """``WithinCirclePredicate(-4.47530,48.38273,5.0)``; its negation is ``OutsideCircle``."""
    return distance_km(fix.lon, fix.lat, PORT_LON, PORT_LAT) < PORT_RADIUS_KM


def read_fixes(csv_path: Path, limit: int | None = None) -> Iterator[Fix]:
    """The rows of the sample (the first ``limit`` ones), validated.

    Raises :class:`SampleError` naming the line of the first bad row.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit {limit} is negative")
    last_timestamp: int | None = None
    with csv_path.open(newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if limit is not None and line_no > limit:
                return
            try:
                fix = _parse(row)
            except ValueError as error:
                raise SampleError(f"{csv_path}:{line_no}: {error}: {row!r}") from None
            if last_timestamp is not None and fix.timestamp < last_timestamp:
                # The replayer publishes in file order; the engine and the Collector
                # take the stream time from each record as it comes.
                raise SampleError(
                    f"{csv_path}:{line_no}: timestamp {fix.timestamp} is before {last_timestamp}"
                )
            last_timestamp = fix.timestamp
            yield fix


def _parse(row: list[str]) -> Fix:
    if len(row) != 8:
        raise ValueError(f"expected 8 columns, got {len(row)}")
    timestamp = int(row[0])
    if timestamp < 0:
        # -1 is a Wayeb RESET row: see the module docstring for why none is written.
        raise ValueError("RESET rows (timestamp -1) are not supported")
    mmsi = row[1]
    if not mmsi.isdigit():
        raise ValueError(f"mmsi {mmsi!r} is not a number")
    lon, lat, speed, heading, cog = (float(cell) for cell in row[2:7])
    if not all(math.isfinite(x) for x in (lon, lat, speed, heading, cog)):
        raise ValueError("a number is not finite")
    bitstring = row[7]
    if len(bitstring) != len(BITS) or set(bitstring) - {"0", "1"}:
        raise ValueError(f"critical bitstring {bitstring!r} is not 8 characters of 0/1")
    return Fix(timestamp, mmsi, lon, lat, speed, heading, cog, bitstring)


def to_record(fix: Fix, next_timestamp: int) -> dict[str, Value]:
    """The input-stream record of one fix, its keys in the schema's order."""
    flags = dict(zip(BITS, (int(bit) for bit in fix.bitstring), strict=True))
    record: dict[str, Value] = {
        "timestamp": fix.timestamp,
        "mmsi": fix.mmsi,
        "speed": fix.speed,
        "trh": fix.heading,
        "cog": fix.cog,
        "lat": fix.lat,
        "lon": fix.lon,
        **flags,
        "gap_start": 0,
        "next_timestamp": next_timestamp,
    }
    record.update(dict.fromkeys((f"entry_{area}" for area in AREAS), 0))
    record.update(dict.fromkeys((f"exit_{area}" for area in AREAS), 0))
    record["critical_bitstring"] = fix.bitstring
    return {name: record[name] for name in FIELDS}


def _scan(csv_path: Path, limit: int | None) -> tuple[dict[str, list[int]], Stats]:
    """First pass: validate, find each vessel's match times, count."""
    matches: dict[str, list[int]] = {}
    outside_run: dict[str, int] = {}  # consecutive outside fixes just before, per mmsi
    months: Counter[str] = Counter()
    first: int | None = None
    last = 0
    records = 0
    for fix in read_fixes(csv_path, limit):
        if within_port(fix):
            if outside_run.get(fix.mmsi, 0) >= 2:
                matches.setdefault(fix.mmsi, []).append(fix.timestamp)
            outside_run[fix.mmsi] = 0
        else:
            outside_run[fix.mmsi] = outside_run.get(fix.mmsi, 0) + 1
        months[datetime.fromtimestamp(fix.timestamp, UTC).strftime("%Y-%m")] += 1
        first = fix.timestamp if first is None else first
        last = fix.timestamp
        records += 1
    if first is None:
        raise SampleError(f"{csv_path}: no rows")
    stats = Stats(
        records=records,
        first_timestamp=first,
        last_timestamp=last,
        records_per_month=dict(sorted(months.items())),
        complex_events=sum(len(times) for times in matches.values()),
    )
    return matches, stats


def convert(csv_path: str | Path, out_path: str | Path, *, limit: int | None = None) -> Stats:
    """Write the replayer's input file for the sample at ``csv_path``; return what was written.

    ``limit`` converts only the first rows (a shorter stream, with the matches it holds).
    """
    source, target = Path(csv_path), Path(out_path)
    matches, stats = _scan(source, limit)
    position: dict[str, int] = {}  # per mmsi, index of the first match not yet passed
    with target.open("w", encoding="utf-8", newline="\n") as out:
        for fix in read_fixes(source, limit):
            times = matches.get(fix.mmsi, [])
            index = position.get(fix.mmsi, 0)
            while index < len(times) and times[index] <= fix.timestamp:
                index += 1
            position[fix.mmsi] = index
            next_timestamp = times[index] if index < len(times) else NO_NEXT_MATCH
            out.write(json.dumps(to_record(fix, next_timestamp), separators=(",", ":")))
            out.write("\n")
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: convert, print the statistics as JSON."""
    parser = argparse.ArgumentParser(
        description="Convert the maritime sample for the RTCEF replayer."
    )
    parser.add_argument("source", type=Path, help="the sample CSV (no header)")
    parser.add_argument("output", type=Path, help="the JSON-lines file the replayer reads")
    parser.add_argument("--limit", type=int, help="convert only the first LIMIT rows")
    args = parser.parse_args(argv)
    try:
        stats = convert(args.source, args.output, limit=args.limit)
    except (OSError, SampleError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
