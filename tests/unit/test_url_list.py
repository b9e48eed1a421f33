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
