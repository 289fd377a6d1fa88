"""Store and run URIs as user input: ``check_uri`` refuses credentials and ``file://`` hosts.

A URI with a secret (``s3://KEY:SECRET@host/bucket``) is refused before it can reach a message, a Prefect
parameter or a cache path; ``redact_uri`` is the only form any message may show.
"""

from __future__ import annotations

from emotion_core.errors import StoreError

_LOCAL_HOSTS = ("", "localhost")


def redact_uri(text: str) -> str:
    """``text`` with any userinfo (``user:password@``) and query replaced by ``***``; plain paths unchanged."""
    text = str(text)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    if _has_userinfo(scheme, rest):
        rest = "***@" + rest.rpartition("@")[2]  # a secret may hold '/' (AWS secret keys do): all up to the last '@'
    if scheme.lower() == "file":
        return f"{scheme}://{rest}"
    rest, qmark, _query = rest.partition("?")
    return f"{scheme}://{rest}{'?***' if qmark else ''}"


def _has_userinfo(scheme: str, rest: str) -> bool:
    # file:///home/me@work is a path with an '@', not userinfo: a file URI's authority is empty there.
    return "@" in rest and not (scheme.lower() == "file" and rest.startswith("/"))


def check_uri(text: str, what: str = "store") -> str:
    """``text`` if it is safe to use as a store or run reference; ``StoreError`` (URI redacted) otherwise.

    Refused: any userinfo in a URI (credentials come from the environment, a profile or a Prefect
    block, never from the URI), and a ``file://`` URI whose host is not empty or ``localhost``
    (``file://tmp/x`` means host ``tmp``, path ``/x``: not the folder the user meant).
    """
    text = str(text)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text  # a plain path
    authority = rest.partition("/")[0]
    if _has_userinfo(scheme, rest):
        raise StoreError(
            f"{what} '{redact_uri(text)}': credentials in a URI are refused (they would be shown in "
            "logs and flow-run parameters); give them through the environment (AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY), an AWS profile or a Prefect block"
        )
    if scheme.lower() == "file" and authority.lower() not in _LOCAL_HOSTS:
        raise StoreError(
            f"{what} '{redact_uri(text)}': expected file:///absolute/path (a file:// URI has no host; "
            f"'{authority}' would be read as a host name)"
        )
    return text
