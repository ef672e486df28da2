"""Credentials for logging in to hosts: keys read when given, secrets sealed and never answered, tenant isolation."""

from __future__ import annotations

from pathlib import Path

from app.db.models import Role
from tests.support.api import Client, add_as_the_only_writer, errors
from tests.support.database import sql
from tests.support.ssh_keys import key_pair
from tests.support.tenants import Caller


async def _add(client: Client, caller: Caller, **body: object) -> dict[str, object]:
    answer = await client.post("/api/v1/credentials", json=body, headers=caller[Role.ADMIN])
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def test_a_key_credential_shows_its_public_half_and_never_its_secrets(
    client: Client, alice: Caller, tmp_path: Path, database_url: str
) -> None:
    key = key_pair(tmp_path, "deploy")
    created = await _add(
        client, alice, name="deploy", kind="ssh_key", secret=key.private, become_password="sudo-secret-1"
    )
    assert created["public_key"] == key.public
    assert created["fingerprint"] == key.fingerprint
    assert (created["has_passphrase"], created["has_become_password"], created["hosts"]) == (False, True, 0)

    answers = [
        await client.get("/api/v1/credentials", headers=alice[Role.VIEWER]),
        await client.get(f"/api/v1/credentials/{created['id']}", headers=alice[Role.VIEWER]),
    ]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[0].json()["items"] == [created]
    assert answers[1].json() == created
    secret_line = key.private.splitlines()[1]
    for answer in answers:
        assert secret_line not in answer.text
        assert "sudo-secret-1" not in answer.text
    (row,) = await sql(database_url, "SELECT sealed FROM target_credentials WHERE id = $1", created["id"])
    assert secret_line.encode() not in row["sealed"]
    assert b"sudo-secret-1" not in row["sealed"]


async def test_an_encrypted_key_needs_its_passphrase(client: Client, alice: Caller, tmp_path: Path) -> None:
    key = key_pair(tmp_path, "locked", passphrase="open sesame")
    body = {"name": "locked", "kind": "ssh_key", "secret": key.private}
    refused = [
        await client.post("/api/v1/credentials", json=body, headers=alice[Role.ADMIN]),
        await client.post("/api/v1/credentials", json={**body, "passphrase": "wrong"}, headers=alice[Role.ADMIN]),
    ]
    assert [answer.status_code for answer in refused] == [422, 422]
    assert "encrypted: give its passphrase" in refused[0].json()["detail"]
    assert "passphrase does not open" in refused[1].json()["detail"]
    assert [list(errors(answer)) for answer in refused] == [["passphrase"], ["passphrase"]]
    assert (await client.get("/api/v1/credentials", headers=alice[Role.VIEWER])).json()["total"] == 0

    created = await _add(client, alice, **body, passphrase="open sesame")
    assert (created["fingerprint"], created["has_passphrase"]) == (key.fingerprint, True)


async def test_what_is_not_a_credential_is_refused_and_nothing_is_written(
    client: Client, alice: Caller, tmp_path: Path
) -> None:
    plain = key_pair(tmp_path, "plain")
    wrong = {
        "not a key": ({"kind": "ssh_key", "secret": "-----BEGIN NOTHING-----\nabc\n"}, "secret", "not a private key"),
        "a public key": ({"kind": "ssh_key", "secret": plain.public}, "secret", "not a private key"),
        "a passphrase for a plain key": (
            {"kind": "ssh_key", "secret": plain.private, "passphrase": "x"},
            "passphrase",
            "not encrypted",
        ),
        "a passphrase for a password": (
            {"kind": "password", "secret": "pw", "passphrase": "x"},
            "passphrase",
            "no passphrase",
        ),
        "an unknown kind": ({"kind": "kerberos", "secret": "x"}, "kind", ""),
        "an empty secret": ({"kind": "password", "secret": ""}, "secret", ""),
    }
    for what, (body, field, words) in wrong.items():
        answer = await client.post("/api/v1/credentials", json={"name": "c", **body}, headers=alice[Role.ADMIN])
        assert answer.status_code == 422, (what, answer.text)
        assert any(name.startswith(field) for name in errors(answer)), (what, answer.text)
        assert words in answer.json()["detail"], (what, answer.text)
    assert (await client.get("/api/v1/credentials", headers=alice[Role.VIEWER])).json()["total"] == 0


