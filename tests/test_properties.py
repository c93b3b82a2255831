"""Property-based tests (hypothesis) of the pure parts: id rules, CSV parsing, config parsing,
retrieval metrics, and ids surviving a round trip through the store."""

from __future__ import annotations

import csv
import io
import re
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagefinder.config import ApiSettings
from imagefinder.encoders.base import EncoderInfo
from imagefinder.evaluation.metrics import average_precision, micro_pr_curve
from imagefinder.ids import MAX_ID_LENGTH, id_pattern, id_problem
from imagefinder.sources import CsvSource, SkippedRow, SourceItem
from imagefinder.stores.embedded import EmbeddedStore

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text as users type it, including quotes, commas, newlines, path tricks and non-ASCII.
any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)


@FAST
@given(any_text)
def test_an_accepted_id_is_printable_bounded_utf8(image_id: str) -> None:
    if id_problem(image_id) is None:
        assert 0 < len(image_id) <= MAX_ID_LENGTH
        assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in image_id)
        image_id.encode("utf-8")
    else:
        segments = image_id.split("/")
        assert (
            not image_id
            or len(image_id) > MAX_ID_LENGTH
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in image_id)
            or "\ufffd" in image_id
            or any(unicodedata.category(ch) == "Cf" for ch in image_id)
            or any(segment in (".", "..") for segment in segments)
            or (len(segments) > 1 and segments[-1] in ("file", "thumbnail"))
        )


@FAST
@given(st.lists(st.tuples(any_text, any_text, any_text), max_size=12))
def test_csv_rows_come_back_as_written_or_with_a_reason(rows: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "list.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["url", "id", "caption"])
            writer.writerows(rows)
        entries = list(CsvSource(path, max_bytes=1000))
    items = [e for e in entries if isinstance(e, SourceItem)]
    skipped = [e for e in entries if isinstance(e, SkippedRow)]
    assert len(items) + len(skipped) == len(rows)  # every row is accounted for, none raises
    assert all(s.reason for s in skipped)
    ids = [item.id for item in items]
    assert len(ids) == len(set(ids))  # the first row with an id wins
    written = {(u.strip(), i.strip()) for u, i, _ in rows}
    for item in items:
        assert id_problem(item.id) is None
        assert any(i == item.id for _, i in written)


@FAST
@given(
    st.lists(st.text(alphabet=st.characters(blacklist_characters=",", codec="ascii"), min_size=1), max_size=5)
)
def test_comma_lists_in_the_environment_parse_back(keys: list[str]) -> None:
    cleaned = [k.strip() for k in keys if k.strip()]
    parsed = ApiSettings.model_validate({"api_keys": ",".join(keys)})
    assert parsed.api_keys == cleaned


rankings = st.lists(st.sampled_from([f"img{i}" for i in range(12)]), unique=True, max_size=12)


@FAST
@given(rankings, st.sets(st.sampled_from([f"img{i}" for i in range(12)]), min_size=1, max_size=6))
def test_average_precision_is_bounded_and_perfect_for_a_perfect_ranking(
    ranked: list[str], relevant: set[str]
) -> None:
    scored = [(item, 1.0 - n / 100) for n, item in enumerate(ranked)]
    ap = average_precision(scored, relevant)
    assert 0.0 <= ap <= 1.0
    perfect = [(item, 1.0) for item in sorted(relevant)] + [(i, 0.0) for i in ranked if i not in relevant]
    assert average_precision(perfect, relevant) == 1.0
    micro, curve = micro_pr_curve({"q": relevant}, {"q": scored})
    assert 0.0 <= micro <= 1.0 + 1e-9
    recalls = [point.recall for point in curve]
    assert recalls == sorted(recalls)  # recall never decreases down the ranking


# Ids near the rule's edges: path segments, sub-resource endings, format and replacement characters.
edgy_ids = st.lists(
    st.sampled_from(["a", "..", ".", "file", "thumbnail", "/", "x.y", "\u200b", "\ufffd", "\u00e9", "\ud800"])
    | any_text,
    max_size=6,
).map("".join)


@FAST
@given(edgy_ids | st.text(min_size=500, max_size=520))
def test_the_documented_id_pattern_accepts_exactly_the_ids_the_rule_accepts(image_id: str) -> None:
    """The OpenAPI document's pattern for ids is the id rule, so that clients and fuzzers know it
    (for strings UTF-8 can carry: the rule refuses lone surrogates, the pattern cannot name them)."""
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in image_id):
        assert id_problem(image_id) is not None
        return
    assert (re.fullmatch(id_pattern(), image_id) is not None) == (id_problem(image_id) is None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(any_text.filter(lambda i: id_problem(i) is None), min_size=1, max_size=8, unique=True))
def test_any_accepted_id_round_trips_through_the_store(ids: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = EmbeddedStore(Path(folder))
        store.bind_encoder(EncoderInfo("t", "1", 4, ""))
        rng = np.random.default_rng(len(ids))
        vectors = rng.normal(size=(len(ids), 4)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.upsert(ids, vectors, [{"uri": i} for i in ids])
        assert sorted(store.ids()) == sorted(ids)
        for image_id, vector in zip(ids, vectors, strict=True):
            assert store.get(image_id) == {"uri": image_id}
            assert image_id in {h.id for h in store.search(vector, k=len(ids))}
        assert store.delete(ids) == len(ids) and store.count() == 0
        store.close()


def test_the_csv_parser_keeps_extra_columns_as_text() -> None:
    """One concrete example next to the properties: a caption with a comma and a quote."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "list.csv"
        buffer = io.StringIO()
        csv.writer(buffer).writerows([["url", "id", "caption"], ["a.jpg", "a", 'red, "big" car']])
        path.write_text(buffer.getvalue())
        (item,) = list(CsvSource(path, max_bytes=1000))
    assert isinstance(item, SourceItem) and item.meta == {"caption": 'red, "big" car'}
