"""Records and switches of the test mirror: ``Request`` (the request log), ``Fault`` (a fault
switch) and the list of fault kinds. The server that applies them is ``tests/mirror.py``, which
re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

__all__ = ["FAULT_KINDS", "RANGE_ONLY_KINDS", "Fault", "Request", "glob_match"]

FAULT_KINDS = frozenset(
    {
        "drop", "short_close", "reset", "stall", "drip", "ignore_range", "wrong_range",
        "wrong_total", "bad_range_syntax", "multipart", "short", "long_body", "close_delimited",
        "status", "redirect", "corrupt", "gzip", "change_etag", "expire",
    }
)  # fmt: skip
# Kinds that only make sense for a request with a Range header (implicitly only_ranged).
RANGE_ONLY_KINDS = frozenset(
    {"ignore_range", "wrong_range", "wrong_total", "bad_range_syntax", "multipart"}
)


@dataclass
class Request:
    """One record per request received (appended when it arrives, once its fault is chosen).

    ``headers`` keys are Title-Cased (``Authorization``, ``If-Range``); repeated headers are
    joined with ", ". ``range`` is the first range asked: ``(a, b)``, ``(a, None)`` for ``a-``,
    ``(-n, None)`` for ``-n``; None when there is no (parseable) Range header.
    """

    method: str
    path: str
    headers: dict[str, str]
    range: tuple[int, int | None] | None
    host: str
    query: str = ""
    fault: str | None = None  # kind of the fault applied, if any
    status: int | None = None  # status sent (None until the answer starts)
    body_bytes: int = 0  # body bytes written to the connection so far


@dataclass
class Fault:
    """A fault switch. It applies to ``times`` matching requests (None = forever), then stops.

    A request matches when ``path`` (fnmatch glob, tried on "/a/b.bin" and on "a/b.bin") matches
    its URL path, it carries a Range header if ``only_ranged`` (implied for ignore_range,
    wrong_range, wrong_total, bad_range_syntax, multipart), and its first range starts above
    ``only_start_above`` when that is set. HEAD answers never carry a body, so body faults only
    change their headers. Kinds (``after_bytes`` is an offset in the response body):

    drop / short_close  headers + ``after_bytes`` body bytes, then the connection is closed (FIN)
    reset               headers + ``after_bytes`` bytes, then transport.abort() (may reset)
    stall               headers + ``after_bytes`` bytes, then silence until client/server stops
    drip                whole body at ``rate`` bytes/s
    ignore_range        200 with the full body although a Range was asked
    wrong_range         206 whose Content-Range starts 1 byte late (1 early at the end of the
                        file), body = the bytes actually asked
    wrong_total         206 whose Content-Range total is size + 1
    bad_range_syntax    206 with ``Content-Range: bytes abc``
    multipart           206 multipart/byteranges, one part per asked range
    short               right headers (Content-Range of the asked range) but the body and
                        Content-Length are cut to ``after_bytes``; on a plain GET a 200 with
                        Content-Length ``after_bytes``
    long_body           the normal answer followed by ``after_bytes`` (default 1024) extra b"X"
                        bytes on the connection (kept open)
    close_delimited     no Content-Length, no chunking, ``Connection: close``; the body is cut
                        at ``after_bytes`` (0 = whole body), then the connection is closed
    status              ``status`` (default 503) with optional ``Retry-After``; 416 adds
                        ``Content-Range: bytes */N``
    redirect            302 to ``location``, sent verbatim (relative, absolute, file:, data:)
    corrupt             the byte at body offset ``after_bytes`` is XOR-ed with 0xFF
    gzip                the selected bytes gzip-compressed, ``Content-Encoding: gzip``,
                        Content-Length = compressed size (status/Content-Range as normal)
    change_etag         before answering, the file's ETag/Last-Modified change (and its content
                        becomes ``data`` if given); then a normal answer
    expire              ``status`` (default 403): a signed URL that is no longer valid
    """

    kind: str
    path: str | None = None  # fnmatch glob on the URL path ("/a/b.onnx" or "a/b.onnx" style)
    times: int | None = 1  # requests it applies to; None = forever
    after_bytes: int = 0
    status: int | None = None  # "status": default 503; "expire": default 403
    retry_after: str | None = None
    location: str | None = None  # "redirect"
    rate: int | None = None  # "drip", bytes/s
    only_ranged: bool = False
    only_start_above: int | None = None
    data: bytes | None = None  # "change_etag": new content to install with set_file
    hits: int = field(default=0, init=False)  # requests it has been applied to

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


def glob_match(path: str, glob: str) -> bool:
    return fnmatchcase(path, glob) or fnmatchcase(path.lstrip("/"), glob)
