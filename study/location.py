"""Where a study's files live: a local directory or a URI (``s3://bucket/studies``), one type.

:class:`Location` is the one place that tells a local path from a URI. Everything else
(spec, runner, tracking) joins, prints, compares and reads through it. Its files are
read and written through ``pyarrow.fs``, the file-system layer Ray Tune itself uses for
``storage_path``, so a location the driver reads is the location Ray wrote (and no second
file-system library is needed). Building a Location touches nothing: ``validate`` of a
cluster spec needs no network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens, a letter or digit at each end.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: The standard AWS variables that point S3 clients (pyarrow, boto3) at another endpoint.
S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def is_uri(value: str | os.PathLike) -> bool:
    """A location with a scheme (s3://, sqlite:///, http://) rather than a local path."""
    return _SCHEME.match(str(value)) is not None


def check_location(value: str, key: str) -> None:
    """A bucket URI names a valid bucket (and its endpoint variable is a URL); an HTTP URI a host and port.

    Checks the text only (no network), so ``validate`` catches a malformed URI before any trial.
    """
    from urllib.parse import urlsplit

    from routed_study.trainables.errors import InputError

    parts = urlsplit(value)
    if parts.scheme in ("s3", "gs"):
        if not _BUCKET.fullmatch(parts.netloc):
            raise InputError(f"key '{key}': {value!r} does not name a valid bucket ({parts.scheme}://BUCKET/path; "
                             f"3-63 lowercase letters, digits, '.' or '-')")
        for variable in S3_ENDPOINT_VARIABLES if parts.scheme == "s3" else ():
            endpoint = os.environ.get(variable)
            if endpoint and not _is_http_endpoint(endpoint):
                raise InputError(f"${variable}: {endpoint!r} is not an S3 endpoint URL (expected "
                                 f"http(s)://HOST[:PORT]; unset it for AWS S3), needed by key '{key}' ({value})")
    elif parts.scheme in ("http", "https") and not _is_http_endpoint(value):
        raise InputError(f"key '{key}': {value!r} is not an HTTP endpoint (expected {parts.scheme}://HOST[:PORT], "
                         f"e.g. http://127.0.0.1:5000)")


def _is_http_endpoint(value: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    try:
        parts.port  # raises on a port that is not a number in 0-65535
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def s3_endpoint_note(location: "str | Location") -> str:
    """Which endpoint an s3:// location reaches when the standard AWS variables redirect it."""
    if not str(location).startswith("s3://"):
        return ""
    variable = next((v for v in S3_ENDPOINT_VARIABLES if os.environ.get(v)), None)
    return f" (S3 endpoint {os.environ[variable]}, from ${variable})" if variable else " (AWS S3)"


class Location:
    """A local directory (made absolute against the working directory, ``~`` expanded) or a URI.

    ``location / "name"`` joins; ``str()`` gives the path or the URI as Ray and MLflow take
    it; it compares equal to a ``str`` or ``Path`` naming the same place. A local location
    is also ``os.PathLike``.
    """

    __slots__ = ("_text",)

    def __init__(self, value: "str | os.PathLike | Location"):
        text = value._text if isinstance(value, Location) else os.fspath(value)
        if is_uri(text):
            self._text = text.rstrip("/")
        else:
            self._text = str(Path(text).expanduser().absolute())

    @property
    def is_local(self) -> bool:
        return not is_uri(self._text)

    @property
    def path(self) -> Path:
        """The local directory; a ValueError for a URI (say what to do instead at the caller)."""
        if not self.is_local:
            raise ValueError(f"{self._text} is not a local path")
        return Path(self._text)

    @property
    def name(self) -> str:
        return self._text.rsplit("/", 1)[-1]

    def __truediv__(self, name: str) -> "Location":
        return Location(f"{self._text}/{name}" if not self.is_local else self.path / name)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"Location({self._text!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Location, str, os.PathLike)):
            return self._text == Location(other)._text
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._text)

    def __reduce__(self):
        return (Location, (self._text,))

    def as_uri(self) -> str:
        """A URI for stores that want one (MLflow's artifact location): ``file://`` when local."""
        return self.path.resolve().as_uri() if self.is_local else self._text

    # ----------------------------------------------------------- file access
    def filesystem(self):
        """``(pyarrow FileSystem, path inside it)``; resolving a remote one may reach the network."""
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(self._text)

    def is_file(self) -> bool:
        import pyarrow.fs

        fs, path = self.filesystem()
        return fs.get_file_info(path).type == pyarrow.fs.FileType.File

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Create the directory (and its parents); object stores have nothing to create."""
        fs, path = self.filesystem()
        fs.create_dir(path, recursive=parents)

    def read_bytes(self) -> bytes:
        fs, path = self.filesystem()
        with fs.open_input_stream(path) as stream:
            return stream.read()

    def write_bytes(self, data: bytes) -> None:
        """Write the file, creating its directory."""
        fs, path = self.filesystem()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(data)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())
