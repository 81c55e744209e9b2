"""Personal API tokens: scopes, their enforcement on API requests and pages, the token endpoints
and the account page that creates and revokes tokens."""

import re

import pytest
from sqlalchemy import select

from financing.accounts.models import ApiToken
from financing.accounts.services import create_token, find_token, hash_token, normalise_scopes, revoke_token
from financing.core.errors import NotFound, ValidationFailed
from financing.pledges.models import Pledge
from tests.test_api import (
    assert_error,
    make_pledge,
    make_project,
    pledge_body,
    project_body,
    send,
)

KEY = "0d5e2b1a-7c44-4f0e-a1b9-3c2d4e5f6a7b"


def bearer(db, user, scopes=("read", "pledge", "manage")) -> dict[str, str]:
    _, token = create_token(user, "tests", scopes)
    db.session.commit()
    return {"Authorization": f"Bearer {token}"}


# The service


def test_scopes_are_stored_in_canonical_order(db, people):
    row, _ = create_token(people.donor, "script", ["manage", "read", "read"])

    assert row.scopes == "read manage"


@pytest.mark.parametrize(("scopes", "message"), [([], "at least one"), (["admin"], "'admin'"), ("read write", "'write'")])
def test_invalid_scopes_are_rejected(db, people, scopes, message):
    with pytest.raises(ValidationFailed) as raised:
        normalise_scopes(scopes)

    assert message in raised.value.fields["scopes"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_token_name_is_checked(db, people, name):
    with pytest.raises(ValidationFailed) as raised:
        create_token(people.donor, name)

    assert "name" in raised.value.fields


def test_token_is_stored_as_hash(db, people):
    row, token = create_token(people.donor, "script")

    assert token.startswith("fin_")
    assert row.token_hash == hash_token(token)
    assert token not in (row.token_hash, row.prefix, row.scopes)
    assert token.startswith(row.prefix)


def test_revoke_other_users_token_is_not_found(db, people):
    row, _ = create_token(people.donor, "script")

    with pytest.raises(NotFound):
        revoke_token(people.owner, row.id)
    assert row.revoked_at is None


def test_find_token_records_last_use(db, people):
    row, token = create_token(people.donor, "script")
    db.session.commit()

    assert find_token(token).id == row.id
    db.session.expire_all()
    assert db.session.get(ApiToken, row.id).last_used_at is not None


# Scopes on API requests


def test_read_scope_allows_get_only(client, db, people):
    headers = bearer(db, people.owner, ["read"])

    listing = client.get("/api/v1/projects?mine=true", headers=headers)
    write = send(client, "POST", "/api/v1/projects", project_body(), headers)

    assert listing.status_code == 200
    fields = assert_error(write, 403, "insufficient_scope")
    assert "manage" in write.get_json()["error"]["message"]
    assert write.headers["WWW-Authenticate"] == 'Bearer realm="financing", error="insufficient_scope", scope="manage"'
    assert "Authorization" in fields


def test_manage_scope_without_read_cannot_get(client, db, people):
    headers = bearer(db, people.owner, ["manage"])

    created = send(client, "POST", "/api/v1/projects", project_body(), headers)
    read = client.get(f"/api/v1/projects/{created.get_json()['id']}", headers=headers)

    assert created.status_code == 201
    assert_error(read, 403, "insufficient_scope")


def test_pledge_scope_creates_pledges_only(client, db, people):
    project = make_project(db, people)
    headers = {**bearer(db, people.donor, ["pledge"]), "Idempotency-Key": KEY}

    pledged = send(client, "POST", "/api/v1/pledges", pledge_body(project.needs[0].id), headers)
    profile = send(client, "PATCH", "/api/v1/funders/me", {"name": "European Commission"}, headers)

    assert pledged.status_code == 201, pledged.get_data(as_text=True)
    assert_error(profile, 403, "insufficient_scope")


def test_pledge_creation_needs_pledge_scope(client, db, people):
    project = make_project(db, people)
    headers = {**bearer(db, people.donor, ["read", "manage"]), "Idempotency-Key": KEY}

    assert_error(send(client, "POST", "/api/v1/pledges", pledge_body(project.needs[0].id), headers), 403, "insufficient_scope")
    assert db.session.scalar(select(Pledge.id)) is None


def test_donor_cancels_own_pledge_with_pledge_scope(client, db, people):
    project = make_project(db, people)
    pledge = make_pledge(db, people.donor, project.needs[0].id)

    response = send(client, "POST", f"/api/v1/pledges/{pledge.id}/cancel", {"reason": "Budget cut"}, bearer(db, people.donor, ["pledge"]))

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["state"] == "cancelled"


def test_coordinator_cancel_needs_manage_scope(client, db, people):
    project = make_project(db, people)
    pledge = make_pledge(db, people.donor, project.needs[0].id)

    denied = send(client, "POST", f"/api/v1/pledges/{pledge.id}/cancel", {"reason": "Fraud"}, bearer(db, people.coordinator, ["pledge"]))
    allowed = send(client, "POST", f"/api/v1/pledges/{pledge.id}/cancel", {"reason": "Fraud"}, bearer(db, people.coordinator, ["manage"]))

    assert_error(denied, 403, "insufficient_scope")
    assert allowed.status_code == 200
    assert allowed.get_json()["state"] == "cancelled"


def test_confirm_needs_manage_scope(client, db, people):
    project = make_project(db, people)
    pledge = make_pledge(db, people.donor, project.needs[0].id)

    response = send(client, "POST", f"/api/v1/pledges/{pledge.id}/confirm", headers=bearer(db, people.coordinator, ["read", "pledge"]))

    assert_error(response, 403, "insufficient_scope")
    db.session.expire_all()
    assert db.session.get(Pledge, pledge.id).state == "pledged"


def test_public_read_with_token_lacking_read_is_forbidden(client, db, people):
    assert_error(client.get("/api/v1/stats", headers=bearer(db, people.donor, ["pledge"])), 403, "insufficient_scope")


def test_openapi_document_needs_no_scope(client, db, people):
    headers = bearer(db, people.donor, ["pledge"])

    assert client.get("/api/openapi.json", headers=headers).status_code == 200
    assert client.get("/api/docs", headers=headers).status_code == 200


def test_session_has_every_scope(client, db, people, login):
    login(people.owner)

    response = send(client, "POST", "/api/v1/projects", project_body())

    assert response.status_code == 201


# Scopes on pages


def test_page_get_with_read_token(app, db, people):
    headers = bearer(db, people.owner, ["read"])

    response = app.test_client().get("/account", headers=headers)

    assert response.status_code == 200
    assert people.owner.email in response.get_data(as_text=True)


def test_page_get_without_read_scope_is_anonymous(app, db, people):
    response = app.test_client().get("/account", headers=bearer(db, people.owner, ["manage"]))

    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_page_post_needs_manage_scope(app, db, people):
    headers = bearer(db, people.owner, ["read", "pledge"])

    response = app.test_client().post("/account/tokens", data={"name": "escalate", "scopes": ["manage"]}, headers=headers)

    assert response.status_code == 302
    assert db.session.scalar(select(ApiToken).where(ApiToken.name == "escalate")) is None


# The token endpoints


def test_create_token_through_api(client, db, people):
    response = send(client, "POST", "/api/v1/tokens", {"name": "nightly export", "scopes": ["read"]}, bearer(db, people.owner))

    body = response.get_json()
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    assert body["scopes"] == ["read"]
    assert body["token"].startswith(body["prefix"])
    assert client.get("/api/v1/projects?mine=true", headers={"Authorization": f"Bearer {body['token']}"}).status_code == 200


def test_token_cannot_grant_scope_it_lacks(client, db, people):
    headers = bearer(db, people.owner, ["read", "manage"])

    response = send(client, "POST", "/api/v1/tokens", {"name": "wider", "scopes": ["read", "pledge"]}, headers)

    assert_error(response, 403, "insufficient_scope")
    assert db.session.scalar(select(ApiToken).where(ApiToken.name == "wider")) is None


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "x", "scopes": []}, "scopes"),
    ({"name": "x", "scopes": ["admin"]}, "scopes.0"),
    ({"name": "", "scopes": ["read"]}, "name"),
    ({"scopes": ["read"]}, "name"),
    ({"name": "x" * 101, "scopes": ["read"]}, "name"),
])
def test_create_token_rejects_invalid_field(client, db, people, body, field):
    fields = assert_error(send(client, "POST", "/api/v1/tokens", body, bearer(db, people.owner)), 422)

    assert field in fields


