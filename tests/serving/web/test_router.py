"""The page's router with a stand-in store (the real service and Chromium are in test_page_e2e.py)."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from towerflow.models.features import Event
from towerflow.serving.web import create_router, example_users, user_view

TOKEN = "t0ken"


class Store:
    profiles = {
        "1": {"user_id": "1", "user_age": 30, "user_gender": "F", "user_occupation": "writer", "user_zip": "02139"},
        "2": {"user_id": "2", "user_age": 50, "user_gender": "M", "user_occupation": "other", "user_zip": "1"},
    }
    history = {"1": [Event(100 + i, str(i), 4.0) for i in range(12)], "2": [Event(5, "3", 2.0)]}

    def user_profile(self, user_id):
        return self.profiles.get(user_id)

    def user_events(self, user_id, before=None):
        return list(self.history.get(user_id, []))

    def items(self, ids):
        return [{"item_id": i, "item_title": f"<b>Movie {i}</b>"} for i in ids]


def client(lineage=lambda: {"models": [], "error": None}, token=TOKEN):
    app = FastAPI()
    app.state.recommender = type("R", (), {"store": Store()})()
    app.include_router(create_router(lineage, token, examples=[{"user_id": "1", "note": "warm"}]))
    return TestClient(app)


def test_page_renders_with_the_api_calls_it_makes():
    page = client().get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ('id="recs"', "/v1/recommend", "/v1/events", "/ui/lineage", "/ui/users/"):
        assert needle in page.text


def test_user_view_needs_the_token_and_shows_recent_titles_newest_first():
    c = client()
    assert c.get("/ui/users/1").status_code == 401
    assert c.get("/ui/users/1", headers={"Authorization": "Bearer nope"}).status_code == 403
    body = c.get("/ui/users/1", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert body["known"] and body["events"] == 12 and len(body["history"]) == 10
    assert body["history"][0]["title"] == "<b>Movie 11</b>"  # escaped by the page (textContent), not here
    assert body["profile"]["user_occupation"] == "writer"
    unknown = c.get("/ui/users/zz", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert unknown == {"user_id": "zz", "known": False, "profile": {}, "events": 0, "history": []}


def test_no_token_configured_refuses_personal_data():
    assert client(token=None).get("/ui/users/1", headers={"Authorization": "Bearer x"}).status_code == 403


def test_a_failing_lineage_source_is_reported_not_a_500():
    def broken():
        raise FileNotFoundError("no ML Metadata store at /nowhere")

    body = client(lineage=broken).get("/ui/lineage").json()
    assert body["models"] == [] and "no ML Metadata store" in body["error"]


def test_example_users_pick_warm_cold_and_unknown():
    users = example_users(Store(), ["1", "2", "3"], warm_events=5)
    assert [u["user_id"] for u in users] == ["1", "2", "new-visitor"]
    assert users[0]["note"].startswith("warm") and users[1]["note"].startswith("cold")
    assert user_view(Store(), "2", history=5)["history"][0]["rating"] == 2.0


@pytest.mark.parametrize("path", ["/ui/examples", "/ui/lineage"])
def test_public_helpers_need_no_token(path):
    assert client().get(path).status_code == 200
