"""Decoding CRI and Docker json-file lines, on files written the way the runtimes write them.

The files come from :mod:`tests.k8slogs.runtimes` (ports of containerd's and moby's
writers); the first tests pin those ports to the expectations of containerd's and
moby's own unit tests, so the decoder is checked against what nodes really hold.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agents.formats import Decoder, Runs, detect, parse_docker, split_framed
from agents.lines import Records, Source, split_chunk
from tests.k8slogs.runtimes import MAX_LEN, Clock, CriWriter, DockerWriter, go_rfc3339nano

T0 = 1_795_000_000 * 1_000_000_000  # 2026-11-18, a whole second


def physical(path: Path, base: int = 0, max_line: int = 10**6) -> Records:
    data = path.read_bytes()[base:]
    return split_chunk(data, base, max_line)


def decode_file(path: Path, fmt: str = "cri", max_line: int = 256 * 1024) -> tuple[Records, int]:
    decoder = Decoder(fmt, max_line)  # type: ignore[arg-type]
    records = physical(path, max_line=decoder.physical_max)
    out = decoder.feed(records, path.stat().st_size)
    return out.records, out.end


def messages(records: Records) -> list[bytes]:
    return [split_framed(line)[2] for line in records.lines]


# --- the runtime writers match their upstream tests ---------------------------------


def test_go_time_format_trims_zeros_like_rfc3339nano() -> None:
    """time.RFC3339Nano drops trailing zeros (and the dot) and writes +hh:mm off UTC."""
    assert go_rfc3339nano(T0) == b"2026-11-18T11:06:40Z"
    assert go_rfc3339nano(T0 + 120_000_000) == b"2026-11-18T11:06:40.12Z"
    assert go_rfc3339nano(T0 + 1) == b"2026-11-18T11:06:40.000000001Z"
    cet = dt.timezone(dt.timedelta(hours=1))
    assert go_rfc3339nano(T0 + 5, cet) == b"2026-11-18T12:06:40.000000005+01:00"


def test_cri_writer_matches_containerd_redirect_logs_cases(tmp_path: Path) -> None:
    """containerd's TestRedirectLogs: full lines are F, output ending without a newline
    is a lone P, a line over maxLen is cut into P parts of exactly maxLen then F."""
    writer = CriWriter(tmp_path / "0.log", Clock(T0))
    assert writer.physical_lines("stderr", b"test stderr log 1\ntest stderr log 2") == [
        (b"F", b"test stderr log 1"), (b"P", b"test stderr log 2"),
    ]  # fmt: skip
    long = b"a" * (MAX_LEN * 2 + 10)
    assert writer.physical_lines("stdout", long + b"\n") == [
        (b"P", b"a" * MAX_LEN), (b"P", b"a" * MAX_LEN), (b"F", b"a" * 10),
    ]  # fmt: skip
    exact = b"b" * MAX_LEN
    assert writer.physical_lines("stdout", exact + b"\n") == [(b"F", exact)]
    assert writer.physical_lines("stdout", b"crlf\r\n") == [(b"F", b"crlf")]
    writer.close()


def test_docker_writer_matches_moby_json_marshalling(tmp_path: Path) -> None:
    """moby's TestJSONLogsMarshalJSONBuf: & < > escaped, invalid UTF-8 as \\ufffd; the
    copier cuts at 16 KiB, only the last part ends with \\n, parts share one time."""
    writer = DockerWriter(tmp_path / "c-json.log", Clock(T0))
    writer.write("stdout", b"A log line with & < >\n\xaf\n")
    stamps = writer.write("stderr", b"x" * (MAX_LEN + 5) + b"\n")
    writer.close()
    lines = (tmp_path / "c-json.log").read_bytes().splitlines()
    assert lines[0] == (
        b'{"log":"A log line with \\u0026 \\u003c \\u003e\\n","stream":"stdout",'
        b'"time":"2026-11-18T11:06:40.000001Z"}'
    )
    assert lines[1].startswith(b'{"log":"\\ufffd\\n","stream":"stdout"')
    assert b'\\n"' not in lines[2]
    assert lines[3].startswith(b'{"log":"xxxxx\\n"')
    assert stamps[0] == stamps[1]


# --- CRI ----------------------------------------------------------------------------


def test_full_lines_are_the_records_themselves(tmp_path: Path) -> None:
    """The hot path: F lines pass through untouched (framing kept, offsets unchanged)."""
    writer = CriWriter(tmp_path / "0.log", Clock(T0))
    writer.write("stdout", b"hello\nworld\n")
    writer.write("stderr", b"oops\n\n")
    records, end = decode_file(tmp_path / "0.log")
    assert messages(records) == [b"hello", b"world", b"oops", b""]
    assert [split_framed(r)[1] for r in records.lines] == [b"stdout"] * 2 + [b"stderr"] * 2
    assert split_framed(records.lines[0])[0] == b"2026-11-18T11:06:40.000001Z"
    assert end == (tmp_path / "0.log").stat().st_size
    assert records.offs[0] == 0


def test_partial_lines_are_joined_with_the_first_parts_time_and_offset(tmp_path: Path) -> None:
    """A 40 KB line (P, P, F) becomes one record at the first part's offset and time."""
    writer = CriWriter(tmp_path / "0.log", Clock(T0))
    writer.write("stdout", b"before\n")
    long = bytes(range(48, 58)) * 4000
    stamps = writer.write("stdout", long + b"\n")
    writer.write("stdout", b"after\n")
    records, _ = decode_file(tmp_path / "0.log")
    assert messages(records) == [b"before", long, b"after"]
    assert split_framed(records.lines[1])[0] == stamps[0]
    first_p = (tmp_path / "0.log").read_bytes().index(stamps[0])
    assert records.offs[1] == first_p


