"""Tests of the coordinators' review queues: counts, tabs, the resubmission diff and bulk decisions."""

from datetime import date

import pytest
from lxml import html
from sqlalchemy import func, select

from financing.core.errors import Conflict
from financing.funders.models import Funder
from financing.matching.models import Match
from financing.pledges.models import Pledge, PledgeEvent
from financing.pledges.services import create_pledge, transition
from financing.projects.models import Project
from financing.projects.services import (
    NeedInput, ProjectInput, create_project, publish_project, return_project, submit_project, update_project,
)
from financing.review import services as review_services
from financing.review.models import ProjectSnapshot
from financing.review.snapshots import compare, latest_snapshot


@pytest.fixture
def people(make_user):
    class People:
        owner = make_user("owner", organisation="Ministry of ICT, Kenya")
        donor = make_user("donor", organisation="European Commission")
        coordinator = make_user("coordinator", organisation=None)

    return People


def project_input(title="Rural broadband for Kenya", countries=("KE",), goal_minor=100_000_00, **extra) -> ProjectInput:
    return ProjectInput(
        title=title, summary=f"Summary of {title}.", countries=list(countries), themes=["broadband"],
        needs=[NeedInput(title="Access points", goal_minor=goal_minor, currency="EUR")], **extra,
    )


def make_project(db, people, status="submitted", title="Rural broadband for Kenya", **extra) -> Project:
    project = create_project(people.owner, project_input(title=title, **extra))
    if status in ("submitted", "returned", "resubmitted", "published"):
        submit_project(people.owner, project)
    if status in ("returned", "resubmitted"):
        return_project(people.coordinator, project, "Add the number of villages.")
    if status == "resubmitted":
        submit_project(people.owner, project)
    if status == "published":
        publish_project(people.coordinator, project)
    db.session.commit()
    return project


def make_funder(db, name="Africa broadband fund", organisation_id=None) -> Funder:
    funder = Funder(name=name, organisation_id=organisation_id)
    db.session.add(funder)
    db.session.commit()
    return funder


def make_match(db, project, funder, score=0.5, status="suggested", explanation="Kenya is in Africa; broadband matches.") -> Match:
    match = Match(
        project_id=project.id, need_id=project.needs[0].id, funder_id=funder.id, score=score,
        parts={"region": 1.0, "theme": 1.0, "ticket": 0.5, "capacity": 0.5, "time": 0.5}, weights={},
        explanation=explanation, status=status, inputs_digest="0" * 64,
    )
    db.session.add(match)
    db.session.commit()
    return match


def make_pledges(db, people, need, amounts=(10_000, 20_000, 30_000)) -> list[Pledge]:
    pledges = [create_pledge(people.donor, need.id, amount, "EUR")[0] for amount in amounts]
    db.session.commit()
    return pledges


def make_disputed_pledge(db, people, need) -> Pledge:
    pledge, _ = create_pledge(people.donor, need.id, 5_000, "EUR", kind="card")
    transition(pledge.id, "pay", None)
    transition(pledge.id, "dispute_open", None, reason="Card payment disputed (fraudulent).")
    db.session.commit()
    return pledge


def page(response):
    return html.fromstring(response.get_data(as_text=True))


def text_of(response) -> str:
    return " ".join(page(response).text_content().split())


def tab_counts(response) -> dict[str, int]:
    counts = {}
    for link in page(response).xpath("//nav[@class='tabs']//a"):
        tab = link.get("href").split("tab=")[1]
        counts[tab] = int(link.xpath(".//span[@class='tab-count']")[0].text)
    return counts


def nav_total(response) -> int:
    return int(page(response).xpath("//a[@href='/review']/span[@class='count-badge']")[0].text)


def statuses(db, model, items) -> list[str]:
    db.session.expire_all()
    attribute = "state" if model is Pledge else "status"
    return [getattr(db.session.get(model, item.id), attribute) for item in items]


def event_count(db) -> int:
    return db.session.scalar(select(func.count(PledgeEvent.id)))


def post_bulk(client, tab, ids, action, reason=""):
    data = {"bulk-selected": [str(object_id) for object_id in ids], "bulk-action": action, "bulk-reason": reason}
    return client.post(f"/review/{tab}", data=data)


