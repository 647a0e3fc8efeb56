"""Dataset specs: a YAML file that maps any event log onto the data contract (DESIGN.md).

The spec is validated when it is loaded; every error names the file, the key and the fix,
so a user plugging in a new log never meets a stack trace from deep inside ingestion.
"""

from __future__ import annotations

import datetime as dt
import glob
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DATE_PLACEHOLDER = re.compile(r"\{date(?::([^}]+))?\}")


# Entity types the knowledge graph gives itself; an attribute of the same name would merge with them.
BUILT_IN_ENTITY_TYPES = ("user", "item", "keyword", "price_band")


class SpecError(ValueError):
    """A dataset spec that cannot be used, with a message that says where and how to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _named_column(value: str) -> str:
    if not value.strip():
        raise ValueError("the column name is empty: name the source column")
    return value


ColumnName = Annotated[str, AfterValidator(_named_column)]  # a source column: never empty


class ColumnRef(_Strict):
    """A source column holding an id or a value; `CustomerID` is shorthand for `{column: CustomerID}`."""

    column: ColumnName
    strip_float_suffix: bool = Field(
        False, description="Turn ids that were written as floats (17850.0) back into 17850."
    )
    lowercase: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"column": value} if isinstance(value, str) else value



# strptime directives DuckDB's strptime reads (%-d: without the leading zero)
STRPTIME_DIRECTIVE = re.compile(r"%(-?)(.)")
STRPTIME_CODES = set("aAwdbBmyYHIpMSfzZjUWcxXgGuVn%")


class TimestampSpec(_Strict):
    column: ColumnName
    format: str | None = Field(None, description="strptime format, e.g. '%Y-%m-%d %H:%M:%S'.")
    unit: Literal["s", "ms"] | None = Field(None, description="Epoch seconds or milliseconds.")

    @field_validator("format")
    @classmethod
    def _known_directives(cls, value: str | None) -> str | None:
        if value is None:
            return value
        unknown = sorted({f"%{dash}{code}" for dash, code in STRPTIME_DIRECTIVE.findall(value)
                          if code not in STRPTIME_CODES})
        if unknown:
            raise ValueError(f"unknown strptime directive(s) {', '.join(unknown)} in '{value}'; use e.g. "
                             "'%Y-%m-%d %H:%M:%S' (%Y year, %m month, %d day, %H hour, %M minute, %S second)")
        if not STRPTIME_DIRECTIVE.search(value):
            raise ValueError(f"'{value}' has no strptime directive; use e.g. '%Y-%m-%d %H:%M:%S'")
        return value

    @model_validator(mode="after")
    def _one_kind(self):
        if self.format and self.unit:
            raise ValueError("give either 'format' (text timestamps) or 'unit' (epoch numbers), not both")
        return self


class EventTypeRule(_Strict):
    """`value` is the event type of rows whose `column` meets the one condition given."""

    column: str
    value: str
    equals: str | None = None
    one_of: list[str] | None = None
    starts_with: str | None = None
    less_than: float | None = None
    greater_than: float | None = None

    @model_validator(mode="after")
    def _one_condition(self):
        given = [k for k in ("equals", "one_of", "starts_with", "less_than", "greater_than") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a rule needs exactly one condition of equals, one_of, starts_with, less_than, greater_than"
                f" (found {given or 'none'})"
            )
        return self


class EventTypeSpec(_Strict):
    """Either a constant, or a column with a value mapping, or ordered rules; `default` catches the rest."""

    constant: str | None = None
    column: str | None = None
    mapping: dict[str, str] | None = None
    rules: list[EventTypeRule] = []
    default: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"constant": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self):
        if self.constant is not None and (self.column or self.mapping or self.rules or self.default):
            raise ValueError("'constant' stands alone: remove column/mapping/rules/default or the constant")
        if self.constant is None and not (self.column or self.rules or self.default):
            raise ValueError("give 'constant', or 'column' with 'mapping', or 'rules' with a 'default'")
        if (self.column is None) != (self.mapping is None):
            raise ValueError("'column' and 'mapping' go together")
        return self

    def types(self) -> set[str]:
        found = {self.constant, self.default, *(self.mapping or {}).values(), *(r.value for r in self.rules)}
        return {t for t in found if t}


class SourceFile(_Strict):
    """Where rows come from and how they are written."""

    path: str = Field(description="File path: a '{date}' placeholder for one file per day, or a glob.")
    format: Literal["csv", "parquet", "jsonl"] = "csv"
    delimiter: str = ","
    header: bool = True
    columns: list[str] | None = Field(None, description="Column names in order, for files without a header.")
    encoding: str = "utf-8"

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str) -> str:
        value = "\t" if value in ("\\t", "tab") else value
        if len(value) != 1:
            raise ValueError("the delimiter is one character, e.g. ',' or '\\t' or '|'")
        return value

    @model_validator(mode="after")
    def _names_known(self):
        if self.format == "csv" and not self.header and not self.columns:
            raise ValueError("a CSV without a header needs 'columns: [name, ...]' in file order")
        return self


class AttributeSpec(_Strict):
    """One attribute: a plain column, a delimited multi-valued column, or a set of one-hot flag columns."""

    column: str | None = None
    delimiter: str | None = None
    one_hot: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"column": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self):
        if (self.column is None) == (self.one_hot is None):
            raise ValueError("give either 'column' (optionally with 'delimiter') or 'one_hot: [flag columns]'")
        if self.one_hot is not None and self.delimiter is not None:
            raise ValueError("'delimiter' applies to 'column', not to 'one_hot'")
        return self

    def source_columns(self) -> list[str]:
        return list(self.one_hot) if self.one_hot is not None else [str(self.column)]  # one of them is set


class EntitySpec(_Strict):
    """Item or user attributes: from a file joined by id, or (no `file`) from columns of the event rows."""

    file: SourceFile | None = None
    id: ColumnRef | None = Field(None, description="Id column of the attribute file.")
    title: str | None = None
    description: str | None = None
    price: str | None = None
    attributes: dict[str, AttributeSpec] = {}
    never_recommend: list[str] = Field([], description="Item ids that are not products (postage, fees, manual "
                                                       "adjustments): kept in the data and the evaluation, never served.")

    @model_validator(mode="after")
    def _file_needs_id(self):
        if self.file is not None and self.id is None:
            raise ValueError("an attribute 'file' needs 'id: <column>' to join it to the events")
        return self

    def source_columns(self) -> list[str]:
        cols = [c for c in (self.title, self.description, self.price) if c]
        for attribute in self.attributes.values():
            cols.extend(attribute.source_columns())
        return list(dict.fromkeys(cols))


class VerbsSpec(_Strict):
    """The words reasons use for the positive behaviour and the people who show it: "people who picked
    X picked it" by default, "shoppers who bought X bought it" for a shop, "viewers who rated X rated
    it" for a film ratings set."""

    positive: str = Field("picked", min_length=1, max_length=30,
                          description="The positive behaviour in the past tense, e.g. 'bought', 'rated', 'played'.")
    person: str = Field("people", min_length=1, max_length=30,
                        description="Who shows it, plural, e.g. 'shoppers', 'viewers', 'players'.")


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _closed_entry(value) -> str:
    """A weekday name, a date (YYYY-MM-DD) or an inclusive range of dates (YYYY-MM-DD..YYYY-MM-DD)."""
    text = str(value).strip()
    if text.lower() in WEEKDAYS:
        return text.lower()
    first, _, last = text.partition("..")
    try:
        start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last or first)
    except ValueError:
        raise ValueError(f"'{text}' is not a weekday (e.g. Saturday), a date (2010-12-24) or a range of dates "
                         "(2010-12-24..2011-01-03)") from None
    if start > end:
        raise ValueError(f"'{text}': the range ends before it starts")
    return text


