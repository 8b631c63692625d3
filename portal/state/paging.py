"""What every admin table's state shares: the page shown of a list the database counted, and the step to
the newer or older page (``components.tables.pager`` draws it)."""

from __future__ import annotations

import reflex as rx

from portal.models import Role
from portal.state.session import for_users

PAGE_SIZE = 25


class PagedList(rx.State, mixin=True):
    """A list paged ``PAGE_SIZE`` rows at a time; the state using it fetches the page in ``_fetch``."""

    total: int = 0
    offset: int = 0

    async def _fetch(self) -> None:
        raise NotImplementedError

    @rx.var
    def shown(self) -> str:
        if not self.total:
            return ""
        return f"{self.offset + 1}-{min(self.offset + PAGE_SIZE, self.total)} of {self.total}"

    @rx.var
    def has_newer(self) -> bool:
        return self.offset > 0

    @rx.var
    def has_older(self) -> bool:
        return self.offset + PAGE_SIZE < self.total

    @rx.event
    @for_users(Role.ADMIN)
    async def page(self, step: int) -> None:
        self.offset = max(0, min(self.offset + step * PAGE_SIZE, max(self.total - 1, 0)))
        await self._fetch()