@pytest.fixture
def queues(db, people):
    """Something in every queue, next to rows that must stay out of them."""
    new_ones = [make_project(db, people, title=f"Submitted project {n}") for n in (1, 2)]
    resubmitted = make_project(db, people, status="resubmitted", title="Resubmitted project")
    make_project(db, people, status="returned", title="Returned project")
    make_project(db, people, status="draft", title="Draft project")
    published = make_project(db, people, status="published", title="Published project")
    need = published.needs[0]

    funder = make_funder(db, organisation_id=people.donor.organisation_id)
    other = make_funder(db, name="World fund")
    low = make_match(db, published, funder, score=0.4, explanation="Low fit explained.")
    high = make_match(db, published, other, score=0.9, status="stale", explanation="High fit explained.")
    decided = make_match(db, resubmitted, funder, score=0.7, status="accepted")

    waiting = make_pledges(db, people, need, amounts=(10_000, 20_000))
    confirmed = make_pledges(db, people, need, amounts=(5_000,))[0]
    transition(confirmed.id, "confirm", people.coordinator)
    disputed = make_disputed_pledge(db, people, need)
    db.session.commit()
    return {
        "new": new_ones, "resubmitted": resubmitted, "published": published, "matches": [high, low],
        "decided": decided, "waiting": waiting, "confirmed": confirmed, "disputed": disputed,
    }


# Access


def test_anonymous_redirected_to_login(client, db):
    response = client.get("/review")

    assert response.status_code == 302
    assert "/login" in response.headers["Location"]
    assert client.post("/review/projects", data={}).status_code == 302


@pytest.mark.parametrize("role", ["owner", "donor"])
def test_other_roles_forbidden(client, db, make_user, login, role):
    login(make_user(role))

    assert client.get("/review").status_code == 403
    for tab in ("projects", "resubmitted", "matches", "pledges"):
        assert client.post(f"/review/{tab}", data={"bulk-action": "publish"}).status_code == 403


@pytest.mark.parametrize("role", ["coordinator", "admin"])
def test_coordinators_and_admins_allowed(client, db, make_user, login, role):
    login(make_user(role, organisation=None))

    assert client.get("/review").status_code == 200


def nav_links(response) -> list[str]:
    return page(response).xpath("//nav[@aria-label='Main']//a/@href")


def test_nav_link_first_for_coordinators(client, db, people, login):
    login(people.owner)
    owner_links = nav_links(client.get("/projects"))
    assert "/review" not in owner_links

    login(people.coordinator)
    coordinator_only = [href for href in nav_links(client.get("/projects")) if href not in owner_links]
    assert coordinator_only[0] == "/review"


# Counts and tabs


def test_counts_per_tab(client, db, people, login, queues):
    login(people.coordinator)
    response = client.get("/review")

    assert response.status_code == 200
    assert tab_counts(response) == {"projects": 2, "resubmitted": 1, "matches": 2, "pledges": 2, "disputes": 1}
    assert nav_total(response) == 8
    assert review_services.queue_counts() == tab_counts(response)


def test_tabs_are_links(client, db, people, login, queues):
    login(people.coordinator)
    response = client.get("/review?tab=matches")
    tree = page(response)

    nav = tree.xpath("//nav[@class='tabs']")
    assert len(nav) == 1
    assert nav[0].get("aria-label") == "Review queues"
    hrefs = [link.get("href") for link in nav[0].xpath(".//a")]
    assert hrefs == [f"/review?tab={tab}" for tab in ("projects", "resubmitted", "matches", "pledges", "disputes")]
    current = tree.xpath("//a[@aria-current='page']")
    assert [link.get("href") for link in current] == ["/review?tab=matches"]
    assert tree.xpath("//h2[@id='queue-heading']")[0].text == "Match suggestions"
    assert not tree.xpath("//script")
    assert not tree.xpath("//*[@onclick or @onchange]")


def test_default_tab_is_projects(client, db, people, login, queues):
    login(people.coordinator)
    tree = page(client.get("/review"))

    assert [link.get("href") for link in tree.xpath("//a[@aria-current='page']")] == ["/review?tab=projects"]


@pytest.mark.parametrize("query", ["tab=everything", "page=abc", "page=0"])
def test_bad_query_rejected(client, db, people, login, query):
    login(people.coordinator)

    response = client.get(f"/review?{query}")

    assert response.status_code == 400
    assert query.split("=")[1] in response.text


