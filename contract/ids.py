"""Pseudonymous ids, computed the same way by the data build (offline) and the service (online).

Raw account ids are turned into keyed hashes here and nowhere else: the service gets a raw `account_id`
over HTTP and must land on the same key the build wrote into accounts.parquet, so both import this module.
"""

from __future__ import annotations

import hashlib
import hmac

_HASH_CHARS = 20  # 80 bits: collisions are negligible at any realistic number of accounts


def pseudonymise(salt: str, *parts: str) -> str:
    """A stable keyed hash of the parts; without the salt it cannot be reversed by enumeration."""
    msg = "\x1f".join(parts).encode("utf-8")
    return hmac.new(salt.encode("utf-8"), msg, hashlib.sha256).hexdigest()[:_HASH_CHARS]


def account_key(salt: str, platform: str, account: str) -> str:
    """The pseudonymous id of one account on one platform (what the service computes from a request)."""
    return "a_" + pseudonymise(salt, "account", platform, account)


def linked_person_key(salt: str, person: str) -> str:
    """The person id of an account the identity-link table ties to `person` (the table's own id)."""
    return "p_" + pseudonymise(salt, "person", person)


def unlinked_person_key(salt: str, platform: str, account: str) -> str:
    """The person id of an account with no identity link: the build gives such an account a person of
    its own with exactly this formula (`training.data.fuse.IdentityMap.person`), so an account the bundle
    has never seen gets the id its events will have after the next build."""
    return "p_" + pseudonymise(salt, "person", platform, account)
