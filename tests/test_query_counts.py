"""The number of SQL statements behind the project lists and pages does not grow with the data.

Each page is requested once with a few projects and once with more than a page of them. A
statement per listed project (an N+1 query) or per funding need would show as a difference.
"""

import pytest
from sqlalchemy import event

from financing.core.cache import new_generation
from financing.pledges.services import create_pledge
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project

# More than one page (PER_PAGE is 20), so that the larger set fills a whole page.
FEW, MANY = 2, 26


class StatementCounter:
    """Count the statements that the app's engine sends while active."""

    def __init__(self, engine):
        self.engine = engine
        self.statements: list[str] = []

    def _record(self, conn, cursor, statement, parameters, context, executemany):
        self.statements.append(statement)

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc_info):
        event.remove(self.engine, "before_cursor_execute", self._record)


@pytest.fixture
def people(make_user):
    class People:
        owner = make_user("owner", organisation="Ministry of ICT, Kenya")
        coordinator = make_user("coordinator", organisation=None)
        donor = make_user("donor", organisation=None)

    return People


def add_projects(db, people, count: int, needs: int = 2) -> list[int]:
    """Publish `count` Kenyan broadband projects with `needs` needs each, the first need pledged."""
    ids = []
    for index in range(count):
        data = ProjectInput(
            title=f"Rural broadband, lot {index + 1}", summary="Towers and fibre for rural counties.",
            countries=["KE"], themes=["broadband"], sectors=["22020"],
            needs=[NeedInput(title=f"Phase {number + 1}", goal_minor=5_000_000, currency="EUR") for number in range(needs)],
        )
        project = create_project(people.owner, data)
        submit_project(people.owner, project)
        publish_project(people.coordinator, project)
        db.session.flush()
        create_pledge(people.donor, project.needs[0].id, 100_000, "EUR")
        ids.append(project.id)
    db.session.commit()
    return ids


def statements_for(client, db, path: str) -> int:
    """Count the statements of a request that finds nothing in the page or count cache."""
    client.get(path)  # a first request may load what later requests reuse
    db.session.expire_all()
    new_generation("test")
    with StatementCounter(db.engine) as counter:
        response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.headers["X-Cache"] == "miss"
    return len(counter.statements)


LIST_PATHS = (
    "/projects",
    "/projects?region=africa&theme=broadband",
    "/api/v1/projects",
    "/api/v1/projects?region=africa&theme=broadband",
    "/api/v1/projects?country=KE&sector=22020&page=1",
)


@pytest.mark.parametrize("path", LIST_PATHS)
def test_list_statements_constant(client, db, people, path):
    add_projects(db, people, FEW)
    few = statements_for(client, db, path)

    add_projects(db, people, MANY - FEW)
    many = statements_for(client, db, path)

    assert many == few, f"{path}: {few} statements with {FEW} projects, {many} with {MANY}"


@pytest.mark.parametrize("path", LIST_PATHS)
def test_list_statements_at_most_five(client, db, people, path):
    # The count, the page, and one query each for the needs, tags and organisations shown.
    add_projects(db, people, MANY)

    assert statements_for(client, db, path) <= 5


def test_project_page_statements_constant(client, db, people):
    one_need = add_projects(db, people, 1, needs=1)[0]
    few = statements_for(client, db, f"/projects/{one_need}")

    add_projects(db, people, MANY)
    four_needs = add_projects(db, people, 1, needs=4)[0]
    many = statements_for(client, db, f"/projects/{four_needs}")

    assert many == few, f"project page: {few} statements with one need, {many} with four needs and {MANY} more projects"


def test_project_api_statements_constant(client, db, people):
    one_need = add_projects(db, people, 1, needs=1)[0]
    few = statements_for(client, db, f"/api/v1/projects/{one_need}")

    add_projects(db, people, MANY)
    four_needs = add_projects(db, people, 1, needs=4)[0]
    many = statements_for(client, db, f"/api/v1/projects/{four_needs}")

    assert many == few
