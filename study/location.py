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


def is_uri(value: str | os.PathLike) -> bool:
    """A location with a scheme (s3://, sqlite:///, http://) rather than a local path."""
    return _SCHEME.match(str(value)) is not None


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