def test_projects_tab_content(client, db, people, login, queues):
    login(people.coordinator)
    response = client.get("/review?tab=projects")
    text = text_of(response)

    assert "Submitted project 1" in text
    assert "Submitted project 2" in text
    for absent in ("Resubmitted project", "Returned project", "Draft project", "Published project"):
        assert absent not in text
    for project in queues["new"]:
        assert f'action="/projects/{project.id}/publish"' in response.text
        assert page(response).xpath(f"//input[@type='checkbox'][@value='{project.id}'][@form='bulk-projects']")


def test_resubmitted_tab_content(client, db, people, login, queues):
    login(people.coordinator)
    response = client.get("/review?tab=resubmitted")
    text = text_of(response)

    assert "Resubmitted project" in text
    assert "Add the number of villages." in text
    assert "Submitted project 1" not in text
    assert "Returned project" not in text


def test_matches_tab_sorted_by_score(client, db, people, login, queues):
    login(people.coordinator)
    response = client.get("/review?tab=matches")
    text = text_of(response)

    assert text.index("High fit explained.") < text.index("Low fit explained.")
    assert "Stale: inputs changed after review" in text
    checked = page(response).xpath("//input[@form='bulk-matches']/@value")
    assert checked == [str(match.id) for match in queues["matches"]]
    assert str(queues["decided"].id) not in checked


def test_pledges_tab_content(client, db, people, login, queues):
    login(people.coordinator)
    response = client.get("/review?tab=pledges")

    values = page(response).xpath("//input[@form='bulk-pledges']/@value")
    assert values == [str(pledge.id) for pledge in queues["waiting"]]
    assert "€100.00" in response.text
    assert "€200.00" in response.text


def test_disputes_tab_content(client, db, people, login, queues):
    login(people.coordinator)
    response = client.get("/review?tab=disputes")
    text = text_of(response)

    assert f"Pledge {queues['disputed'].id}" in text
    assert f"Pledge {queues['confirmed'].id}" not in text
    assert "Card payment disputed (fraudulent)." in text
    assert not page(response).xpath("//form[@id='bulk-disputes']")


def test_select_all_on_page(client, db, people, login, queues):
    login(people.coordinator)
    response = client.get("/review?tab=pledges&select=page")

    checked = page(response).xpath("//input[@form='bulk-pledges'][@checked]/@value")
    assert checked == [str(pledge.id) for pledge in queues["waiting"]]


# The diff of a resubmitted project


@pytest.fixture
def resubmitted(client, db, people, login):
    """A project returned through the page, then edited and submitted again by its owner."""
    project = make_project(db, people, title="Rural broadband for Kenya", countries=("KE",), goal_minor=100_000_00)
    login(people.coordinator)
    response = client.post(f"/projects/{project.id}/return", data={f"return-{project.id}-reason": "Add Tanzania and a realistic goal."})
    assert response.status_code == 302

    db.session.expire_all()
    project = db.session.get(Project, project.id)
    need_id = project.needs[0].id
    changed = project_input(title="Rural broadband for Kenya and Tanzania", countries=("KE", "TZ"), goal_minor=150_000_00)
    changed.needs[0].id = need_id
    update_project(people.owner, project, changed)
    submit_project(people.owner, project)
    db.session.commit()
    return project


def test_return_takes_snapshot(db, people, resubmitted):
    snapshot = latest_snapshot(resubmitted.id)

    assert snapshot is not None
    assert snapshot.reason == "Add Tanzania and a realistic goal."
    assert snapshot.taken_by_id == people.coordinator.id
    assert snapshot.content["fields"]["title"] == "Rural broadband for Kenya"
    assert snapshot.content["tags"]["countries"] == ["KE"]
    assert snapshot.content["needs"][0]["goal_minor"] == 100_000_00


def test_diff_lists_changes(db, people, resubmitted):
    diff = compare(latest_snapshot(resubmitted.id), resubmitted)

    assert [(change.name, change.before, change.after) for change in diff.fields] == [
        ("title", "Rural broadband for Kenya", "Rural broadband for Kenya and Tanzania"),
        ("summary", "Summary of Rural broadband for Kenya.", "Summary of Rural broadband for Kenya and Tanzania."),
    ]
    assert [(change.kind, change.before, change.after, change.removed, change.added) for change in diff.tags] == [
        ("countries", ["KE"], ["KE", "TZ"], [], ["TZ"]),
    ]
    assert len(diff.needs) == 1
    assert diff.needs[0].kind == "changed"
    assert diff.needs[0].changed == ["goal_minor"]
    assert (diff.needs[0].before["goal_minor"], diff.needs[0].after["goal_minor"]) == (100_000_00, 150_000_00)


