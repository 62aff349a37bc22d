"""What a search request may say, typed: `SearchFields` (the query string of GET /api/search,
or the form fields of a multipart upload) and `JsonSearch` (a JSON body, which adds weighted
`add`/`sub` terms).

Values arrive as text (a URL, a form) or as JSON values; each field's validator takes either
and gives the field's type, or raises a `UsageError` naming the field and the value (pydantic
lets a validator's non-ValueError exception through, so each message is the one written here,
and the route answers 400 with it). Nothing here opens a path: `in` is compared with stored
paths, and terms name words or item ids, never image files.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from starlette.requests import Request

from retriever.errors import UsageError
from retriever.media.paths import key_path
from retriever.search.query import (
    DEFAULT_MATCH,
    MATCHES,
    Query,
    Term,
    parse_date,
    resolve_target,
)

UNIX_TIME = re.compile(r"-?[0-9]+(\.[0-9]*)?")  # after/before: else a date, as the CLI takes
WHOLE = re.compile(r"-?[0-9]{1,18}")  # a whole number as text, in SQLite's 64-bit range


class TermFields(BaseModel):
    """One `add`/`sub` term: {"text": "sunset", "weight": 0.5} or {"item": 12}."""

    model_config = ConfigDict(frozen=True)
    weight: float = 1.0
    text: str | None = None
    item: int | None = None


class SearchFields(BaseModel):
    """A search by words, by an indexed item (or by the uploaded image beside these fields),
    with filters. `SearchFields.parse(values, max_k)` reads one from request values."""

    model_config = ConfigDict(frozen=True)
    # the names a request may use, in the order a refusal lists them
    ALLOWED: ClassVar[tuple[str, ...]] = (
        "text", "item", "target", "k", "in", "after", "before", "min_score", "tag",
        "video_frames", "match")

    # k first: the first refusal names a bad k before any other field
    k: int = Field(10, validate_default=True)
    text: str | None = None
    item: int | None = None
    target: str = Field("", validate_default=True)  # "images", "texts", "all", ...
    folder: str | None = Field(None, alias="in")  # a folder key (retriever.media.paths)
    after: float | None = None  # Unix seconds
    before: float | None = None
    min_score: float | None = None
    tag: str | None = None
    video_frames: bool = False
    match: str = DEFAULT_MATCH  # "hybrid", "semantic" or "keyword" (Query.match)

    @classmethod
    def parse(cls, values: Mapping[str, Any], max_k: int) -> SearchFields:
        """Typed fields from request values; a `UsageError` names the first bad one."""
        try:
            return cls.model_validate(dict(values), context={"max_k": max_k})
        except ValidationError as error:  # a value no validator below took: one line still
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise UsageError(f"{where}: {first['msg']}") from None

    def query(self, image: Path | None = None) -> Query:
        """The library's Query for these fields, searching by `image` if given."""
        return Query(
            text=self.text, image=image, item=self.item, target=self.target, k=self.k,
            path_prefix=self.folder, add=self._terms("add"), sub=self._terms("sub"),
            after=self.after, before=self.before, min_score=self.min_score, tag=self.tag,
            video_frames=self.video_frames, match=self.match)

    def _terms(self, name: str) -> tuple[Term, ...]:
        terms: tuple[TermFields, ...] = getattr(self, name, ())
        return tuple(Term(t.weight, t.text, item=t.item) for t in terms)

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, values: Any) -> Any:
        unknown = sorted(set(values) - set(cls.ALLOWED))
        if unknown:
            raise UsageError(f"unknown parameter {unknown[0]!r}: use {', '.join(cls.ALLOWED)}")
        return values

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, value: Any, info: ValidationInfo) -> int:
        k = whole_number(value, "k")
        max_k = (info.context or {}).get("max_k")
        if max_k is not None and k > max_k:
            raise UsageError(f"k must be at most {max_k}, not {k}")
        return k

    @field_validator("text", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str | None:
        return text(value)

    @field_validator("item", mode="before")
    @classmethod
    def _item(cls, value: Any) -> int | None:
        return None if value in (None, "") else whole_number(value, "item")

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: Any) -> str:
        return resolve_target(str(value or "") or None)

    @field_validator("folder", mode="before")
    @classmethod
    def _folder(cls, value: Any) -> str | None:
        return folder(value)

    @field_validator("after", "before", mode="before")
    @classmethod
    def _time(cls, value: Any, info: ValidationInfo) -> float | None:
        """Unix seconds, or a date as the CLI takes it (YYYY-MM-DD, ISO date-time; local)."""
        name = str(info.field_name)
        if isinstance(value, str) and value.strip() and not UNIX_TIME.fullmatch(value.strip()):
            return parse_date(value.strip(), name)
        return optional_number(value, name)

    @field_validator("min_score", mode="before")
    @classmethod
    def _min_score(cls, value: Any) -> float | None:
        return optional_number(value, "min_score")

    @field_validator("tag", mode="before")
    @classmethod
    def _tag(cls, value: Any) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise UsageError(f"tag must be a label (text), not {value!r}")
        return value

    @field_validator("match", mode="before")
    @classmethod
    def _match(cls, value: Any) -> str:
        if value in (None, ""):
            return DEFAULT_MATCH
        if not isinstance(value, str) or value not in MATCHES:
            raise UsageError(f"match must be one of {', '.join(MATCHES)}, not {value!r}")
        return value

    @field_validator("video_frames", mode="before")
    @classmethod
    def _video_frames(cls, value: Any) -> bool:
        return str(value).lower() in ("1", "true")