def test_interleaved_streams_keep_order_and_hold_the_checkpoint_at_an_open_part(
    tmp_path: Path,
) -> None:
    """stdout P, stderr F, stdout F: the stderr line waits behind the open stdout line,
    and while that line is open the safe end stays at its first part."""
    path = tmp_path / "0.log"
    writer = CriWriter(path, Clock(T0))
    writer.write_physical("stdout", b"P", b"first half ")
    writer.write_physical("stderr", b"F", b"an error")
    cut = path.stat().st_size
    writer.write_physical("stdout", b"F", b"second half")
    data = path.read_bytes()
    decoder = Decoder("cri", 1000)
    out = decoder.feed(split_chunk(data[:cut], 0, 2000), cut)
    assert out.records.lines == []
    assert out.end == 0, "nothing shipped past the open part"
    out = decoder.feed(split_chunk(data[cut:], cut, 2000), len(data))
    assert messages(out.records) == [b"first half second half", b"an error"]
    assert out.records.offs == [0, data.index(b"\n") + 1]
    assert out.end == len(data)


def test_long_lines_are_cut_after_reassembly(tmp_path: Path) -> None:
    """max_line_bytes applies to the joined line, not to each 16 KiB part."""
    writer = CriWriter(tmp_path / "0.log", Clock(T0))
    writer.write("stdout", b"y" * 40_000 + b"\nshort\n")
    decoder = Decoder("cri", 20_000)
    out = decoder.feed(physical(tmp_path / "0.log", max_line=decoder.physical_max), 10**6)
    assert messages(out.records) == [b"y" * 20_000, b"short"]
    assert out.records.truncated == 1


def test_a_single_full_line_over_the_limit_is_cut_too(tmp_path: Path) -> None:
    """With containerd's splitting off (maxLen 0), one F line can exceed max_line_bytes."""
    writer = CriWriter(tmp_path / "0.log", Clock(T0), max_len=0)
    writer.write("stdout", b"z" * 5000 + b"\n")
    decoder = Decoder("cri", 1000)
    out = decoder.feed(physical(tmp_path / "0.log", max_line=decoder.physical_max), 10**6)
    assert messages(out.records) == [b"z" * 1000]
    assert out.records.truncated == 1


def test_invalid_utf8_inside_cri_is_kept_as_bytes_and_counted(tmp_path: Path) -> None:
    """containerd copies bytes as they come; invalid UTF-8 is shipped raw and counted."""
    writer = CriWriter(tmp_path / "0.log", Clock(T0))
    writer.write("stdout", b"caf\xe9 \xff\xfe ok\nplain\n")
    records, _ = decode_file(tmp_path / "0.log")
    assert messages(records) == [b"caf\xe9 \xff\xfe ok", b"plain"]
    assert records.invalid == 1


def test_output_ending_without_newline_ships_on_flush(tmp_path: Path) -> None:
    """A lone P (the container exited mid-line) is held, then shipped whole on flush."""
    writer = CriWriter(tmp_path / "0.log", Clock(T0))
    writer.write("stdout", b"done\nno newline at exit")
    size = (tmp_path / "0.log").stat().st_size
    decoder = Decoder("cri", 1000)
    out = decoder.feed(physical(tmp_path / "0.log"), size)
    assert messages(out.records) == [b"done"]
    assert out.end == (tmp_path / "0.log").read_bytes().index(b"\n") + 1
    assert decoder.busy
    out = decoder.flush(size)
    assert messages(out.records) == [b"no newline at exit"]
    assert out.end == size
    assert not decoder.busy


def test_lines_that_do_not_parse_ship_framed_as_unknown(tmp_path: Path) -> None:
    """A line without CRI framing is neither lost nor guessed at: time and stream '-'."""
    path = tmp_path / "0.log"
    CriWriter(path, Clock(T0)).write("stdout", b"ok\n")
    with open(path, "ab") as f:
        f.write(b"garbage without framing\n")
    records, _ = decode_file(path)
    assert split_framed(records.lines[1]) == (b"-", b"-", b"garbage without framing")


