"""``/api/projects/{id}/members``: the owner adds, lists and removes members."""

from __future__ import annotations

import asyncio

import httpx
from redis.asyncio import Redis

from tests.conftest import (
    TIMEOUT,
    ServerThread,
    TestUser,
    connected,
    create_project,
    create_user,
    on_stacks,
    recv_until,
    subscribe,
    upload,
)
from tidings.events import Envelope


async def test_add_list_remove_members(
    alice_api: httpx.AsyncClient, bob_api: httpx.AsyncClient
) -> None:
    project = await create_project(alice_api)
    pid = project["id"]
    members = await alice_api.get(f"/api/projects/{pid}/members")
    assert members.status_code == 200
    alice_id = members.json()[0]["user_id"]
    assert members.json() == [{"user_id": alice_id, "username": "alice", "role": "owner"}]

    added = await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    assert added.status_code == 201
    assert added.json()["username"] == "bob" and added.json()["role"] == "member"
    # The member sees the project, its members and its files.
    assert (await bob_api.get(f"/api/projects/{pid}")).status_code == 200
    listed = (await bob_api.get(f"/api/projects/{pid}/members")).json()
    assert [(m["username"], m["role"]) for m in listed] == [("alice", "owner"), ("bob", "member")]
    assert (await upload(bob_api, pid, "by-bob.txt")).status_code == 201

    removed = await alice_api.delete(f"/api/projects/{pid}/members/bob")
    assert removed.status_code == 204
    assert [
        m["username"] for m in (await alice_api.get(f"/api/projects/{pid}/members")).json()
    ] == ["alice"]
    # A removed member loses access: 404, as if the project did not exist.
    for path in (f"/api/projects/{pid}", f"/api/projects/{pid}/files"):
        assert (await bob_api.get(path)).status_code == 404
    assert (await bob_api.get("/api/projects")).json() == []
    assert (await upload(bob_api, pid)).status_code == 404


async def test_adding_twice_or_the_owner_is_409(
    alice_api: httpx.AsyncClient, bob_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    assert (
        await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    ).status_code == 201
    again = await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    assert again.status_code == 409
    owner = await alice_api.post(f"/api/projects/{pid}/members", json={"username": "alice"})
    assert owner.status_code == 409


async def test_unknown_users_and_members_are_404(alice_api: httpx.AsyncClient) -> None:
    pid = (await create_project(alice_api))["id"]
    unknown = await alice_api.post(f"/api/projects/{pid}/members", json={"username": "nobody"})
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "user not found"}
    assert (await alice_api.delete(f"/api/projects/{pid}/members/nobody")).status_code == 404
    # The owner is not a removable member.
    owner = await alice_api.delete(f"/api/projects/{pid}/members/alice")
    assert owner.status_code == 409
    assert "owner cannot be removed" in owner.json()["detail"]


async def test_member_body_is_validated(alice_api: httpx.AsyncClient) -> None:
    pid = (await create_project(alice_api))["id"]
    for body in ({}, {"username": ""}, {"username": "bob", "role": "owner"}, {"username": 1}):
        response = await alice_api.post(f"/api/projects/{pid}/members", json=body)
        assert response.status_code == 422, body
    malformed = await alice_api.post(
        f"/api/projects/{pid}/members",
        content=b"{username",
        headers={"content-type": "application/json"},
    )
    assert malformed.status_code == 400  # not JSON at all


async def test_only_the_owner_manages_members(
    server: ServerThread, alice_api: httpx.AsyncClient, bob_api: httpx.AsyncClient
) -> None:
    await create_user(server.settings, "carol")
    pid = (await create_project(alice_api))["id"]
    await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    # A member sees the list but cannot change it: 403, since they know the project.
    assert (await bob_api.get(f"/api/projects/{pid}/members")).status_code == 200
    add = await bob_api.post(f"/api/projects/{pid}/members", json={"username": "carol"})
    assert add.status_code == 403
    await alice_api.post(f"/api/projects/{pid}/members", json={"username": "carol"})
    # Removing someone else (not oneself) is the owner's.
    assert (await bob_api.delete(f"/api/projects/{pid}/members/carol")).status_code == 403
    assert (await bob_api.delete(f"/api/projects/{pid}/members/alice")).status_code == 403
    names = [m["username"] for m in (await alice_api.get(f"/api/projects/{pid}/members")).json()]
    assert names == ["alice", "bob", "carol"]


