"""Unit tests of chunk splitting, entry encoding and multiline joining."""

from __future__ import annotations

import itertools

from agents.lines import Joiner, Records, Source, pack, split_chunk
from opsq.core.logformat import Entry, decode


def test_fast_encoder_matches_the_reference_entry_encoding_byte_for_byte() -> None:
    lines = [b"alpha", b"", b"\xff\xfe bad", b"with\0nul", b"z" * 300]
    body = b"".join(line + b"\n" for line in lines)
    records = split_chunk(body, 1000, max_line=10_000)
    [batch] = pack(
        Source(b"h1", b"/var/log/a.log", "1:2:ab"), records, 1000 + len(body), 100, 10**6
    )
    reference = Entry(
        host="h1", path="/var/log/a.log", fid="1:2:ab", start=1000, end=1000 + len(body),
        records=tuple(zip(records.offs, lines, strict=True)),
    )  # fmt: skip
    assert batch.fields == reference.encode()
    assert decode(batch.fields) == reference


def test_offsets_point_at_each_line_start() -> None:
    body = b"a\nbb\n\nccc\n"
    records = split_chunk(body, 50, max_line=100)
    assert records.offs == [50, 52, 55, 56]
    for off, line in zip(records.offs, records.lines, strict=True):
        assert body[off - 50 : off - 50 + len(line)] == line


def test_long_lines_are_truncated_and_counted() -> None:
    body = b"short\n" + b"L" * 500 + b"\nok\n"
    records = split_chunk(body, 0, max_line=100)
    assert records.lines == [b"short", b"L" * 100, b"ok"]
    assert records.truncated == 1
    assert records.offs[2] == 6 + 501


def test_invalid_utf8_and_nul_lines_are_kept_raw_and_counted() -> None:
    body = b"fine\n\xc3\x28 broken\nnul\0here\n\xc3\xa9t\xc3\xa9 ok\n"
    records = split_chunk(body, 0, max_line=100)
    assert records.lines[1] == b"\xc3\x28 broken"
    assert records.lines[2] == b"nul\0here"
    assert records.invalid == 2


def test_batches_respect_line_and_byte_limits_and_chain_offsets() -> None:
    lines = [b"%04d" % i + b"x" * 96 for i in range(50)]
    body = b"".join(line + b"\n" for line in lines)
    records = split_chunk(body, 0, max_line=1000)
    batches = pack(Source(b"h", b"p", "f"), records, len(body), batch_lines=20, batch_bytes=1024)
    decoded = [decode(b.fields) for b in batches]
    assert all(len(e.records) <= 20 for e in decoded)
    assert all(len(b.fields[b"data"]) <= 1024 for b in batches)
    assert [r for e in decoded for _, r in e.records] == lines
    for prev, nxt in itertools.pairwise(decoded):
        assert prev.end == nxt.start  # each entry ends where the next begins
    assert decoded[-1].end == len(body)


def test_multiline_joins_continuations_and_holds_the_last_record() -> None:
    joiner = Joiner(r"^\d", max_lines=100, max_bytes=1000)
    body = b"1 start\n  at foo\n  at bar\n2 next\n  more\n"
    done = joiner.feed(split_chunk(body, 0, 1000))
    assert done.lines == [b"1 start\n  at foo\n  at bar"]
    assert done.offs == [0]
    assert joiner.emitted_end == body.index(b"2 next")  # checkpoint stops before "2 next"
    assert joiner.pending
    rest = joiner.flush()
    assert rest.lines == [b"2 next\n  more"]
    assert joiner.emitted_end == len(body)


def test_multiline_max_lines_splits_runaway_records() -> None:
    joiner = Joiner(r"^START", max_lines=3, max_bytes=1000)
    records = Records([b"START", b"a", b"b", b"c", b"d"], [0, 6, 8, 10, 12])
    done = joiner.feed(records)
    assert done.lines == [b"START\na\nb"]
    assert joiner.flush().lines == [b"c\nd"]
