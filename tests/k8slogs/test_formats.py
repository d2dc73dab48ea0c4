"""Decoding CRI and Docker json-file lines, on files written the way the runtimes write them.

The files come from :mod:`tests.k8slogs.runtimes` (ports of containerd's and moby's
writers); the first tests pin those ports to the expectations of containerd's and
moby's own unit tests, so the decoder is checked against what nodes really hold.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agents.formats import Decoder, FramedJoiner, Runs, detect, parse_docker, split_framed
from agents.lines import Records, Source, split_chunk
from opsq.core.metrics import logs_agent as metrics
from tests.k8slogs.runtimes import MAX_LEN, Clock, CriWriter, DockerWriter, go_rfc3339nano

T0 = 1_795_000_000 * 1_000_000_000  # 2026-11-18, a whole second


def physical(path: Path, base: int = 0, max_line: int = 10**6) -> Records:
    data = path.read_bytes()[base:]
    return split_chunk(data, base, max_line)


def decode_file(path: Path, fmt: str = "cri", max_line: int = 256 * 1024) -> tuple[Records, int]:
    """The file's records and the checkpoint-safe end after them."""
    decoder = Decoder(fmt, max_line)  # type: ignore[arg-type]
    records = physical(path, max_line=decoder.physical_max)
    out = decoder.feed(records)
    return out, safe_end(decoder, path.stat().st_size)


def safe_end(decoder: Decoder, end: int) -> int:
    held = decoder.held_from
    return end if held is None else min(end, held)


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
    out = decoder.feed(split_chunk(data[:cut], 0, 2000))
    assert out.lines == []
    assert safe_end(decoder, cut) == 0, "nothing shipped past the open part"
    out = decoder.feed(split_chunk(data[cut:], cut, 2000))
    assert messages(out) == [b"first half second half", b"an error"]
    assert out.offs == [0, data.index(b"\n") + 1]
    assert safe_end(decoder, len(data)) == len(data)


def test_long_lines_are_cut_after_reassembly(tmp_path: Path) -> None:
    """max_line_bytes applies to the joined line, not to each 16 KiB part."""
    writer = CriWriter(tmp_path / "0.log", Clock(T0))
    writer.write("stdout", b"y" * 40_000 + b"\nshort\n")
    decoder = Decoder("cri", 20_000)
    out = decoder.feed(physical(tmp_path / "0.log", max_line=decoder.physical_max))
    assert messages(out) == [b"y" * 20_000, b"short"]
    assert out.truncated == 1


def test_a_single_full_line_over_the_limit_is_cut_too(tmp_path: Path) -> None:
    """With containerd's splitting off (maxLen 0), one F line can exceed max_line_bytes."""
    writer = CriWriter(tmp_path / "0.log", Clock(T0), max_len=0)
    writer.write("stdout", b"z" * 5000 + b"\n")
    decoder = Decoder("cri", 1000)
    lines = physical(tmp_path / "0.log", max_line=decoder.physical_max)
    out = decoder.feed(lines)
    assert messages(out) == [b"z" * 1000]
    assert lines.truncated + out.truncated == 1, "cut once, counted once"


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
    out = decoder.feed(physical(tmp_path / "0.log"))
    assert messages(out) == [b"done"]
    assert safe_end(decoder, size) == (tmp_path / "0.log").read_bytes().index(b"\n") + 1
    assert decoder.busy
    out = decoder.flush()
    assert messages(out) == [b"no newline at exit"]
    assert safe_end(decoder, size) == size
    assert not decoder.busy


def test_lines_that_do_not_parse_ship_framed_as_unknown(tmp_path: Path) -> None:
    """A line without CRI framing is neither lost nor guessed at: time and stream '-'."""
    path = tmp_path / "0.log"
    CriWriter(path, Clock(T0)).write("stdout", b"ok\n")
    with open(path, "ab") as f:
        f.write(b"garbage without framing\n")
    records, _ = decode_file(path)
    assert split_framed(records.lines[1]) == (b"-", b"-", b"garbage without framing")


@pytest.mark.parametrize(
    "line",
    [
        b"garbage stdout F a time that is a word",
        b" stdout F no time at all",
        b"20261118T110640Z stdout F a compact time",
        b"2026-11-18T11:06:40.0000000001Z stdout P ten digits of fraction",
        b"2026-13-45T11:06:40Z stderr P a month that does not exist",
    ],
)
def test_a_line_whose_time_is_not_rfc3339_does_not_parse_and_is_counted(
    tmp_path: Path, line: bytes
) -> None:
    """Between plain F lines (the fast path), a line whose first word is not an RFC 3339
    time ships framed as unknown and counts as a decode error; its neighbours stay whole."""
    path = tmp_path / "0.log"
    writer = CriWriter(path, Clock(T0))
    writer.write("stdout", b"ok 1\n")
    with open(path, "ab") as f:
        f.write(line + b"\n")
    writer.write("stdout", b"ok 2\n")
    errors = metrics.DECODE_ERRORS.labels(format="cri")
    before = errors._value.get()
    records, _ = decode_file(path)
    assert [split_framed(r)[:2] for r in records.lines][1] == (b"-", b"-")
    assert messages(records) == [b"ok 1", line, b"ok 2"]
    assert errors._value.get() == before + 1