class EventsSpec(SourceFile):
    start_date: dt.date = Field(description="First partition date (YYYY-MM-DD).")
    end_date: dt.date | None = Field(None, description="Last partition date, for a log that has ended.")
    user_id: ColumnRef
    item_id: ColumnRef
    timestamp: TimestampSpec
    event_type: EventTypeSpec
    positive_event_type: str = Field(description="The target behaviour, e.g. 'purchase'.")
    value: ColumnRef | None = None
    session_id: ColumnRef | None = None
    price: ColumnRef | None = None
    context: list[str] = Field([], description="Extra columns kept with each event.")
    verbs: VerbsSpec = Field(VerbsSpec(), description="The words of the recommendations' reasons.")
    closed: list[Annotated[str, BeforeValidator(_closed_entry)]] = Field(
        [], description="Days without a file on purpose (weekdays, dates, date ranges 'first..last'): "
                        "their missing file is normal, any other day's is reported by the files_arrived check.")

    @model_validator(mode="after")
    def _dates_and_types(self):
        if self.end_date and self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        if self.positive_event_type not in self.event_type.types():
            raise ValueError(
                f"positive_event_type '{self.positive_event_type}' is not one of the event types the spec"
                f" produces: {sorted(self.event_type.types())}"
            )
        return self


    def is_closed(self, day: dt.date) -> bool:
        """Whether the shop declares `day` closed: no file is expected for it."""
        for entry in self.closed:
            if entry in WEEKDAYS:
                if WEEKDAYS[day.weekday()] == entry:
                    return True
                continue
            first, _, last = entry.partition("..")
            if dt.date.fromisoformat(first) <= day <= dt.date.fromisoformat(last or first):
                return True
        return False


SPEC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def last_complete_week(day: dt.date) -> str:
    """The key (its Sunday) of the newest week, Sunday to Saturday, that ends on or before `day`:
    pretraining's weekly partition for the nights from that Saturday on."""
    saturday = day - dt.timedelta(days=(day.weekday() - 5) % 7)
    return (saturday - dt.timedelta(days=6)).isoformat()


