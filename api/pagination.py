"""`page` (1-based) and `limit` (default 50, max 1000) for every list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query


@dataclass(frozen=True, slots=True)
class PageParams:
    page: int
    limit: int


def page_params(
    page: Annotated[int, Query(ge=1, description="1-based page number")] = 1,
    limit: Annotated[int, Query(ge=1, le=1000, description="items per page")] = 50,
) -> PageParams:
    return PageParams(page, limit)


PageDep = Annotated[PageParams, Depends(page_params)]