def test_diff_shown_side_by_side(client, db, people, login, resubmitted):
    login(people.coordinator)
    response = client.get("/review?tab=resubmitted")
    tree = page(response)

    rows = {
        " ".join(row.xpath("./th")[0].text_content().split()): row
        for row in tree.xpath("//table[contains(@class, 'diff-table')]//tbody/tr")
    }
    title = rows["Title"]
    assert title.xpath(".//del")[0].text_content() == "Rural broadband for Kenya"
    assert title.xpath(".//ins")[0].text_content() == "Rural broadband for Kenya and Tanzania"
    countries = rows["Recipient countries"]
    before, after = countries.xpath("./td")
    assert before.xpath(".//span[@class='tag']/text()") == ["Kenya"]
    assert not before.xpath(".//del")
    assert after.xpath(".//span[@class='tag']/text()") == ["Kenya"]
    assert after.xpath(".//ins/text()") == ["Tanzania, the United Republic of"]
    goal = rows["Need “Access points”: goal"]
    assert goal.xpath(".//del")[0].text_content() == "€100,000.00"
    assert goal.xpath(".//ins")[0].text_content() == "€150,000.00"
    assert "Add Tanzania and a realistic goal." in text_of(response)


def test_description_diff_as_lines(db, people):
    project = make_project(db, people, status="returned", description="Phase one.\nTen villages.\nSolar power.")
    changed = project_input(description="Phase one.\nTwelve villages.\nSolar power.")
    changed.needs[0].id = project.needs[0].id
    update_project(people.owner, project, changed)

    lines = compare(latest_snapshot(project.id), project).fields[0].lines

    assert ("-", "Ten villages.") in lines
    assert ("+", "Twelve villages.") in lines
    assert ("-", "Phase one.") not in lines


def test_unchanged_resubmission_says_so(client, db, people, login):
    make_project(db, people, status="resubmitted")
    login(people.coordinator)

    response = client.get("/review?tab=resubmitted")

    assert "No field, tag or funding need changed since the project was returned." in text_of(response)


def test_added_and_removed_needs(db, people):
    project = make_project(db, people, status="returned")
    changed = project_input()
    changed.needs = [NeedInput(title="Training", goal_minor=20_000_00, currency="EUR", deadline=date(2099, 1, 31))]
    update_project(people.owner, project, changed)

    needs = compare(latest_snapshot(project.id), project).needs

    assert [(change.kind, (change.after or change.before)["title"]) for change in needs] == [("added", "Training"), ("removed", "Access points")]
    assert needs[0].after["deadline"] == date(2099, 1, 31)


# Bulk publish


def test_bulk_publish(client, db, people, login, monkeypatch):
    projects = [make_project(db, people, title=f"Project {n}") for n in range(3)]
    calls = []
    real_publish = review_services.publish_project
    monkeypatch.setattr(review_services, "publish_project", lambda user, project: calls.append(project.id) or real_publish(user, project))
    login(people.coordinator)

    response = post_bulk(client, "projects", [project.id for project in projects], "publish")

    assert response.status_code == 303
    assert response.headers["Location"] == "/review?tab=projects"
    assert statuses(db, Project, projects) == ["published"] * 3
    assert sorted(calls) == sorted(project.id for project in projects)
    assert "Published 3 projects." in client.get(response.headers["Location"]).text


def test_bulk_publish_resubmitted(client, db, people, login):
    project = make_project(db, people, status="resubmitted")
    login(people.coordinator)

    response = post_bulk(client, "resubmitted", [project.id], "publish")

    assert response.status_code == 303
    assert statuses(db, Project, [project]) == ["published"]


def test_bulk_publish_blocked_changes_nothing(client, db, people, login):
    projects = [make_project(db, people, title=f"Project {n}") for n in range(3)]
    publish_project(people.coordinator, projects[1])
    db.session.commit()
    login(people.coordinator)

    response = post_bulk(client, "projects", [project.id for project in projects], "publish")

    assert response.status_code == 409
    assert f"project {projects[1].id} “Project 1” is published" in text_of(response)
    assert "No project was published" in text_of(response)
    assert statuses(db, Project, projects) == ["submitted", "published", "submitted"]
    still_ticked = page(response).xpath("//input[@form='bulk-projects'][@checked]/@value")
    assert still_ticked == [str(projects[0].id), str(projects[2].id)]