def test_partials_span_a_rotation_and_keep_the_first_files_identity(tmp_path: Path) -> None:
    """P parts at the end of 0.log.<stamp>, F in the new 0.log: one carried record with
    the old file's identity and offset; the new file's checkpoint moves only with it."""
    old, new = tmp_path / "0.log.20261118-110640", tmp_path / "0.log"
    writer = CriWriter(old, Clock(T0))
    writer.write_physical("stdout", b"F", b"whole")
    first = old.stat().st_size
    writer.write_physical("stdout", b"P", b"head ")
    writer.write_physical("stderr", b"P", b"err head ")
    writer.path = new
    writer.reopen()
    writer.write_physical("stderr", b"F", b"err tail")
    writer.write_physical("stdout", b"F", b"tail")
    writer.write_physical("stdout", b"F", b"next")
    pred, succ = Decoder("cri", 1000), Decoder("cri", 1000)
    out = pred.feed(physical(old), old.stat().st_size)
    assert messages(out.records) == [b"whole"]
    assert out.end == first
    src = Source(b"h", str(old).encode(), "1:2:old")
    pending, held = pred.hand_over(src, old.stat().st_size)
    assert not pred.busy
    succ.adopt(pending, held, 0)
    out = succ.feed(physical(new), new.stat().st_size)
    [carried] = out.carried
    assert carried.origin.source == src
    assert carried.origin.end == old.stat().st_size
    assert messages(carried.records) == [b"head tail", b"err head err tail"]
    assert carried.records.offs[0] == first
    assert messages(out.records) == [b"next"]
    assert carried.also_end == out.records.offs[0]
    assert out.end == new.stat().st_size


def test_reset_forgets_own_parts_but_keeps_adopted_ones(tmp_path: Path) -> None:
    """A refused batch rewinds the file; parts from a predecessor cannot be re-read."""
    decoder = Decoder("cri", 1000)
    other = Decoder("cri", 1000)
    other.feed(split_chunk(b"2026-11-18T11:06:40Z stdout P adopted \n", 0, 2000), 40)
    decoder.adopt(*other.hand_over(Source(b"h", b"/p", "f"), 40), 0)
    decoder.feed(split_chunk(b"2026-11-18T03:46:41Z stderr P own\n", 0, 2000), 36)
    decoder.reset(0)
    assert list(decoder.pending) == [b"stdout"]


# --- Docker json-file ---------------------------------------------------------------


def test_docker_split_lines_are_joined_and_unescaped(tmp_path: Path) -> None:
    """The copier's 16 KiB parts join back; JSON escapes and \\ufffd decode to UTF-8."""
    path = tmp_path / "c-json.log"
    writer = DockerWriter(path, Clock(T0))
    long = b"<&>" * 12_000
    writer.write("stdout", long + b"\n")
    writer.write("stderr", b"bad \xff byte\n")
    writer.close()
    records, end = decode_file(path, "docker")
    assert messages(records) == [long, "bad \ufffd byte".encode()]
    assert [split_framed(r)[1] for r in records.lines] == [b"stdout", b"stderr"]
    assert records.offs == [0, path.read_bytes().index(b'{"log":"bad')]
    assert end == path.stat().st_size


def test_detect_tells_cri_docker_and_plain_lines_apart() -> None:
    """auto: a CRI prefix, a json-file object with log/time, or raw (app JSON stays raw)."""
    assert detect(b"2026-11-18T11:06:40.5+01:00 stderr P x") == "cri"
    assert detect(b'{"log":"x\\n","stream":"stdout","time":"2026-11-18T11:06:40Z"}') == "docker"
    assert detect(b'{"level":"info","msg":"app json"}') == "raw"
    assert detect(b"2026-11-18 11:06:40 INFO started") == "raw"
    assert parse_docker(b'{"log":"x"') is None


@pytest.mark.parametrize(
    ("lines", "runs"),
    [
        ([b"t1 a", b"t1 b", b"t2 c"], [(b"t2", 1)]),
        ([b"t1 a", b"t1 b"], [(b"t1", 2)]),
    ],
)
def test_runs_count_repeats_of_the_last_timestamp(
    lines: list[bytes], runs: list[tuple[bytes, int]]
) -> None:
    """Runs carries (last time, repeat count) from one entry to the next."""
    tracker = Runs()
    tracker.consume(lines)
    assert [(tracker.last, tracker.run)] == runs
    assert tracker.first_k(lines[-1]) == tracker.run
    tracker.consume([lines[-1]])
    assert tracker.run == runs[0][1] + 1