async def test_names_are_unique_and_a_credential_in_use_is_kept(client: Client, alice: Caller) -> None:
    created = await _add(client, alice, name="ops", kind="password", secret="pw-1")
    again = await client.post(
        "/api/v1/credentials", json={"name": "ops", "kind": "password", "secret": "x"}, headers=alice[Role.ADMIN]
    )
    assert again.status_code == 409, again.text
    host = await client.post(
        "/api/v1/hosts",
        json={"name": "web-01", "address": "10.0.0.1", "credential": "ops"},
        headers=alice[Role.ADMIN],
    )
    assert host.status_code == 201, host.text
    kept = await client.delete(f"/api/v1/credentials/{created['id']}", headers=alice[Role.ADMIN])
    assert kept.status_code == 409, kept.text
    assert "used by 1 host(s) (web-01)" in kept.json()["detail"]
    assert (await client.get(f"/api/v1/credentials/{created['id']}", headers=alice[Role.VIEWER])).json()["hosts"] == 1

    assert (await client.delete(f"/api/v1/hosts/{host.json()['id']}", headers=alice[Role.ADMIN])).status_code == 204
    assert (await client.delete(f"/api/v1/credentials/{created['id']}", headers=alice[Role.ADMIN])).status_code == 204


async def test_secrets_are_replaced_not_shown(client: Client, alice: Caller, tmp_path: Path) -> None:
    first, second = key_pair(tmp_path, "first"), key_pair(tmp_path, "second", kind="rsa")
    created = await _add(client, alice, name="rotating", kind="ssh_key", secret=first.private)
    url = f"/api/v1/credentials/{created['id']}"
    rotated = await client.put(url, json={"secret": second.private}, headers=alice[Role.ADMIN])
    assert rotated.status_code == 200, rotated.text
    assert (rotated.json()["fingerprint"], rotated.json()["public_key"]) == (second.fingerprint, second.public)
    become = await client.put(url, json={"become_password": "s3"}, headers=alice[Role.ADMIN])
    assert (become.json()["has_become_password"], become.json()["fingerprint"]) == (True, second.fingerprint)
    cleared = await client.put(url, json={"clear_become_password": True}, headers=alice[Role.ADMIN])
    assert cleared.json()["has_become_password"] is False
    to_password = await client.put(url, json={"kind": "password"}, headers=alice[Role.ADMIN])
    assert to_password.status_code == 422
    assert "needs its new secret" in to_password.json()["detail"]
    password = await client.put(url, json={"kind": "password", "secret": "pw"}, headers=alice[Role.ADMIN])
    assert (password.json()["kind"], password.json()["public_key"], password.json()["fingerprint"]) == (
        "password",
        None,
        None,
    )


async def test_only_admins_write_and_tenants_see_only_their_own(client: Client, alice: Caller, bob: Caller) -> None:
    body = {"name": "ops", "kind": "password", "secret": "pw"}
    created = await add_as_the_only_writer(client, "/api/v1/credentials", body, {"name": "mine"}, alice, bob)
    assert (await client.get("/api/v1/credentials", headers=bob[Role.ADMIN])).json()["total"] == 0
    for reference in (created["id"], "ops"):
        host = await client.post(
            "/api/v1/hosts",
            json={"name": "theirs", "address": "10.0.0.2", "credential": reference},
            headers=bob[Role.ADMIN],
        )
        assert host.status_code == 422, host.text
        assert errors(host) == {"credential": "no such credential"}