def test_bulk_publish_rolls_back_midway_failure(client, db, people, login, monkeypatch):
    projects = [make_project(db, people, title=f"Project {n}") for n in range(2)]
    real_publish = review_services.publish_project

    def publish_then_fail(user, project):
        if project.id == projects[1].id:
            raise Conflict(f"Project {project.id} failed on purpose.")
        return real_publish(user, project)

    monkeypatch.setattr(review_services, "publish_project", publish_then_fail)
    login(people.coordinator)

    response = post_bulk(client, "projects", [project.id for project in projects], "publish")

    assert response.status_code == 409
    assert f"Project {projects[1].id} failed on purpose." in text_of(response)
    assert statuses(db, Project, projects) == ["submitted", "submitted"]


def test_bulk_publish_unknown_project(client, db, people, login):
    project = make_project(db, people)
    login(people.coordinator)

    response = post_bulk(client, "projects", [project.id, 999_999], "publish")

    assert response.status_code == 409
    assert "project 999999 does not exist" in text_of(response)
    assert statuses(db, Project, [project]) == ["submitted"]


@pytest.mark.parametrize("ids, action, message", [
    ([], "publish", "Select at least one project."),
    (["12x"], "publish", "Id '12x' is not a number."),
    (["1"], "delete", "Unknown action 'delete': use publish."),
])
def test_bulk_publish_bad_input(client, db, people, login, ids, action, message):
    project = make_project(db, people)
    login(people.coordinator)

    response = post_bulk(client, "projects", ids, action)

    assert response.status_code == 422
    assert message in text_of(response)
    assert statuses(db, Project, [project]) == ["submitted"]


# Bulk match decisions


@pytest.fixture
def matches(db, people):
    project = make_project(db, people, status="published")
    funders = [make_funder(db, name=f"Fund {n}") for n in range(3)]
    return [make_match(db, project, funder, score=0.3 + n / 10) for n, funder in enumerate(funders)]


def test_bulk_accept(client, db, people, login, matches, monkeypatch):
    calls = []
    real_accept = review_services.accept_match
    monkeypatch.setattr(review_services, "accept_match", lambda user, match_id, reason="": calls.append(match_id) or real_accept(user, match_id, reason))
    login(people.coordinator)

    response = post_bulk(client, "matches", [match.id for match in matches], "accept", "  Good regional fit.  ")

    assert response.status_code == 303
    assert statuses(db, Match, matches) == ["accepted"] * 3
    assert sorted(calls) == sorted(match.id for match in matches)
    for match in matches:
        stored = db.session.get(Match, match.id)
        assert stored.review_reason == "Good regional fit."
        assert stored.reviewed_by_id == people.coordinator.id


def test_bulk_reject_requires_reason(client, db, people, login, matches):
    login(people.coordinator)

    response = post_bulk(client, "matches", [match.id for match in matches], "reject", "   ")

    assert response.status_code == 422
    assert "A reason is required to reject matches." in text_of(response)
    assert page(response).xpath("//p[@id='bulk-reason-error']")
    assert statuses(db, Match, matches) == ["suggested"] * 3


def test_bulk_reject(client, db, people, login, matches):
    login(people.coordinator)

    response = post_bulk(client, "matches", [match.id for match in matches], "reject", "The funder closed its call.")

    assert response.status_code == 303
    assert statuses(db, Match, matches) == ["rejected"] * 3
    assert {db.session.get(Match, match.id).review_reason for match in matches} == {"The funder closed its call."}


def test_bulk_match_blocked_changes_nothing(client, db, people, login, matches):
    review_services.accept_match(people.coordinator, matches[0].id, "Earlier decision.")
    db.session.commit()
    login(people.coordinator)

    response = post_bulk(client, "matches", [match.id for match in matches], "reject", "Out of scope.")

    assert response.status_code == 409
    assert f"match {matches[0].id} of “Rural broadband for Kenya” with Fund 0 is already accepted" in text_of(response)
    assert statuses(db, Match, matches) == ["accepted", "suggested", "suggested"]
    assert db.session.get(Match, matches[1].id).review_reason is None
    assert "Out of scope." in page(response).xpath("//textarea[@name='bulk-reason']")[0].text_content()


# Bulk pledge decisions, through the pledge page's act_on_many


