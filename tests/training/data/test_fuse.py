import pytest

from contract.ids import pseudonymise
from training.data.fuse import IdentityMap, LinkConflict, account_key, fuse_history


def test_linked_accounts_share_a_person_and_unlinked_are_their_own():
    ids = IdentityMap.from_links("s", [("P1", "shop", "a1"), ("P1", "video", "v9"), ("P2", "shop", "a2")])
    assert ids.person("shop", "a1") == ids.person("video", "v9")
    assert ids.person("shop", "a1") != ids.person("shop", "a2")
    # An unlinked account is its own person, and the same raw id on two platforms is two people.
    assert ids.person("video", "a3") != ids.person("shop", "a3")
    assert ids.linked_people() == 1


def test_pseudonyms_hide_raw_ids_and_depend_on_the_salt():
    ids_a = IdentityMap.from_links("salt-a", [("P1", "shop", "a1")])
    ids_b = IdentityMap.from_links("salt-b", [("P1", "shop", "a1")])
    pa, pb = ids_a.person("shop", "a1"), ids_b.person("shop", "a1")
    assert pa != pb and "P1" not in pa and "a1" not in pa
    assert account_key("s", "shop", "a1") == account_key("s", "shop", "a1") != account_key("s", "video", "a1")
    assert pseudonymise("s", "ab", "c") != pseudonymise("s", "a", "bc")


def test_an_account_linked_to_two_persons_is_an_error():
    with pytest.raises(LinkConflict):
        IdentityMap.from_links("s", [("P1", "shop", "a1"), ("P2", "shop", "a1")])


def test_fuse_history_orders_each_person_by_time_keeping_ties_in_input_order():
    rows = [("p2", "shop", "x", 5, "e"), ("p1", "video", "y", 9, "e"), ("p1", "shop", "z", 3, "e"),
            ("p1", "shop", "w", 9, "e")]
    assert [r[2] for r in fuse_history(rows)] == ["z", "y", "w", "x"]
