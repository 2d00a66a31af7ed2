"""The pure decision: roles, privileges, grants, Docker action mapping."""

from __future__ import annotations

import pytest

from portway.auth.privileges import (
    ACTIONS,
    Principal,
    Privilege,
    PrivilegeError,
    Role,
    allowed_actions,
    anonymous_principal,
    browsable,
    docker_grant,
    expand_roles,
    grant,
    make_principal,
    public_role,
)

TEAM_A_DEV = Role(
    "team-a-dev",
    privileges=(
        Privilege("team-a-hosted", frozenset({"browse", "read", "add"})),
        Privilege("team-a-group", frozenset({"browse", "read"})),
    ),
)
TEAM_A_LEAD = Role(
    "team-a-lead",
    privileges=(Privilege("team-a-*", frozenset({"edit", "delete"})),),
    roles=("team-a-dev",),
)
CATALOG = {r.name: r for r in (TEAM_A_DEV, TEAM_A_LEAD)}


def test_grant_is_an_intersection() -> None:
    dev = make_principal("alice", [TEAM_A_DEV])
    assert grant(dev, "team-a-hosted", {"read", "add", "delete"}) == {"read", "add"}
    assert grant(dev, "team-a-group", {"add"}) == frozenset()
    assert grant(dev, "team-b-hosted", {"read"}) == frozenset()
    assert grant(dev, "team-a-hosted", ()) == frozenset()


def test_patterns_match_whole_names_only() -> None:
    p = Privilege("team-a-*", frozenset({"read"}))
    assert p.matches("team-a-hosted")
    assert p.matches("team-a-")
    assert not p.matches("xteam-a-hosted")
    assert not p.matches("team-b-hosted")
    dot = Privilege("a.b", frozenset({"read"}))
    assert not dot.matches("axb")  # '.' is literal
    assert Privilege("*", frozenset({"read"})).matches("anything")


def test_nested_roles_expand_with_cycles_skipped() -> None:
    loop_a = Role("loop-a", roles=("loop-b",), privileges=(Privilege("x", frozenset({"read"})),))
    loop_b = Role("loop-b", roles=("loop-a", "missing"))
    roles = {r.name: r for r in (loop_a, loop_b, TEAM_A_DEV, TEAM_A_LEAD)}
    assert [r.name for r in expand_roles(["loop-a"], roles.get)] == ["loop-a", "loop-b"]
    lead = make_principal("bob", expand_roles(["team-a-lead"], roles.get))
    assert allowed_actions(lead, "team-a-hosted") == ACTIONS
    assert allowed_actions(lead, "team-a-group") == {"browse", "read", "edit", "delete"}
    assert allowed_actions(lead, "team-b-hosted") == frozenset()


def test_admin_role_makes_an_administrator() -> None:
    admin = make_principal("root", [Role("admin", admin=frozenset({"*"}))])
    assert admin.is_admin
    assert allowed_actions(admin, "whatever") == ACTIONS
    assert admin.has_admin("users")
    auditor = make_principal("eve", [Role("auditor", admin=frozenset({"audit"}))])
    assert not auditor.is_admin
    assert auditor.has_admin("audit") and not auditor.has_admin("users")
    assert allowed_actions(auditor, "team-a-hosted") == frozenset()


def test_anonymous_pull_switch_folds_into_anonymous_grants() -> None:
    anon = anonymous_principal(public_repositories=["public-hosted"])
    assert anon.anonymous and not anon.is_admin
    assert allowed_actions(anon, "public-hosted") == {"browse", "read"}
    assert allowed_actions(anon, "team-a-hosted") == frozenset()
    # even an admin-privileged anonymous role never makes anonymous an administrator
    odd = anonymous_principal([Role("anonymous", admin=frozenset({"*"}))])
    assert not odd.is_admin and not odd.has_admin("users")


def test_public_role_added_to_users() -> None:
    dev = make_principal("alice", [TEAM_A_DEV]).with_roles(public_role(["public-hosted"]))
    assert "read" in allowed_actions(dev, "public-hosted")
    assert "add" not in allowed_actions(dev, "public-hosted")


def test_docker_scope_mapping() -> None:
    dev = make_principal("alice", [TEAM_A_DEV])
    docker, portway = docker_grant(dev, "team-a-hosted", ["pull", "push"])
    assert docker == {"pull", "push"}
    assert portway == {"read", "browse", "add"}  # no edit: overwrite will be refused
    lead = make_principal("bob", expand_roles(["team-a-lead"], CATALOG.get))
    docker, portway = docker_grant(lead, "team-a-hosted", ["push"])
    assert docker == {"push"} and "edit" in portway
    assert docker_grant(dev, "team-a-hosted", ["delete"]) == (frozenset(), frozenset())
    assert docker_grant(dev, "team-a-hosted", ["*"]) == (frozenset(), frozenset())
    assert docker_grant(lead, "team-a-hosted", ["*"]) == ({"*"}, ACTIONS)
    assert docker_grant(dev, "team-a-hosted", ["bogus"]) == (frozenset(), frozenset())
    assert docker_grant(dev, "team-b-hosted", ["pull"]) == (frozenset(), frozenset())


def test_browsable_filters_catalog() -> None:
    dev = make_principal("alice", [TEAM_A_DEV])
    repos = ["public-hosted", "team-a-group", "team-a-hosted", "team-b-hosted"]
    assert browsable(dev, repos) == ["team-a-group", "team-a-hosted"]
    assert browsable(anonymous_principal(public_repositories=["public-hosted"]), repos) == [
        "public-hosted"
    ]
    assert browsable(Principal("nobody"), repos) == []


def test_bad_privileges_refused() -> None:
    with pytest.raises(PrivilegeError):
        Privilege("team-a", frozenset({"pull"}))
    with pytest.raises(PrivilegeError):
        Privilege("Team A", frozenset({"read"}))
    with pytest.raises(PrivilegeError):
        Role("r", admin=frozenset({"root"}))
    with pytest.raises(PrivilegeError):
        Role("")
