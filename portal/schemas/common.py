"""Shapes shared by many routes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError

from portal.services import dates, names

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=200, description="Items per page.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


def _shown(text: str) -> str:
    text = names.tidy(text)
    why = names.why_refused(text)
    if why is not None:
        raise PydanticCustomError("invalid_characters", why)
    return text


def _named(text: str) -> str:
    if not text:
        raise PydanticCustomError("blank", "must not be blank")
    return text


# Text an agent or a person sends that others see: NFC, stripped, no control, bidirectional or invisible
# formatting characters. Put it after the field's length constraints: Annotated[str, Field(...), ShownText].
ShownText = AfterValidator(_shown)
# What people name devices, clusters, keys: 1 to 80 characters once tidied.
DisplayName = Annotated[str, Field(min_length=1, max_length=80), ShownText, AfterValidator(_named)]


def _in_range(moment: datetime) -> datetime:
    # A time without an offset is UTC, as every time of the API is (API.md).
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    if not dates.EARLIEST <= moment < dates.LATEST:
        raise PydanticCustomError("out_of_range", dates.OUT_OF_RANGE)
    return moment.astimezone(UTC)


# A moment someone asks about (since, until): ISO 8601, between 1970 and 2100, handed on in UTC.
Moment = Annotated[datetime, AfterValidator(_in_range)]
