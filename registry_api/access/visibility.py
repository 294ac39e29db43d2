"""Who may see which access rows: the one rule for requests (lists, single reads, the inbox)
and grants (lists, single reads), as the requester's department or as the owner side."""

from __future__ import annotations

from collections.abc import Sequence

from registry_api.access.models import AccessRequest, AccessRequestFeed, Grant
from registry_api.errors import Forbidden
from registry_api.identity.principal import Principal
from schemas.identity import Role


def reads_owner_side(principal: Principal, owner_department: str | None) -> bool:
    """Who may read the owner side of access (the requests for a department's feeds, the
    grants others hold on them, with requesters' names and emergency flags): the owner
    department's dept_admin or auditor, and the city admin. The one rule for the inbox, the
    owner's grant list and every single request and grant read as the owner."""
    return principal.is_city_admin or (
        owner_department is not None
        and principal.department == owner_department
        and principal.has_any(Role.dept_admin, Role.auditor)
    )


def require_owner_side(principal: Principal, what: str) -> None:
    if reads_owner_side(principal, principal.department):
        return
    raise Forbidden(f"{what} needs dept_admin or auditor", code="role_required")


def visible_items(
    principal: Principal, request: AccessRequest, items: Sequence[AccessRequestFeed]
) -> list[AccessRequestFeed] | None:
    """What of a request the caller may see: all of it as its department, the owner's own feeds
    as an owner's admin or auditor; None when nothing."""
    if principal.is_city_admin or principal.department == request.requester_department:
        return list(items)
    own = [item for item in items if reads_owner_side(principal, item.owner_department)]
    return own or None


def may_see_grant(principal: Principal, grant: Grant) -> bool:
    return principal.department == grant.requester_department or reads_owner_side(
        principal, grant.owner_department
    )