def test_list_tokens_shows_own_tokens_without_secret(client, db, people):
    headers = bearer(db, people.owner)
    create_token(people.donor, "someone else")
    db.session.commit()

    body = client.get("/api/v1/tokens", headers=headers).get_json()

    assert body["total"] == 1
    assert set(body["items"][0]) >= {"id", "name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"}
    assert "token" not in body["items"][0]
    assert body["items"][0]["last_used_at"] is not None


def test_revoke_token_through_api(client, db, people):
    headers = bearer(db, people.owner)
    row, token = create_token(people.owner, "old script")
    db.session.commit()

    response = client.delete(f"/api/v1/tokens/{row.id}", headers=headers)
    again = client.delete(f"/api/v1/tokens/{row.id}", headers=headers)

    assert response.status_code == 204
    assert response.get_data() == b""
    assert again.status_code == 204
    assert_error(client.get("/api/v1/stats", headers={"Authorization": f"Bearer {token}"}), 401)


def test_api_revoke_others_token_not_found(client, db, people):
    row, _ = create_token(people.donor, "theirs")
    db.session.commit()

    assert_error(client.delete(f"/api/v1/tokens/{row.id}", headers=bearer(db, people.owner)), 404)
    assert row.revoked_at is None


def test_revoke_needs_manage_scope(client, db, people):
    row, _ = create_token(people.owner, "old script")
    db.session.commit()

    assert_error(client.delete(f"/api/v1/tokens/{row.id}", headers=bearer(db, people.owner, ["read"])), 403, "insufficient_scope")


