"""The maritime sample becomes the JSON-lines input stream the RTCEF replayer publishes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate, validate_many

from tests.rtcef import maritime
from tests.support import SHARED

SAMPLE = SHARED / "vendor" / "wayeb-sample" / "227592820.csv"
SCHEMAS = SHARED / "vendor" / "rtcef" / "schemas" / "schemas_maritime"
#: The port configurations' replayer window (``configs/port/conf_N.ini``).
PORT_START_TIME, PORT_END_TIME = 1443650401, 1459461585

ZEROS = {f"{way}_{area}": 0 for way in ("entry", "exit") for area in maritime.AREAS}


def schema(side: str) -> Any:
    return fastavro.parse_schema(json.loads((SCHEMAS / f"input_stream-{side}.avsc").read_text()))


def write_csv(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "fixes.csv"
    path.write_text("".join(f"{row}\n" for row in rows))
    return path


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_avro_valid(written: list[dict[str, Any]]) -> None:
    """What the replayer does with each line: key and value through the maritime schemas."""
    value_schema, key_schema = schema("value"), schema("key")
    assert validate_many(written, value_schema, raise_errors=True)
    for record in written:
        assert list(record) == [field["name"] for field in value_schema["fields"]]
        assert validate({"timestamp": record["timestamp"], "mmsi": record["mmsi"]}, key_schema)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, value_schema, record)
        buffer.seek(0)
        assert fastavro.schemaless_reader(buffer, value_schema) == record


def test_the_first_two_sample_rows_become_these_whole_records(tmp_path: Path) -> None:
    source = write_csv(
        tmp_path,
        "1443677401,227592820,-4.489492,48.357178,16.791537956792514,176.98862929133006,178.6,00100000",
        "1443677461,227592820,-4.4891,48.351073,15.704852370149203,174.30471322253993,174.3,00010000",
    )
    output = tmp_path / "input_stream.json"

    stats = maritime.convert(source, output)

    common = {"mmsi": "227592820", "gap_start": 0, "next_timestamp": -1, **ZEROS}
    zero_flags = dict.fromkeys(maritime.BITS, 0)
    assert records(output) == [
        {
            **common, **zero_flags, "change_in_heading": 1,
            "timestamp": 1443677401, "speed": 16.791537956792514, "trh": 176.98862929133006,
            "cog": 178.6, "lat": 48.357178, "lon": -4.489492, "critical_bitstring": "00100000",
        },
        {
            **common, **zero_flags, "gap_end": 1,
            "timestamp": 1443677461, "speed": 15.704852370149203, "trh": 174.30471322253993,
            "cog": 174.3, "lat": 48.351073, "lon": -4.4891, "critical_bitstring": "00010000",
        },
    ]  # fmt: skip
    assert stats == {
        "records": 2,
        "first_timestamp": 1443677401,
        "last_timestamp": 1443677461,
        "records_per_month": {"2015-10": 2},
        "complex_events": 0,
    }
    assert_avro_valid(records(output))


def test_each_bit_of_the_critical_bitstring_sets_its_own_flag(tmp_path: Path) -> None:
    rows = [f"{1000 + i},1,-4.0,48.0,5.0,1.0,2.0,{'0' * i}1{'0' * (7 - i)}" for i in range(8)]
    output = tmp_path / "out.json"

    maritime.convert(write_csv(tmp_path, *rows), output)

    written = records(output)
    assert [[name for name in maritime.BITS if r[name]] for r in written] == [
        ["change_in_speed_end"], ["change_in_speed_start"], ["change_in_heading"], ["gap_end"],
        ["slow_motion_end"], ["slow_motion_start"], ["stop_end"], ["stop_start"],
    ]  # fmt: skip
    assert_avro_valid(written)


def test_a_port_entry_sets_next_timestamp_on_the_fixes_before_it(tmp_path: Path) -> None:
    # About 10.8 and 9.7 km north of the port's centre (outside), then 0.8 and 0.3 km (inside).
    source = write_csv(
        tmp_path,
        "1443677401,227592820,-4.4753,48.48,12.5,10.0,11.5,00000000",
        "1443677461,227592820,-4.4753,48.47,12.5,180.0,181.2,00100000",
        "1443677521,227592820,-4.4753,48.39,12.0,180.0,179.9,01000100",
        "1443677581,227592820,-4.4753,48.38,11.0,180.0,179.0,10000011",
    )
    output = tmp_path / "out.json"

    stats = maritime.convert(source, output)

    written = records(output)
    assert [r["next_timestamp"] for r in written] == [1443677521, 1443677521, -1, -1]
    assert written[2] == {
        "timestamp": 1443677521, "mmsi": "227592820", "speed": 12.0, "trh": 180.0, "cog": 179.9,
        "lat": 48.39, "lon": -4.4753,
        "change_in_heading": 0, "change_in_speed_end": 0, "change_in_speed_start": 1,
        "slow_motion_start": 1, "slow_motion_end": 0, "stop_end": 0, "stop_start": 0,
        "gap_start": 0, "gap_end": 0, "next_timestamp": -1, **ZEROS,
        "critical_bitstring": "01000100",
    }  # fmt: skip
    assert stats["complex_events"] == 1
    assert_avro_valid(written)


def test_one_outside_fix_before_entering_is_not_a_port_entry(tmp_path: Path) -> None:
    source = write_csv(
        tmp_path,
        "100,1,-4.4753,48.39,12.0,0.0,0.0,00000000",
        "160,1,-4.4753,48.47,12.0,0.0,0.0,00000000",
        "220,1,-4.4753,48.39,12.0,0.0,0.0,00000000",
    )
    output = tmp_path / "out.json"

    assert maritime.convert(source, output)["complex_events"] == 0
    assert [r["next_timestamp"] for r in records(output)] == [-1, -1, -1]


def test_port_entries_are_found_per_vessel_as_the_pattern_partitions_by_mmsi(
    tmp_path: Path,
) -> None:
    outside, inside = "-4.4753,48.48", "-4.4753,48.39"
    source = write_csv(
        tmp_path,
        f"100,1,{outside},9.0,0.0,0.0,00000000",
        f"100,2,{outside},9.0,0.0,0.0,00000000",
        f"160,1,{outside},9.0,0.0,0.0,00000000",
        f"160,2,{inside},9.0,0.0,0.0,00000000",
        f"220,1,{inside},9.0,0.0,0.0,00000000",
        f"220,2,{outside},9.0,0.0,0.0,00000000",
    )
    output = tmp_path / "out.json"

    assert maritime.convert(source, output)["complex_events"] == 1
    assert [(r["mmsi"], r["next_timestamp"]) for r in records(output)] == [
        ("1", 220), ("2", -1), ("1", 220), ("2", -1), ("1", -1), ("2", -1),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        pytest.param(
            ["timestamp,mmsi,lon,lat,speed,heading,cog,annotation"], "invalid literal", id="header"
        ),
        pytest.param(["100,1,-4.0,48.0,5.0,1.0,2.0"], "expected 8 columns", id="short-row"),
        pytest.param(["-1,1,-1.0,-1.0,-1,-1,-1,-1"], "RESET rows", id="reset-row"),
        pytest.param(["100,1,-4.0,48.0,5.0,1.0,2.0,0010"], "critical bitstring", id="bitstring"),
        pytest.param(["100,1,-4.0,48.0,nan,1.0,2.0,00000000"], "not finite", id="nan"),
        pytest.param(["100,x1,-4.0,48.0,5.0,1.0,2.0,00000000"], "mmsi", id="mmsi"),
        pytest.param(
            ["160,1,-4.0,48.0,5.0,1.0,2.0,00000000", "100,1,-4.0,48.0,5.0,1.0,2.0,00000000"],
            "is before 160",
            id="time-goes-back",
        ),
        pytest.param([], "no rows", id="empty"),
    ],
)
def test_a_row_the_services_could_not_take_is_rejected_and_nothing_is_written(
    tmp_path: Path, rows: list[str], reason: str
) -> None:
    output = tmp_path / "out.json"

    with pytest.raises(maritime.SampleError, match=reason):
        maritime.convert(write_csv(tmp_path, *rows), output)
    assert not output.exists()


def test_the_command_line_writes_the_file_and_prints_the_statistics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(tmp_path, "1446328801,1,-4.0,48.0,5.0,1.0,2.0,00000000")
    output = tmp_path / "out.json"

    assert maritime.main([str(source), str(output)]) == 0

    assert json.loads(capsys.readouterr().out) == {
        "records": 1,
        "first_timestamp": 1446328801,
        "last_timestamp": 1446328801,
        "records_per_month": {"2015-10": 1},
        "complex_events": 0,
    }
    assert len(records(output)) == 1
    assert maritime.main([str(tmp_path / "missing.csv"), str(output)]) == 1


def test_a_limit_converts_only_the_first_rows_and_the_matches_they_hold(tmp_path: Path) -> None:
    output = tmp_path / "out.json"

    stats = maritime.convert(SAMPLE, output, limit=200)

    written = records(output)
    assert stats == {
        "records": 200,
        "first_timestamp": 1443677401,
        "last_timestamp": 1443700261,
        "records_per_month": {"2015-10": 200},
        "complex_events": 2,
    }
    assert written[0]["next_timestamp"] == 1443680461  # 2015-10-01 06:21:01 UTC
    assert written[-1]["next_timestamp"] == -1


def test_the_whole_sample_converts_in_time_order_inside_the_port_window(tmp_path: Path) -> None:
    output = tmp_path / "input_stream.json"

    stats = maritime.convert(SAMPLE, output)

    assert stats == {
        "records": 30_193,
        "first_timestamp": 1443677401,  # 2015-10-01 05:30:01 UTC
        "last_timestamp": 1458890881,  # 2016-03-25 07:28:01 UTC
        "records_per_month": {
            "2015-10": 4974, "2015-11": 4580, "2015-12": 4784,
            "2016-01": 5654, "2016-02": 6275, "2016-03": 3926,
        },
        "complex_events": 506,
    }  # fmt: skip
    text = output.read_text()
    assert text.endswith("}\n")
    assert "\n\n" not in text
    written = [json.loads(line) for line in text.splitlines()]
    timestamps = [r["timestamp"] for r in written]
    assert len(written) == 30_193
    assert timestamps == sorted(set(timestamps))
    assert timestamps[0] >= PORT_START_TIME
    assert timestamps[-1] <= PORT_END_TIME
    assert {r["mmsi"] for r in written} == {"227592820"}
    matches = {r["next_timestamp"] for r in written} - {-1}
    assert len(matches) == 506
    assert matches <= set(timestamps)
    assert all(r["next_timestamp"] > r["timestamp"] or r["next_timestamp"] == -1 for r in written)
    assert validate_many(written, schema("value"), raise_errors=True)


def test_converting_twice_writes_the_same_bytes(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"

    maritime.convert(SAMPLE, first)
    maritime.convert(SAMPLE, second)

    assert first.read_bytes() == second.read_bytes()