class DatasetSpec(_Strict):
    name: str = Field(description="Names the dataset's model folder: letters, digits, '.', '_', '-'.")
    description: str = ""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        # The name becomes a folder under the models directory: it may not climb out of it.
        if not SPEC_NAME.match(value) or ".." in value:
            raise ValueError(f"'{value}' is not a usable name: letters, digits, '.', '_' and '-' only, starting "
                             "with a letter or digit, no '..' (it names the dataset's model folder)")
        return value
    events: EventsSpec
    items: EntitySpec = EntitySpec()
    users: EntitySpec = EntitySpec()
    max_reject_rate: float = Field(0.5, ge=0, le=1, description="Asset check threshold on rejected lines.")
    max_volume_drop: float = Field(0.5, ge=0, le=1, description="A re-ingest that would keep less than "
                                   "(1 - max_volume_drop) of a stored day's events (a truncated file) is refused "
                                   "unless forced.")
    spec_dir: Path = Field(Path("."), exclude=True)

    @model_validator(mode="after")
    def _never_recommend_items_only(self):
        if self.users.never_recommend:
            raise ValueError("'never_recommend' lists item ids: put it under 'items', not 'users'")
        return self

    @model_validator(mode="after")
    def _attribute_names_are_not_entity_types(self):
        # An attribute's name becomes the entity type of its values in the knowledge graph.
        for kind in ("items", "users"):
            for name in getattr(self, kind).attributes:
                if name in BUILT_IN_ENTITY_TYPES:
                    raise ValueError(f"attribute '{kind}.attributes.{name}': '{name}' is a built-in entity type "
                                     f"({', '.join(BUILT_IN_ENTITY_TYPES)}); rename the attribute, e.g. "
                                     f"'{name}_{'group' if name in ('item', 'user') else 'value'}'")
        return self

    # -- paths -------------------------------------------------------------------------------
    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return (p if p.is_absolute() else self.spec_dir / p).resolve()

    @property
    def is_daily_layout(self) -> bool:
        """True when the events path has a {date} placeholder: one file per day."""
        return bool(DATE_PLACEHOLDER.search(self.events.path))

    def events_file_for(self, day: dt.date) -> Path:
        path = DATE_PLACEHOLDER.sub(lambda m: day.strftime(m.group(1) or "%Y-%m-%d"), self.events.path)
        return self.resolve(path)

    def events_glob(self) -> str:
        """The events path as a glob: a daily layout's date placeholder matches any date."""
        return str(self.resolve(DATE_PLACEHOLDER.sub("*", self.events.path)))

    def events_files(self) -> list[Path]:
        """Every file the events path matches (any date of a daily layout), sorted."""
        return sorted(Path(p) for p in glob.glob(self.events_glob()))

    # -- columns ------------------------------------------------------------------------------
    def event_source_columns(self) -> list[str]:
        """Every column of the event rows the spec reads, in a stable order."""
        e = self.events
        cols = [e.user_id.column, e.item_id.column, e.timestamp.column]
        cols += [c.column for c in (e.value, e.session_id, e.price) if c is not None]
        if e.event_type.column:
            cols.append(e.event_type.column)
        cols += [r.column for r in e.event_type.rules]
        cols += self.context_columns()
        return list(dict.fromkeys(cols))

    def context_columns(self) -> list[str]:
        """Columns kept in raw.events.context: declared context plus attributes read from events."""
        cols = list(self.events.context)
        for entity in (self.items, self.users):
            if entity.file is None:
                cols += entity.source_columns()
        return list(dict.fromkeys(cols))


def _format_error(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid dataset spec"]
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            msg = "required key is missing: add it"
        elif e["type"] == "extra_forbidden":
            msg = "unknown key: remove it or check its spelling"
        lines.append(f"  key '{key}': {msg}")
    return "\n".join(lines)


def load_spec(path: str | Path) -> DatasetSpec:
    """Load and validate a dataset spec; raises SpecError naming the file, the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: dataset spec not found. Set UNIREC_DATASET to an existing YAML spec.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a dataset spec is a YAML mapping with keys name, events, items, users")
    try:
        spec = DatasetSpec.model_validate({**raw, "spec_dir": path.resolve().parent})
    except ValidationError as exc:
        raise SpecError(_format_error(path, exc)) from None
    _check_patterns(path, spec)
    return spec


def _check_patterns(path: Path, spec: DatasetSpec) -> None:
    if spec.events.format != "csv" and (not spec.events.header or spec.events.columns):
        raise SpecError(f"{path}: key 'events.header'/'events.columns' apply to CSV files only: remove them")
    for match in DATE_PLACEHOLDER.finditer(spec.events.path):
        fmt = match.group(1) or "%Y-%m-%d"
        if "%d" not in fmt and "%j" not in fmt:
            raise SpecError(f"{path}: key 'events.path': the date format '{fmt}' has no day (%d): one file per day needs one")
