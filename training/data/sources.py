"""The per-platform source mapping file (TOML): which files hold what, under which column names."""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Format = Literal["csv", "jsonl", "parquet"]
_SUFFIX_FORMATS: dict[str, Format] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class SourceError(Exception):
    """The mapping file or a file it names is unusable (not a bad row: those are `DataError`)."""


class Delimited(str):
    """The format "csv" with its delimiter: equal to (and hashing as) "csv" wherever a format is compared, so
    it goes wherever a `Format` goes; the CSV reader takes its `delimiter`. A source with a `delimiter` key
    carries one as its `format`, and `detect_format` returns one for a `.tsv` file."""

    delimiter: str

    def __new__(cls, delimiter: str) -> Delimited:
        obj = super().__new__(cls, "csv")
        obj.delimiter = delimiter
        return obj

    def __repr__(self) -> str:
        return f"Delimited({self.delimiter!r})"


def _last_suffix(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else None


def detect_format(path: Path, declared: Format | None = None) -> Format:
    """The declared format, else the one the file name says (a trailing `.gz` is looked through).

    A `.tsv` name means CSV delimited by tabs, also under a declared `format = "csv"`; a declared delimiter
    (a `Delimited` format) wins over the name.
    """
    suffix = _last_suffix(path)
    if suffix == ".tsv" and declared in (None, "csv") and not isinstance(declared, Delimited):
        return Delimited("\t")  # type: ignore[return-value]
    if declared:
        return declared
    if suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffix]
    raise SourceError(f"{path}: cannot tell the format from the name; set format = csv|jsonl|parquet")


def _check_delimiter(v: str | None) -> str | None:
    if v is None:
        return v
    if len(v) != 1:
        raise ValueError(f"delimiter must be exactly one character, got {v!r}")
    if v in "\"\r\n":
        raise ValueError(f"delimiter cannot be {v!r} (a quote or line-break character)")
    return v


# For CSV-like files: one character other than a quote or a line break, e.g. ";" or "\t".
Delimiter = Annotated[str | None, AfterValidator(_check_delimiter)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _FileSource(_Strict):
    """A source read by the row readers: its `delimiter`, if set, travels in `format` (see `Delimited`)."""

    @model_validator(mode="after")
    def _delimiter_into_format(self) -> _FileSource:
        delimiter = getattr(self, "delimiter", None)
        fmt = getattr(self, "format", None)
        if delimiter is not None:
            if fmt not in (None, "csv"):
                raise ValueError(f"delimiter is for CSV-like files, not format = {fmt!r}")
            self.format = Delimited(delimiter)  # type: ignore[assignment]
        return self


# Names an attribute column cannot take: the dataset's own item columns, and the bundle's packed attributes.
RESERVED_ATTRIBUTES = frozenset({"item_id", "platform", "title", "attributes"})


class CatalogSource(_FileSource):
    file: str
    format: Format | None = None
    delimiter: Delimiter = None
    id: str = Field(description="column holding the item id")
    text: str = Field(description="column holding the item text (title)")
    attributes: list[str] = Field(default_factory=list, description="extra catalog columns carried into the "
                                  "dataset's items as strings (e.g. brand, category_path)")

    @field_validator("attributes", mode="before")
    @classmethod
    def _one_or_many_attributes(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("attributes")
    @classmethod
    def _attribute_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.strip():
                raise ValueError("an attribute column name is blank")
            if name in RESERVED_ATTRIBUTES:
                raise ValueError(f"attribute column {name!r} clashes with a dataset column "
                                 f"({', '.join(sorted(RESERVED_ATTRIBUTES))})")
        if len(set(v)) != len(v):
            raise ValueError(f"attribute columns repeat: {v}")
        return v


class PlatformSource(_FileSource):
    events: list[str] = Field(description="event files, globs relative to the data root")
    format: Format | None = None
    delimiter: Delimiter = None
    account: str
    item: str
    timestamp: str
    # "iso" (ISO-8601; naive times are UTC), "epoch_s", "epoch_ms", or a strptime pattern.
    timestamp_format: str = "iso"
    event: str | None = Field(default=None, description="column holding the event type, if any")
    default_event: str = "interaction"
    catalog: CatalogSource

    @field_validator("events", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


class IdentitySource(_FileSource):
    file: str
    format: Format | None = None
    delimiter: Delimiter = None
    person: str = "person_id"
    platform: str = "platform"
    account: str = "account_id"


class EvalSource(_FileSource):
    """Held-out next-item targets, one file per split (e.g. valid, test)."""

    splits: dict[str, str]
    format: Format | None = None
    delimiter: Delimiter = None
    platform: str = "platform"
    account: str = "account_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    timestamp_format: str = "iso"


class SourceConfig(_Strict):
    name: str
    data_root: str | None = Field(default=None, description="relative to this file; else the setting")
    platforms: dict[str, PlatformSource]
    identity: IdentitySource | None = None
    eval: EvalSource | None = None

    # Filled by load_sources(): where relative paths are resolved from.
    root: Path = Path(".")

    def resolve(self, pattern: str, what: str) -> list[Path]:
        """Files matching a glob under the data root, sorted; an error naming the pattern if none do."""
        full = self.root / pattern
        matches = sorted(Path(p) for p in glob.glob(str(full)))
        if not matches:
            raise SourceError(f"{what}: no file matches {full}")
        return matches


def load_sources(path: Path, data_root: Path | None = None, default_root: Path | None = None) -> SourceConfig:
    """Read and validate a mapping file.

    The data root is, in order: `data_root` (a CLI flag), the file's own `data_root` key (relative to the
    file), `default_root` (the XREC_DATA_ROOT setting).
    """
    if not path.is_file():
        raise SourceError(f"mapping file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SourceError(f"{path}: not valid TOML: {e}") from e
    try:
        cfg = SourceConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{path}: invalid mapping file:"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise SourceError("\n".join(lines)) from e
    if not cfg.platforms:
        raise SourceError(f"{path}: no [platforms.*] section")
    if data_root is not None:
        root = data_root
    elif cfg.data_root is not None:
        root = path.parent / cfg.data_root
    elif default_root is not None:
        root = default_root
    else:
        root = path.parent
    if not root.is_dir():
        raise SourceError(f"data root not found: {root} (set --data-root or XREC_DATA_ROOT)")
    cfg.root = root
    return cfg
