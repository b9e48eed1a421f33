"""Values written as people write them beyond the labelled set's usual formats: typographic separators (en-dashes,
no-break and thin spaces, the German slash), several numbers one after another; and look-alikes that are not
personal data (an ISBN without the word ISBN, a run of consecutive digits)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mmcurate.schemas.record import RECORD_SCHEMA, empty_record
from mmcurate.schemas.stage_configs import FacesConfig, PiiConfig
from mmcurate.stages.pii.analyzer import PiiAnalyzer
from mmcurate.stages.pii.stage import PiiStage


@pytest.fixture(scope="module")
def analyzer() -> PiiAnalyzer:
    return PiiAnalyzer(PiiConfig(faces=FacesConfig(enabled=False)))


def found(analyzer: PiiAnalyzer, text: str) -> list[tuple[str, str]]:
    return [(f.entity_type, text[f.start:f.end]) for f in analyzer.analyze([text])[0]]


@pytest.mark.parametrize("text, value", [
    ("call 808\u2013634\u20130968 to book", "808\u2013634\u20130968"),  # en-dash
    ("Tel. 030/2037872", "030/2037872"),  # a German area code and its slash
    ("call\u00a0(808)\u00a0634-0968", "(808)\u00a0634-0968"),  # no-break spaces
    ("ring 808\u2009634\u20090968", "808\u2009634\u20090968"),  # thin spaces, which libphonenumber does not read
    ("office +44\u202f20\u202f7946\u202f0958", "+44\u202f20\u202f7946\u202f0958"),  # narrow no-break spaces
    ("fax 808\u2212634\u22120968", "808\u2212634\u22120968"),  # minus signs
])
def test_a_phone_written_with_typographic_separators_is_found(analyzer, text, value):
    assert found(analyzer, text) == [("PHONE_NUMBER", value)]


@pytest.mark.parametrize("text, values", [
    ("tel (808) 634-0968 (212) 555-0199", ["(808) 634-0968", "(212) 555-0199"]),
    ("808-634-0968 212-555-0199 303-555-0147", ["808-634-0968", "212-555-0199", "303-555-0147"]),
    ("call 808.634.0968 212.555.0199 303.555.0147 617.555.0123",
     ["808.634.0968", "212.555.0199", "303.555.0147", "617.555.0123"]),
    ("Tel. +49 30 2037872 - Fax +49 30 2037873", ["+49 30 2037872", "+49 30 2037873"]),
    ("call 808-634-0968 / 020 7946 0958", ["808-634-0968", "020 7946 0958"]),  # two regions in one run
    # spaces inside the numbers and between them: the matcher reads one invalid number, or (German numbers have
    # no fixed length) one that swallows the next group
    ("ring 020 7946 0958 020 7946 0959", ["020 7946 0958", "020 7946 0959"]),
    ("phones 808 634 0968 212 555 0199", ["808 634 0968", "212 555 0199"]),
    ("tel +1 808 634 0968 07911 123456", ["+1 808 634 0968", "07911 123456"]),
    ("tel +49 30 2037872 212.555.0199", ["+49 30 2037872", "212.555.0199"]),
    ("tel +44 20 7946 0958 808-634-0968", ["+44 20 7946 0958", "808-634-0968"]),
])
def test_numbers_written_one_after_another_are_each_found(analyzer, text, values):
    assert found(analyzer, text) == [("PHONE_NUMBER", v) for v in values]


def test_a_phone_in_one_run_of_digits_with_a_stronger_finding_is_found_beside_it(analyzer):
    text = "paid 4111 1111 1111 1111 808-634-0968"
    assert found(analyzer, text) == [("CREDIT_CARD", "4111 1111 1111 1111"), ("PHONE_NUMBER", "808-634-0968")]


def test_an_ssn_written_with_en_dashes_is_found(analyzer):
    text = "social security no. 880\u201366\u20130885"
    assert found(analyzer, text) == [("US_SSN", "880\u201366\u20130885")]


def test_the_stage_redacts_the_value_as_written_and_counts_it():
    stage = PiiStage(PiiConfig(faces=FacesConfig(enabled=False)))
    alt = "harbour at dusk, call\u00a0(808)\u00a0634-0968 to book"
    caption = "harbour at dusk, call 808\u2013634\u20130968 to book"
    rows = [empty_record(key="k1", caption=caption, alt=alt, title="Studio Berlin, Tel. 030/2037872",
                         text=caption, text_source="caption")]
    out = stage.process_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)).to_pylist()[0]
    assert out["caption"] == out["text"] == "harbour at dusk, call <PHONE_NUMBER> to book"
    assert out["alt"] == "harbour at dusk, call\u00a0<PHONE_NUMBER> to book"  # the rest of the text as it was
    assert out["title"] == "Studio Berlin, Tel. <PHONE_NUMBER>"
    assert dict(out["pii"]) == {"PHONE_NUMBER": 3}


@pytest.mark.parametrize("text", [
    "cover of 0-306-40615-2",  # an ISBN-10 in its groups, its check digit valid, without the word ISBN
    "the book 978-3-16-148410-0 on a shelf",  # an ISBN-13
    "sequence 0123456789 on a keypad",
    "call (123) 456-7890 to book",  # the placeholder of every form
    "countdown 9876543210",
])
def test_look_alikes_of_phone_numbers_are_not_phones(analyzer, text):
    assert found(analyzer, text) == []


@pytest.mark.parametrize("text, value", [
    ("call 0-306-40615-3", "0-306-40615-3"),  # the same groups, a wrong ISBN check digit: FR reads a phone
    ("call 808-634-0968", "808-634-0968"),
])
def test_numbers_shaped_like_look_alikes_but_failing_their_check_are_still_phones(analyzer, text, value):
    assert found(analyzer, text) == [("PHONE_NUMBER", value)]


def test_two_phones_one_after_the_other_are_not_read_as_a_card_across_them(analyzer):
    # 4934 617-616-6569 passes Luhn: the end of one number and the next, a space and hyphens, is not a card
    text = "phone 808-962-4934 617-616-6569"
    assert found(analyzer, text) == [("PHONE_NUMBER", "808-962-4934"), ("PHONE_NUMBER", "617-616-6569")]


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111",
                                  "2221 0012 3412 3450"])
def test_a_card_written_with_one_separator_is_still_a_card(analyzer, card):
    assert found(analyzer, f"paid with {card}") == [("CREDIT_CARD", card)]