# The account page


def test_account_page_offers_scopes(client, db, people, login):
    login(people.owner)

    page = client.get("/account").get_data(as_text=True)

    for scope in ("read", "pledge", "manage"):
        assert f'value="{scope}"' in page
    assert re.search(r'<input[^>]*checked[^>]*value="read"|<input[^>]*value="read"[^>]*checked', page), "read is ticked by default"


def test_account_page_creates_token_with_scopes(client, db, people, login):
    login(people.donor)

    response = client.post("/account/tokens", data={"name": "pledge bot", "scopes": ["read", "pledge"]})

    page = response.get_data(as_text=True)
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    token = re.search(r'id="new-token"[^>]*value="([^"]+)"', page).group(1)
    row = find_token(token)
    assert row.scopes == "read pledge"
    assert "read, pledge" in page


def test_account_page_token_without_scope_is_rejected(client, db, people, login):
    login(people.donor)

    response = client.post("/account/tokens", data={"name": "no scope"})

    assert response.status_code == 422
    assert "Choose at least one scope." in response.get_data(as_text=True)
    assert db.session.scalar(select(ApiToken.id)) is None


def test_account_page_unknown_scope_is_rejected(client, db, people, login):
    login(people.donor)

    response = client.post("/account/tokens", data={"name": "bad", "scopes": ["read", "root"]})

    assert response.status_code == 422
    assert "Unknown scope &#39;root&#39;" in response.get_data(as_text=True)
    assert db.session.scalar(select(ApiToken.id)) is None


def test_account_page_blank_name_is_rejected(client, db, people, login):
    login(people.donor)

    response = client.post("/account/tokens", data={"name": "   ", "scopes": ["read"]})

    assert response.status_code == 422
    assert db.session.scalar(select(ApiToken.id)) is None


def test_account_page_lists_and_revokes_tokens(client, db, people, login):
    row, _ = create_token(people.donor, "export script", ["read", "manage"])
    db.session.commit()
    login(people.donor)

    page = client.get("/account").get_data(as_text=True)
    revoked = client.post(f"/account/tokens/{row.id}/revoke")

    assert "export script" in page
    assert "read, manage" in page
    assert f"{row.prefix}…" in page
    assert revoked.status_code == 302
    db.session.expire_all()
    assert db.session.get(ApiToken, row.id).revoked_at is not None