@pytest.fixture
def pledges(db, people):
    need = make_project(db, people, status="published").needs[0]
    return make_pledges(db, people, need)


def test_bulk_confirm_one_ledger_row_each(client, db, people, login, pledges):
    before = event_count(db)
    login(people.coordinator)

    response = post_bulk(client, "pledges", [pledge.id for pledge in pledges], "confirm")

    assert response.status_code == 303
    assert response.headers["Location"] == "/review?tab=pledges"
    assert statuses(db, Pledge, pledges) == ["confirmed"] * 3
    assert event_count(db) == before + 3
    for pledge in pledges:
        last = db.session.scalars(select(PledgeEvent).where(PledgeEvent.pledge_id == pledge.id).order_by(PledgeEvent.id.desc())).first()
        assert (last.from_state, last.to_state, last.actor_id) == ("pledged", "confirmed", people.coordinator.id)


def test_bulk_cancel_requires_reason(client, db, people, login, pledges):
    before = event_count(db)
    login(people.coordinator)

    response = post_bulk(client, "pledges", [pledge.id for pledge in pledges], "cancel")

    assert response.status_code == 422
    assert "A reason is required to cancel pledges." in text_of(response)
    assert statuses(db, Pledge, pledges) == ["pledged"] * 3
    assert event_count(db) == before


def test_bulk_cancel_records_reason(client, db, people, login, pledges):
    login(people.coordinator)

    response = post_bulk(client, "pledges", [pledge.id for pledge in pledges], "cancel", "The donor withdrew.")

    assert response.status_code == 303
    assert statuses(db, Pledge, pledges) == ["cancelled"] * 3
    reasons = db.session.scalars(select(PledgeEvent.reason).where(PledgeEvent.to_state == "cancelled")).all()
    assert reasons == ["The donor withdrew."] * 3


def test_bulk_pledges_blocked_changes_nothing(client, db, people, login, pledges):
    transition(pledges[2].id, "cancel", people.coordinator, reason="Duplicate.")
    db.session.commit()
    before = event_count(db)
    login(people.coordinator)

    response = post_bulk(client, "pledges", [pledge.id for pledge in pledges], "confirm")

    assert response.status_code == 409
    assert f"pledge {pledges[2].id} is cancelled" in text_of(response)
    assert statuses(db, Pledge, pledges) == ["pledged", "pledged", "cancelled"]
    assert event_count(db) == before


def test_disputes_take_no_bulk_action(client, db, people, login):
    login(people.coordinator)

    assert client.post("/review/disputes", data={"bulk-action": "refund"}).status_code in (404, 405)


# Reasons seen by the owner and the funder


def test_owner_sees_return_reason(client, db, people, login):
    project = make_project(db, people, status="returned")
    login(people.owner)

    returned = text_of(client.get(f"/projects/{project.id}"))
    assert "A coordinator returned this project with this reason:" in returned
    assert "Add the number of villages." in returned

    submit_project(people.owner, project)
    db.session.commit()
    resubmitted = text_of(client.get(f"/projects/{project.id}"))
    assert "A coordinator returned this project earlier with this reason:" in resubmitted
    assert "Add the number of villages." in resubmitted


def test_published_project_hides_return_notice(client, db, people, login):
    project = make_project(db, people, status="resubmitted")
    publish_project(people.coordinator, project)
    db.session.commit()
    login(people.owner)

    assert "A coordinator returned this project" not in client.get(f"/projects/{project.id}").text


def test_funder_and_owner_see_decision_reason(client, db, people, login):
    project = make_project(db, people, status="published")
    funder = make_funder(db, organisation_id=people.donor.organisation_id)
    match = make_match(db, project, funder)
    login(people.coordinator)
    assert post_bulk(client, "matches", [match.id], "accept", "Strong fit with the funder's Africa programme.").status_code == 303

    for user in (people.donor, people.owner):
        login(user)
        text = text_of(client.get("/matches/mine"))
        assert "Coordinator's reason: Strong fit with the funder's Africa programme." in text


def test_snapshot_per_return(db, people):
    project = make_project(db, people, status="resubmitted")
    return_project(people.coordinator, project, "Second round: add a budget table.")
    db.session.commit()

    count = db.session.scalar(select(func.count(ProjectSnapshot.id)).where(ProjectSnapshot.project_id == project.id))
    assert count == 2
    assert latest_snapshot(project.id).reason == "Second round: add a budget table."
