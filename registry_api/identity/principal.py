"""Who is calling: the identity every route receives, already checked."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.identity import Role


@dataclass(frozen=True)
class Principal:
    subject: str
    department: str | None
    roles: frozenset[Role] = field(default_factory=frozenset)

    @property
    def is_city_admin(self) -> bool:
        return Role.city_admin in self.roles

    def has_any(self, *roles: Role) -> bool:
        return self.is_city_admin or bool(self.roles.intersection(roles))

    def administers(self, department_code: str) -> bool:
        return self.is_city_admin or (
            Role.dept_admin in self.roles and self.department == department_code
        )
