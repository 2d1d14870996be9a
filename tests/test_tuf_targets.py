"""Target names and custom data shared by the repository and the client (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kioskfleet.protocol.stations import SITE_TYPES
from kioskfleet.updates.targets import CUSTOM_KEY, ReleaseTarget, TargetError, role_for

versions = st.from_regex(r"[0-9A-Za-z][0-9A-Za-z.+_~-]{0,20}", fullmatch=True)
counters = st.integers(min_value=1, max_value=10**18 - 1)
releases = st.one_of(
    st.builds(ReleaseTarget, st.just("software"), versions, counters),
    st.builds(ReleaseTarget, st.just("catalogue"), versions, counters, st.sampled_from(SITE_TYPES)),
)


@given(releases)
def test_name_and_custom_data_round_trip(release: ReleaseTarget) -> None:
    assert ReleaseTarget.from_name(release.name) == release
    assert ReleaseTarget.from_target(release.name, release.custom()) == release
    assert role_for(release.name) == release.kind
    assert release.name.startswith(f"{release.kind}/")
    assert release.name.count("/") == 1  # the role's pattern `kind/*` matches one level


@given(st.text(max_size=80))
def test_any_text_is_a_name_or_a_clear_error(text: str) -> None:
    try:
        release = ReleaseTarget.from_name(text)
    except TargetError as err:
        message = str(err)
    else:
        message = ""
        assert release.name == text
    assert message in ("", f"{text!r} is not a kioskfleet target name")


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=5), c),
        max_leaves=8,
    )
)
def test_any_custom_data_is_accepted_only_when_it_matches(custom: Any) -> None:
    name = ReleaseTarget("software", "1.0", 3).name
    with pytest.raises(TargetError):
        ReleaseTarget.from_target(name, custom)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("firmware", "1.0", 1), "kind must be one of software, catalogue"),
        (("software", "", 1), "version '' must be"),
        (("software", "1/2", 1), "version '1/2' must be"),
        (("software", "-1", 1), "version '-1' must be"),
        (("software", "1.0", 0), "release counter must be a positive integer, not 0"),
        (("software", "1.0", True), "release counter must be a positive integer, not True"),
        (("software", "1.0", "3"), "release counter must be a positive integer, not '3'"),
        (("software", "1.0-r2", 3), None),
        (("software", "1.0", 1, "subway_station"), "software has no site type"),
        (("catalogue", "1.0", 1), "a catalogue needs a site type"),
        (("catalogue", "1.0", 1, "airport"), "not 'airport'"),
    ],
)
def test_bad_releases_are_refused_with_the_reason(
    args: tuple[Any, ...], message: str | None
) -> None:
    if message is None:  # a version that looks like a counter still round-trips
        release = ReleaseTarget(*args)
        assert ReleaseTarget.from_name(release.name) == release
        return
    with pytest.raises(TargetError, match=message):
        ReleaseTarget(*args)


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        ({}, "custom data has no 'kioskfleet' object"),
        ({CUSTOM_KEY: {"kind": "software", "version": "1.0"}}, "lacks 'release_counter'"),
        (
            {CUSTOM_KEY: {"kind": "software", "version": "1.0", "release_counter": 4}},
            "does not match the name",
        ),
        (
            {CUSTOM_KEY: {"kind": "software", "version": "1.0", "release_counter": "3"}},
            "release counter must be a positive integer",
        ),
    ],
)
def test_custom_data_must_agree_with_the_name(custom: Any, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        ReleaseTarget.from_target("software/kioskfleet-1.0-r3.tar.gz", custom)


def test_names_are_what_the_roles_patterns_expect() -> None:
    assert ReleaseTarget("software", "1.4.2", 7).name == "software/kioskfleet-1.4.2-r7.tar.gz"
    cat = ReleaseTarget("catalogue", "2026.11", 3, "bank_agent_branch")
    assert cat.name == "catalogue/bank_agent_branch-2026.11-r3.json"
