"""``/api/projects``: create, list, read, update, delete; visibility; input validation."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest

from tests.conftest import ServerThread, create_project, stored_files, upload
from tidings.settings import MiB


async def test_create_and_read_a_project(alice_api: httpx.AsyncClient) -> None:
    response = await alice_api.post("/api/projects", json={"name": "Demo", "description": "d"})
    assert response.status_code == 201
    project = response.json()
    assert isinstance(project["id"], str)
    assert project["name"] == "Demo"
    assert project["description"] == "d"
    assert project["owner"] == "alice"
    assert project["seq"] == 1  # its project.created event
    created = datetime.fromisoformat(project["created_at"])
    assert created.tzinfo is not None
    assert project["updated_at"] == project["created_at"]

    fetched = await alice_api.get(f"/api/projects/{project['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == project
    listed = await alice_api.get("/api/projects")
    assert listed.json() == [project]


async def test_description_defaults_to_empty(alice_api: httpx.AsyncClient) -> None:
    project = await create_project(alice_api)
    assert project["description"] == ""


async def test_description_up_to_one_mebibyte(alice_api: httpx.AsyncClient) -> None:
    text = "x" * MiB
    response = await alice_api.post("/api/projects", json={"name": "big", "description": text})
    assert response.status_code == 201
    project_id = response.json()["id"]
    fetched = await alice_api.get(f"/api/projects/{project_id}")
    assert fetched.json()["description"] == text
    too_big = await alice_api.post(
        "/api/projects", json={"name": "bigger", "description": text + "x"}
    )
    assert too_big.status_code == 422
    patched = await alice_api.patch(f"/api/projects/{project_id}", json={"description": text + "y"})
    assert patched.status_code == 422


async def test_list_shows_own_and_shared_projects_in_creation_order(
    alice_api: httpx.AsyncClient, bob_api: httpx.AsyncClient
) -> None:
    first = await create_project(alice_api, "first")
    second = await create_project(alice_api, "second")
    bobs = await create_project(bob_api, "bobs")
    assert [p["id"] for p in (await alice_api.get("/api/projects")).json()] == [
        first["id"],
        second["id"],
    ]
    response = await alice_api.post(
        f"/api/projects/{first['id']}/members", json={"username": "bob"}
    )
    assert response.status_code == 201
    assert {p["id"] for p in (await bob_api.get("/api/projects")).json()} == {
        first["id"],
        bobs["id"],
    }


async def test_update_a_project(alice_api: httpx.AsyncClient) -> None:
    project = await create_project(alice_api)
    response = await alice_api.patch(f"/api/projects/{project['id']}", json={"name": "renamed"})
    assert response.status_code == 200
    updated = response.json()
    assert updated["name"] == "renamed"
    assert updated["description"] == project["description"]
    assert updated["seq"] == 2
    assert updated["updated_at"] > project["updated_at"]
    assert updated["created_at"] == project["created_at"]
    response = await alice_api.patch(f"/api/projects/{project['id']}", json={"description": "new"})
    assert response.json()["name"] == "renamed"
    assert response.json()["description"] == "new"
    assert (await alice_api.get(f"/api/projects/{project['id']}")).json() == response.json()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x" * 201},
        {"name": 5},
        {"name": None, "description": 1},
        {"name": "ok", "owner": "bob"},  # unknown field
        ["name"],
    ],
)
async def test_create_with_bad_input_is_422(alice_api: httpx.AsyncClient, body: object) -> None:
    response = await alice_api.post("/api/projects", json=body)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()
    assert (await alice_api.get("/api/projects")).json() == []


@pytest.mark.parametrize("body", [{"name": ""}, {"id": "other"}, {"seq": 9}, {"name": 1}])
async def test_update_with_bad_input_is_422(alice_api: httpx.AsyncClient, body: object) -> None:
    project = await create_project(alice_api)
    response = await alice_api.patch(f"/api/projects/{project['id']}", json=body)
    assert response.status_code == 422, response.text
    assert (await alice_api.get(f"/api/projects/{project['id']}")).json() == project


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_malformed_json_is_400_and_a_missing_body_422(
    alice_api: httpx.AsyncClient, method: str
) -> None:
    project = await create_project(alice_api)
    path = "/api/projects" if method == "POST" else f"/api/projects/{project['id']}"
    for raw, status in ((b'{"name": "x"', 400), (b"not json", 400), (b"", 422)):
        response = await alice_api.request(
            method, path, content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == status, (raw, response.text)


async def test_other_users_project_is_404_never_403(
    alice_api: httpx.AsyncClient, bob_api: httpx.AsyncClient
) -> None:
    project = await create_project(alice_api)
    pid = project["id"]
    for method, path, body in [
        ("GET", f"/api/projects/{pid}", None),
        ("PATCH", f"/api/projects/{pid}", {"name": "mine"}),
        ("DELETE", f"/api/projects/{pid}", None),
    ]:
        response = await bob_api.request(method, path, json=body)
        assert response.status_code == 404, (method, response.text)
        assert response.json() == {"detail": "project not found"}
        unknown = await bob_api.request(method, "/api/projects/0123456789abcdef", json=body)
        assert unknown.json() == response.json()  # existence does not leak
    assert (await bob_api.get("/api/projects")).json() == []
    assert (await alice_api.get(f"/api/projects/{pid}")).json() == project


async def test_delete_a_project_removes_its_files(
    server: ServerThread, alice_api: httpx.AsyncClient
) -> None:
    project = await create_project(alice_api)
    other = await create_project(alice_api, "other")
    for name in ("a.txt", "b.txt"):
        assert (await upload(alice_api, project["id"], name)).status_code == 201
    assert (await upload(alice_api, other["id"])).status_code == 201
    project_dir = server.settings.files_dir / project["id"]
    assert len(list(project_dir.iterdir())) == 2

    assert (await alice_api.delete(f"/api/projects/{project['id']}")).status_code == 204
    assert not project_dir.exists()
    assert [p.parent.name for p in stored_files(server.settings)] == [other["id"]]
    assert (await alice_api.get(f"/api/projects/{project['id']}")).status_code == 404
    assert (await alice_api.get(f"/api/projects/{project['id']}/files")).status_code == 404
    assert (await alice_api.delete(f"/api/projects/{project['id']}")).status_code == 404
    assert [p["id"] for p in (await alice_api.get("/api/projects")).json()] == [other["id"]]


async def test_members_can_update_but_only_the_owner_deletes(
    alice_api: httpx.AsyncClient, bob_api: httpx.AsyncClient
) -> None:
    project = await create_project(alice_api)
    pid = project["id"]
    await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    response = await bob_api.patch(f"/api/projects/{pid}", json={"description": "by bob"})
    assert response.status_code == 200
    assert response.json()["owner"] == "alice"
    assert (await bob_api.delete(f"/api/projects/{pid}")).status_code == 403
    assert (await alice_api.get(f"/api/projects/{pid}")).status_code == 200