def test_a_docker_line_whose_time_is_not_rfc3339_does_not_parse(tmp_path: Path) -> None:
    """json-file lines are JSON, but a "time" that is not a time is not taken as one."""
    path = tmp_path / "0.log"
    line = b'{"log":"hello\\n","stream":"stdout","time":"yesterday"}'
    path.write_bytes(line + b"\n")
    records, _ = decode_file(path, "docker")
    assert split_framed(records.lines[0]) == (b"-", b"-", line)


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
    out = pred.feed(physical(old))
    assert messages(out) == [b"whole"]
    assert safe_end(pred, old.stat().st_size) == first
    src = Source(b"h", str(old).encode(), "1:2:old")
    pending, held = pred.hand_over(src, old.stat().st_size)
    assert not pred.busy
    succ.adopt(pending, held, 0)
    assert succ.held_from == 0, "the new file's checkpoint waits for the carried lines"
    out = succ.feed(physical(new))
    [carried] = succ.take_carried()
    assert carried.origin.source == src
    assert carried.origin.end == old.stat().st_size
    assert messages(carried.records) == [b"head tail", b"err head err tail"]
    assert carried.records.offs[0] == first
    assert messages(out) == [b"next"]
    assert safe_end(succ, new.stat().st_size) == new.stat().st_size


def test_reset_forgets_own_parts_but_keeps_adopted_ones(tmp_path: Path) -> None:
    """A refused batch rewinds the file; parts from a predecessor cannot be re-read."""
    decoder = Decoder("cri", 1000)
    other = Decoder("cri", 1000)
    other.feed(split_chunk(b"2026-11-18T11:06:40Z stdout P adopted \n", 0, 2000))
    decoder.adopt(*other.hand_over(Source(b"h", b"/p", "f"), 40), 0)
    decoder.feed(split_chunk(b"2026-11-18T11:06:41Z stderr P own\n", 0, 2000))
    assert sorted(decoder.pending) == [b"stderr", b"stdout"]
    decoder.reset()
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


def test_a_split_line_in_a_chunk_only_slows_down_its_own_lines(tmp_path: Path) -> None:
    """Runs of plain F lines pass through as the same objects; only the P..F run around a
    split line is decoded, and the order and offsets stay those of the file."""
    writer = CriWriter(tmp_path / "0.log", Clock(T0))
    writer.write("stdout", b"".join(b"a%d\n" % i for i in range(50)))
    writer.write("stdout", b"L" * (MAX_LEN + 7) + b"\n")
    writer.write("stderr", b"".join(b"b%d\n" % i for i in range(50)))
    lines = physical(tmp_path / "0.log")
    out = Decoder("cri", 10**6).feed(lines)
    assert messages(out) == [b"a%d" % i for i in range(50)] + [b"L" * (MAX_LEN + 7)] + [
        b"b%d" % i for i in range(50)
    ]
    assert out.lines[0] is lines.lines[0]
    assert out.lines[-1] is lines.lines[-1]
    assert out.offs == sorted(out.offs)
    assert out.offs[50] == lines.offs[50], "the joined line sits at its first part"


JAVA_TRACE = b"""2026-11-18 11:06:40.123 ERROR [main] c.e.Shop - order failed
java.lang.IllegalStateException: payment declined
\tat com.example.shop.Payments.charge(Payments.java:42)
\tat com.example.shop.Orders.place(Orders.java:17)
Caused by: java.net.SocketTimeoutException: Read timed out
\tat java.base/java.net.SocketInputStream.read(SocketInputStream.java:168)
\t... 5 more
"""


def test_a_java_stack_trace_inside_cri_is_joined_on_its_messages(tmp_path: Path) -> None:
    """Decoder then FramedJoiner: the start pattern sees the message (not the runtime's
    time), a 20 KB frame split into P/F joins first, the trace keeps its first line's
    time and stream, and the stdout lines around it stay separate records."""
    writer = CriWriter(tmp_path / "0.log", Clock(T0))
    writer.write("stdout", b"2026-11-18 11:06:39.000 INFO  [main] c.e.Shop - started\n")
    long_frame = b"\tat com.example.Generated.deep(" + b"x" * 20_000 + b")\n"
    stamps = writer.write("stderr", JAVA_TRACE + long_frame)
    writer.write("stdout", b"2026-11-18 11:06:41.000 INFO  [main] c.e.Shop - next\n")
    decoder = Decoder("cri", 10**6)
    joiner = FramedJoiner(r"\d{4}-\d\d-\d\d ", 500, 10**6)
    lines = physical(tmp_path / "0.log", max_line=decoder.physical_max)
    out = joiner.feed(decoder.feed(lines))
    out.lines += joiner.flush().lines
    got = [split_framed(line) for line in out.lines]
    assert [m[:28] for _, _, m in got] == [
        b"2026-11-18 11:06:39.000 INFO", b"2026-11-18 11:06:40.123 ERRO",
        b"2026-11-18 11:06:41.000 INFO",
    ]  # fmt: skip
    ts, stream, trace = got[1]
    assert (ts, stream) == (stamps[0], b"stderr")
    assert trace == JAVA_TRACE + long_frame[:-1]