class JsonSearch(SearchFields):
    """A JSON body's search: the fields above, and weighted terms added or subtracted."""

    ALLOWED: ClassVar[tuple[str, ...]] = (*SearchFields.ALLOWED, "add", "sub")
    add: tuple[TermFields, ...] = ()
    sub: tuple[TermFields, ...] = ()

    @field_validator("add", "sub", mode="before")
    @classmethod
    def _terms_of(cls, value: Any, info: ValidationInfo) -> tuple[TermFields, ...]:
        return terms(value, str(info.field_name))


async def json_object(request: Request, what: str = "search parameters") -> dict:
    """The request's body, which must be a JSON object (of `what`, as refusals say)."""
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"the request body is not valid JSON: {error}") from None
    except RecursionError:  # [[[[...]]]] nested deeper than the parser recurses
        raise UsageError(f"the request body nests too deeply: send a flat JSON object of "
                         f"{what}") from None
    if not isinstance(body, dict):
        raise UsageError(f"the request body must be a JSON object of {what}")
    return body


def text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise UsageError(f"text must be a string, not {value!r}")


def whole_number(value: Any, name: str) -> int:
    """An int from a JSON number or a string of digits; SQLite's 64-bit range."""
    if isinstance(value, str) and WHOLE.fullmatch(value.strip()):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
        return value
    raise UsageError(f"{name} must be a whole number, not {value!r}")


def optional_number(value: Any, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise UsageError(f"{name} must be a number, not {value!r}")
    return number


def folder(value: Any, name: str = "in") -> str | None:
    """The `in` filter (`name`: what the caller calls it): a folder (or file) as result paths
    show it (a key, retriever.media.paths), as the path `Query` takes. It is compared with
    stored paths in SQL, never opened; a relative one would mean the server's cwd."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not os.path.isabs(value):
        raise UsageError(f"{name} must be an absolute folder as result paths show it, not "
                         f"{value!r}")
    if ".." in PurePosixPath(value).parts:
        raise UsageError(f"{name} must not contain '..': pass the folder itself, not {value!r}")
    return str(key_path(value))


def terms(value: Any, name: str) -> tuple[TermFields, ...]:
    """`add`/`sub` terms: words or item ids. Never an image path: the server reads none."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise UsageError(f"{name} must be a list of objects like {{\"text\": \"sunset\", "
                         f"\"weight\": 0.5}} or {{\"item\": 12}}")
    for term in value:
        extra = sorted(set(term) - {"weight", "text", "item"})
        if extra:
            raise UsageError(f"{name} terms take weight, text or item, not {extra[0]!r}")
    return tuple(TermFields.model_construct(
        weight=_weight(t.get("weight")), text=text(t.get("text")),
        item=None if t.get("item") in (None, "") else whole_number(t["item"], "item"))
        for t in value)


def _weight(value: Any) -> float:
    weight = optional_number(value, "weight")
    return 1.0 if weight is None else weight
