"""Identity fusion: link one person's accounts across platforms and merge their events into one timeline.

Raw account ids stop here: everything written downstream names accounts and persons by keyed hashes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The hashing lives in contract.ids: the service must compute the very same keys from raw request ids.
from contract.ids import account_key, linked_person_key, unlinked_person_key

__all__ = ["IdentityMap", "LinkConflict", "account_key", "fuse_history"]


class LinkConflict(ValueError):
    pass


@dataclass
class IdentityMap:
    """(platform, raw account) → person id. Linked accounts share their link-table person; any other
    account is a person of its own."""

    salt: str
    links: dict[tuple[str, str], str]

    @classmethod
    def from_links(cls, salt: str, rows: Iterable[tuple[str, str, str]]) -> IdentityMap:
        """rows: (person, platform, account) from the link table."""
        links: dict[tuple[str, str], str] = {}
        for person, platform, account in rows:
            key = (platform, account)
            if links.get(key, person) != person:
                raise LinkConflict(f"account {platform}:{account} is linked to two persons")
            links[key] = person
        return cls(salt, links)

    def person(self, platform: str, account: str) -> str:
        linked = self.links.get((platform, account))
        if linked is not None:
            return linked_person_key(self.salt, linked)
        return unlinked_person_key(self.salt, platform, account)

    def linked_people(self) -> int:
        """Persons whose linked accounts span more than one platform."""
        platforms: dict[str, set[str]] = {}
        for (platform, _), person in self.links.items():
            platforms.setdefault(person, set()).add(platform)
        return sum(1 for p in platforms.values() if len(p) > 1)


def fuse_history(events: list[tuple[str, str, str, int, str]]) -> list[tuple[str, str, str, int, str]]:
    """Order (person, platform, item_id, ts, event) rows into one timeline per person.

    Sorted by person, then time; equal times keep their input order (a platform's own log order).
    """
    return sorted(events, key=lambda e: (e[0], e[3]))
