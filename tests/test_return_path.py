"""VERP return paths (relay.return_path): short, signed, case-insensitive, no address inside."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.intake import new_message_id
from relay.return_path import ReturnPathClaim, ReturnPaths

DOMAIN = "bounces.example.com"


def test_round_trip_fits_a_local_part_and_survives_case_folding() -> None:
    paths = ReturnPaths([b"secret"])
    mid = new_message_id()
    for index in (0, 1, 127, 128, 49, (1 << 21) - 1):
        address = paths.address(ReturnPathClaim(mid, index), DOMAIN)
        assert address is not None
        local = address.split("@")[0]
        assert len(local) <= 64  # RFC 5321 §4.5.3.1.1
        assert local.startswith("b-") and local == local.lower()
        assert paths.verify(address, [DOMAIN]) == ReturnPathClaim(mid, index)
        assert paths.verify(address.upper().replace("@BOUNCES.EXAMPLE.COM", "@Bounces.Example.com"),
                            [DOMAIN]) == ReturnPathClaim(mid, index)
        assert paths.verify(f"<{address}>", [DOMAIN]) == ReturnPathClaim(mid, index)


def test_no_personal_data_and_per_recipient() -> None:
    paths = ReturnPaths([b"secret"])
    mid = new_message_id()
    a, b = (paths.address(ReturnPathClaim(mid, i), DOMAIN) for i in (0, 1))
    assert a != b


def test_forged_damaged_and_foreign_addresses_are_refused() -> None:
    paths = ReturnPaths([b"secret"])
    address = paths.address(ReturnPathClaim(new_message_id(), 3), DOMAIN)
    assert address is not None
    local = address.split("@")[0]
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    assert paths.verify(f"{flipped}@{DOMAIN}", [DOMAIN]) is None  # one character changed
    assert paths.verify(address, ["other.example.com"]) is None  # not our domain
    assert ReturnPaths([b"another"]).verify(address, [DOMAIN]) is None  # another relay's key
    for junk in ("", "@", f"b-@{DOMAIN}", f"b-!!!@{DOMAIN}", f"x-{local[2:]}@{DOMAIN}", f"b-{'a' * 70}@{DOMAIN}",
                 f"{local[:20]}@{DOMAIN}", "no-at-sign"):
        assert paths.verify(junk, [DOMAIN]) is None
    assert paths.is_return_path(f"anything@{DOMAIN.upper()}", [DOMAIN])
    assert not paths.is_return_path("anything@example.com", [DOMAIN])


def test_rotation_old_key_still_verifies() -> None:
    old = ReturnPaths([b"old"])
    address = old.address(ReturnPathClaim(new_message_id(), 0), DOMAIN)
    assert address is not None
    assert ReturnPaths([b"new", b"old"]).verify(address, [DOMAIN]) is not None


def test_foreign_message_ids_get_no_return_path() -> None:
    assert ReturnPaths([b"k"]).address(ReturnPathClaim("not-a-relay-id", 0), DOMAIN) is None


@given(st.text(max_size=120))
def test_verify_never_raises(text: str) -> None:
    assert ReturnPaths([b"k"]).verify(text + "@" + DOMAIN, [DOMAIN]) is None