async def test_non_members_get_404_for_member_endpoints(
    alice_api: httpx.AsyncClient, bob_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    for method, path, body in [
        ("GET", f"/api/projects/{pid}/members", None),
        ("POST", f"/api/projects/{pid}/members", {"username": "bob"}),
        ("DELETE", f"/api/projects/{pid}/members/alice", None),
    ]:
        response = await bob_api.request(method, path, json=body)
        assert response.status_code == 404, (method, response.text)
        assert response.json() == {"detail": "project not found"}
    assert (await bob_api.get("/api/projects")).json() == []


async def test_a_member_may_leave(
    server: ServerThread,
    alice_api: httpx.AsyncClient,
    bob_api: httpx.AsyncClient,
    bob: TestUser,
) -> None:
    pid = (await create_project(alice_api))["id"]
    await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    bob_ws = await connected(server, bob)
    assert (await subscribe(bob_ws, pid))["type"] == "subscribed"

    left = await bob_api.delete(f"/api/projects/{pid}/members/bob")
    assert left.status_code == 204, left.text
    ended = await recv_until(bob_ws, lambda m: m["type"] == "unsubscribed")
    assert ended["project_id"] == pid and ended["reason"] == "access_revoked"
    assert (await bob_api.get(f"/api/projects/{pid}")).status_code == 404
    names = [m["username"] for m in (await alice_api.get(f"/api/projects/{pid}/members")).json()]
    assert names == ["alice"]
    # Gone is gone: leaving again is a project bob no longer sees.
    assert (await bob_api.delete(f"/api/projects/{pid}/members/bob")).status_code == 404
    # The owner cannot leave their own project.
    owner = await alice_api.delete(f"/api/projects/{pid}/members/alice")
    assert owner.status_code == 409


async def test_every_member_hears_the_project_change_without_subscribing(
    server: ServerThread, alice_api: httpx.AsyncClient, bob: TestUser
) -> None:
    """``project.*`` events go to everyone who sees the project (their project lists),
    subscribed or not: the owner and each member, the one just added included."""
    carol = await create_user(server.settings, "carol")
    pid = (await create_project(alice_api))["id"]
    await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    bob_ws = await connected(server, bob)
    carol_ws = await connected(server, carol)

    added = await alice_api.post(f"/api/projects/{pid}/members", json={"username": "carol"})
    for ws in (bob_ws, carol_ws):  # the one already there, and the newcomer
        heard = await recv_until(ws, lambda m: m["type"] == "project.updated")
        assert (heard["project_id"], heard["seq"]) == (pid, added.json()["seq"])

    renamed = await alice_api.patch(f"/api/projects/{pid}", json={"name": "renamed"})
    for ws in (bob_ws, carol_ws):
        heard = await recv_until(ws, lambda m: m["type"] == "project.updated")
        assert heard["seq"] == int(renamed.headers["Tidings-Seq"])
        assert heard["data"]["name"] == "renamed"
        await ws.close()


@on_stacks("postgres-redis")
async def test_a_removal_is_announced_to_the_others_and_revokes_the_removed(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient, bob: TestUser
) -> None:
    """The removal's own event, as every node hears it on the broker: addressed to the
    owner and the members who stay, and naming the removed member as revoked, so every
    node ends their subscriptions before it offers any later event (the separate
    control message may be lost)."""
    carol = await create_user(server.settings, "carol")
    pid = (await create_project(alice_api))["id"]
    for name in ("bob", "carol"):
        await alice_api.post(f"/api/projects/{pid}/members", json={"username": name})
    redis = Redis.from_url(server.settings.broker_url)
    listening = redis.pubsub()
    await listening.subscribe(server.settings.broker_channel)
    try:
        removed = await alice_api.delete(f"/api/projects/{pid}/members/bob")
        seq = int(removed.headers["Tidings-Seq"])
        async with asyncio.timeout(TIMEOUT):
            while True:
                message = await listening.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is None:
                    continue
                envelope = Envelope.decode(message["data"])
                if envelope.seq == seq:
                    break
    finally:
        await listening.aclose()
        await redis.aclose()
    assert envelope.type == "project.updated"
    assert envelope.revoked == (bob.id,)
    assert sorted(envelope.audience) == sorted([alice.id, carol.id])
