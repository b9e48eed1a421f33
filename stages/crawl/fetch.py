"""One URL fetched whole through the guard (``opener.py``), or a ``Rejected`` saying why not.

``Fetcher.fetch`` adds to the guard only what a caller of a whole body wants: urllib's own errors (HTTPError,
timeouts, resets, bad URLs) mapped to reasons, and an optional media-type check made before the body is read.
"""

from __future__ import annotations

import http.client
import urllib.request
from dataclasses import dataclass
from urllib.error import HTTPError, URLError

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.stage_configs import FetchConfig
from mmcurate.stages.crawl.connection import DeadlineExceeded
from mmcurate.stages.crawl.opener import build_opener
from mmcurate.stages.crawl.politeness import Gate


@dataclass(frozen=True)
class FetchResult:
    url: str  # after redirects
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    content_type: str | None  # the Content-Type header as sent, parameters included

    @property
    def media_type(self) -> str | None:
        """ "text/html" for "text/html; charset=utf-8"."""
        if self.content_type is None:
            return None
        return self.content_type.split(";", 1)[0].strip().lower() or None


def _timeout(err: BaseException, during: str) -> Rejected:
    if isinstance(err, DeadlineExceeded):  # its text is "timeout: fetch deadline of … passed during …"
        return Rejected(Reason.TIMEOUT, str(err).split(": ", 1)[1])
    return Rejected(Reason.TIMEOUT, f"{during}: {err}")


class Fetcher:
    """Fetches one URL through the guard and returns it whole, or raises ``Rejected``. Thread-safe."""

    def __init__(self, config: FetchConfig | None = None, gate: Gate | None = None):
        """``gate``: the per-host politeness gate (default: this process's; see ``politeness.process_gate``)."""
        self.config = config or FetchConfig()
        self.opener = build_opener(self.config, gate)

    def fetch(self, url: str, accept: tuple[str, ...] = ()) -> FetchResult:
        """``accept``: media types or prefixes ending in "/" ("text/html", "image/"); others are CONTENT_TYPE."""
        try:
            request = urllib.request.Request(url, headers={"User-Agent": self.config.user_agent})
        except ValueError as err:  # "not a url", no scheme
            raise Rejected(Reason.SCHEME_NOT_ALLOWED, f"{url!r}: {err}") from None
        try:
            with self.opener.open(request, timeout=self.config.timeout_s) as response:
                headers = {}
                for name in dict.fromkeys(key.lower() for key in response.headers.keys()):
                    headers[name] = ", ".join(response.headers.get_all(name) or [])
                content_type = response.headers.get("Content-Type")
                self._check_media_type(content_type, accept)
                body = response.read()
            return FetchResult(response.url, response.status, headers, body, content_type)
        except Rejected:
            raise
        except HTTPError as err:
            err.close()
            raise Rejected(Reason.HTTP_ERROR, str(err.code)) from None
        except URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise _timeout(err.reason, "connect") from None
            raise Rejected(Reason.CONNECTION_ERROR, str(err.reason)) from None
        except TimeoutError as err:
            raise _timeout(err, "read") from None
        except (OSError, http.client.HTTPException) as err:  # resets, bad status lines, TLS failures
            raise Rejected(Reason.CONNECTION_ERROR, f"{type(err).__name__}: {err}") from None
        except ValueError as err:  # http.client.InvalidURL (bad port) and friends
            raise Rejected(Reason.CONNECTION_ERROR, f"{url!r}: {err}") from None

    @staticmethod
    def _check_media_type(content_type: str | None, accept: tuple[str, ...]) -> None:
        if not accept:
            return
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        for wanted in accept:
            if media_type == wanted or (wanted.endswith("/") and media_type.startswith(wanted)):
                return
        raise Rejected(Reason.CONTENT_TYPE, f"{media_type or 'no Content-Type'} not in {list(accept)}")
