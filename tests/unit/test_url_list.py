import pyarrow.parquet as pq

from mmcurate.schemas.reasons import Reason
from mmcurate.schemas.stage_configs import UrlListInput
from mmcurate.stages.crawl.url_list import number_url_list, reason_of_download_error


def test_numbering_gives_unique_stable_keys_even_for_repeated_urls(tmp_path):
    src = tmp_path / "list.csv"
    src.write_text("url,caption\nhttp://a/x.jpg,a cat\nhttp://a/x.jpg,a cat\nhttp://a/y.jpg,\n")
    n = number_url_list(UrlListInput(path=str(src)), 0, tmp_path / "out")
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert n == 3 and len({r["key"] for r in rows}) == 3
    assert [r["position"] for r in rows] == [0, 1, 2]
    again = tmp_path / "again"
    number_url_list(UrlListInput(path=str(src)), 0, again)
    assert [r["key"] for r in pq.read_table(again).to_pylist()] == [r["key"] for r in rows]


def test_jsonl_and_missing_column(tmp_path):
    src = tmp_path / "list.jsonl"
    src.write_text('{"link": "http://a/1.png", "text": "one"}\n')
    n = number_url_list(UrlListInput(path=str(src), url_column="link", caption_column="text"), 1, tmp_path / "o")
    assert n == 1 and pq.read_table(tmp_path / "o").to_pylist()[0]["caption"] == "one"
    import pytest

    with pytest.raises(ValueError, match="no column"):
        number_url_list(UrlListInput(path=str(src)), 1, tmp_path / "p")


def test_download_error_strings_map_to_reasons():
    assert reason_of_download_error("HTTP Error 404: Not Found").reason == Reason.HTTP_ERROR.value
    assert reason_of_download_error("HTTP Error 404: Not Found").detail == "404"
    assert reason_of_download_error("<urlopen error address_not_allowed: 10.0.0.1 is private>").reason == "address_not_allowed"
    assert reason_of_download_error("Use of image disallowed by X-Robots-Tag directive").reason == "x_robots_noai"
    assert reason_of_download_error("The read operation timed out").reason == "timeout"
    assert reason_of_download_error("something odd").reason == "download_error"


def test_a_non_utf8_row_is_its_own_reject_and_the_other_rows_keep_real_text(tmp_path):
    src = tmp_path / "list.csv"
    src.write_bytes(b"url,caption\nhttp://a/1.jpg,a small brown dog\nhttp://a/2.jpg,caf\xe9 latte\n"
                    b"http://a/\xff.jpg,ok\nhttp://a/4.jpg,\xe6\x97\xa5\xe6\x9c\xac\n")
    n = number_url_list(UrlListInput(path=str(src)), 0, tmp_path / "out", refused_dir=tmp_path / "refused")
    kept_rows = pq.read_table(tmp_path / "out").to_pylist()
    refused = pq.read_table(tmp_path / "refused").to_pylist()
    assert n == 4
    assert [(r["url"], r["caption"]) for r in kept_rows] == [("http://a/1.jpg", "a small brown dog"), ("http://a/4.jpg", "日本")]
    assert [(r["position"], r["_reason"]) for r in refused] == [(1, "not_utf8"), (2, "not_utf8")]
    assert refused[1]["url"] == "http://a/\\xff.jpg"


def test_a_list_that_stops_parsing_keeps_the_rows_before_and_reports_the_rest(tmp_path):
    src = tmp_path / "list.jsonl"
    src.write_text('{"url": "http://a/1.jpg", "caption": "one"}\n{"url": 7, "caption": "two"}\n{"url": [1], "caption": 3}\n')
    n = number_url_list(UrlListInput(path=str(src)), 0, tmp_path / "out", refused_dir=tmp_path / "refused")
    refused = pq.read_table(tmp_path / "refused").to_pylist()
    assert refused[-1]["_reason"] == "list_malformed" and str(src) in refused[-1]["_detail"]
    written = pq.read_table(tmp_path / "out").num_rows if (tmp_path / "out").exists() and any((tmp_path / "out").iterdir()) else 0
    assert n == written + len(refused)


def test_a_ten_megabyte_caption_is_read(tmp_path):
    src = tmp_path / "list.csv"
    src.write_text("url,caption\nhttp://a/1.jpg," + "x" * 10_000_000 + "\nhttp://a/2.jpg,two\n")
    assert number_url_list(UrlListInput(path=str(src)), 0, tmp_path / "out", chunk_rows=1) == 2
    assert [len(r["caption"]) for r in pq.read_table(tmp_path / "out").to_pylist()] == [10_000_000, 3]

