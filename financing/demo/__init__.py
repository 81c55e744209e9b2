"""Demo data: the WSIS Action Line C2 projects of the ITU report, their organisations, funders
and pledges, and one account per role.

Nothing here touches the database until `flask --app wsgi demo load` calls load_demo(). The
content is in data.json, and every goal, deadline, pledge and funder budget in it is illustrative.
"""

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import func, select
from werkzeug.security import check_password_hash

from financing import reference
from financing.accounts.models import ORGANISATION_KINDS, Organisation, User
from financing.accounts.services import create_user, get_or_create_organisation, get_user_by_email
from financing.core.errors import Conflict, ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db
from financing.funders.models import Funder
from financing.funders.services import FunderInput, funder_for_user, update_funder
from financing.money import MoneyError, parse_amount
from financing.pledges.models import Pledge
from financing.pledges.services import create_pledge, transition
from financing.projects.models import FundingNeed, Project
from financing.projects.services import (
    NeedInput,
    ProjectInput,
    check_codes,
    create_project,
    publish_project,
    return_project,
    submit_project,
)

logger = logging.getLogger(__name__)

DATA_FILE = Path(__file__).with_name("data.json")


@dataclass(frozen=True)
class DemoAccount:
    email: str
    password: str
    role: str
    name: str
    # Key of an organisation in data.json, or None.
    organisation: str | None


# Fixed passwords that anyone can read here. They are acceptable only because these accounts
# exist in a local demo database, and only after `demo load` has run. load_demo() raises
# Conflict under the production configuration.
ACCOUNTS = (
    DemoAccount("owner@demo.example.org", "demo-owner-2026", "owner", "Demo project owner", "itu"),
    DemoAccount("donor@demo.example.org", "demo-donor-2026", "donor", "Demo donor", "ec"),
    DemoAccount("coordinator@demo.example.org", "demo-coordinator-2026", "coordinator", "Demo coordinator", None),
    DemoAccount("admin@demo.example.org", "demo-admin-2026", "admin", "Demo admin", None),
)
# Shown in place of the password of a demo account whose password no longer matches.
PASSWORD_CHANGED = "(password changed since the first demo load)"

PROJECT_STATUSES = ("draft", "submitted", "returned", "published")
PLEDGE_ACTIONS = ("confirm", "disburse")
ILLUSTRATIVE_WORD = "illustrative"


def read_data(path: Path = DATA_FILE) -> dict[str, Any]:
    """Read the demo content from its JSON file."""
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def load_demo(data: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """Create the demo organisations, accounts, funders, projects and pledges that are missing.

    Existing rows are found by account email, organisation name (or IATI reference), funder
    organisation, project title within its organisation and pledge idempotency key, and are left
    as they are, so a second load changes nothing. Rows are created through the services, which
    flush, and the caller commits. One exception: funder_for_user() creates a funder only for a
    donor account, so the loader adds the bare row of the other funders and update_funder() fills
    it. Returns (email, password, role) of the four demo accounts.

    Raises Conflict under the production configuration or when a demo account exists with
    another role or organisation, and ValidationFailed when the data is invalid.
    """
    if current_app.config.get("PRODUCTION"):
        raise Conflict(
            "Demo data was not loaded because its account passwords are published, so it is only for local runs.",
            {"FINANCING_ENV": "Unset FINANCING_ENV=production to load the demo into a local database."},
        )
    data = read_data() if data is None else data
    check_data(data)
    loader = _Loader(data, utcnow().date())
    logger.info("demo load started")
    accounts = loader.run()
    logger.info("demo load finished created=%s", loader.created)
    return accounts


# --- Validation of data.json -------------------------------------------------------------


def check_data(data: dict[str, Any]) -> None:
    """Check the demo content before anything is written; raise ValidationFailed naming each bad value."""
    errors: dict[str, str] = {}
    organisations = _check_organisations(data.get("organisations", []), errors)
    for index, contact in enumerate(data.get("contacts", [])):
        if contact.get("organisation") not in organisations:
            errors[f"contacts[{index}].organisation"] = f"Unknown organisation key {contact.get('organisation')!r}."
    for account in ACCOUNTS:
        if account.organisation is not None and account.organisation not in organisations:
            errors[f"accounts.{account.email}.organisation"] = f"Unknown organisation key {account.organisation!r}."
    funders = _check_funders(data.get("funders", []), organisations, errors)
    owned = {account.organisation for account in ACCOUNTS if account.role == "owner"}
    owned |= {contact.get("organisation") for contact in data.get("contacts", []) if contact.get("role") == "owner"}
    projects = _check_projects(data.get("projects", []), organisations, owned, errors)
    _check_pledges(data.get("pledges", []), funders, projects, errors)
    if errors:
        raise ValidationFailed("The demo data is invalid.", errors)


def _check_unique_key(section: str, item: dict, seen: set[str], errors: dict[str, str]) -> str:
    key = item.get("key")
    if not isinstance(key, str) or not key:
        errors[f"{section}.key"] = f"Missing key in {item!r:.80}."
    elif key in seen:
        errors[f"{section}[{key}].key"] = f"Key {key!r} is used twice."
    seen.add(key)
    return key


def _check_codes(prefix: str, item: dict, errors: dict[str, str]) -> None:
    for kind in ("countries", "regions", "themes", "sectors"):
        try:
            check_codes(kind, item.get(kind, []))
        except ValidationFailed as error:
            errors[f"{prefix}.{kind}"] = error.fields[kind]


def _check_amount(field: str, value: Any, currency: Any, errors: dict[str, str]) -> None:
    try:
        parse_amount(value, currency, field)
    except MoneyError as error:
        errors[field] = error.message


def _check_days(field: str, value: Any, errors: dict[str, str]) -> None:
    """Accept None (no date) or a whole number of days."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        errors[field] = f"Value {value!r} must be a whole number of days."


def _check_organisations(items: list[dict], errors: dict[str, str]) -> set[str]:
    keys: set[str] = set()
    for item in items:
        key = _check_unique_key("organisations", item, keys, errors)
        prefix = f"organisations[{key}]"
        if not str(item.get("name", "")).strip():
            errors[f"{prefix}.name"] = "Name is required."
        if item.get("kind") not in ORGANISATION_KINDS:
            errors[f"{prefix}.kind"] = f"Kind {item.get('kind')!r} must be one of {', '.join(ORGANISATION_KINDS)}."
        country = item.get("country")
        if country is not None and country not in reference.countries():
            errors[f"{prefix}.country"] = f"Unknown country {country!r}."
    return keys


def _check_funders(items: list[dict], organisations: set[str], errors: dict[str, str]) -> set[str]:
    keys: set[str] = set()
    for item in items:
        key = _check_unique_key("funders", item, keys, errors)
        prefix = f"funders[{key}]"
        organisation = item.get("organisation")
        if item.get("kind") == "institution" and organisation not in organisations:
            errors[f"{prefix}.organisation"] = f"Unknown organisation key {organisation!r}."
        if item.get("kind") == "individual" and organisation is not None:
            errors[f"{prefix}.organisation"] = "An individual funder has no organisation."
        if item.get("kind") not in ("institution", "individual"):
            errors[f"{prefix}.kind"] = f"Kind {item.get('kind')!r} must be institution or individual."
        for name in ("ticket_min", "ticket_max", "annual_budget"):
            if item.get(name) is not None:
                _check_amount(f"{prefix}.{name}", item[name], item.get("currency"), errors)
        _check_days(f"{prefix}.decision_days", item.get("decision_days"), errors)
        _check_codes(prefix, item, errors)
    return keys


def _check_projects(items: list[dict], organisations: set[str], owned: set[str], errors: dict[str, str]) -> dict[str, dict]:
    """Check each project and its needs, and return the projects by key.

    `owned` contains the keys of the organisations that have an owner account to create projects with.
    """
    projects: dict[str, dict] = {}
    for item in items:
        key = _check_unique_key("projects", item, set(projects), errors)
        projects[key] = item
        prefix = f"projects[{key}]"
        if item.get("organisation") not in organisations:
            errors[f"{prefix}.organisation"] = f"Unknown organisation key {item.get('organisation')!r}."
        elif item.get("organisation") not in owned:
            errors[f"{prefix}.organisation"] = f"Organisation {item.get('organisation')!r} has no owner account: add a contact with role owner."
        if item.get("status") not in PROJECT_STATUSES:
            errors[f"{prefix}.status"] = f"Status {item.get('status')!r} must be one of {', '.join(PROJECT_STATUSES)}."
        if item.get("status") == "returned" and not str(item.get("return_reason") or "").strip():
            errors[f"{prefix}.return_reason"] = "A returned project needs the coordinator's reason."
        if item.get("illustrative") is not True:
            errors[f"{prefix}.illustrative"] = "Every demo project must be marked illustrative: true."
        if ILLUSTRATIVE_WORD not in str(item.get("description", "")).lower():
            errors[f"{prefix}.description"] = "The description must say that the goals and needs are illustrative."
        _check_codes(prefix, item, errors)
        _check_days(f"{prefix}.start_in_days", item.get("start_in_days"), errors)
        _check_days(f"{prefix}.end_in_days", item.get("end_in_days"), errors)
        need_keys: set[str] = set()
        for need in item.get("needs", []):
            need_key = _check_unique_key(f"{prefix}.needs", need, need_keys, errors)
            need_prefix = f"{prefix}.needs[{need_key}]"
            _check_amount(f"{need_prefix}.goal", need.get("goal"), need.get("currency"), errors)
            _check_days(f"{need_prefix}.deadline_in_days", need.get("deadline_in_days"), errors)
        if not need_keys:
            errors[f"{prefix}.needs"] = "A project needs at least one funding need."
    return projects


def _check_pledges(items: list[dict], funders: set[str], projects: dict[str, dict], errors: dict[str, str]) -> None:
    keys: set[str] = set()
    for item in items:
        key = _check_unique_key("pledges", item, keys, errors)
        prefix = f"pledges[{key}]"
        if item.get("funder") not in funders:
            errors[f"{prefix}.funder"] = f"Unknown funder key {item.get('funder')!r}."
        project = projects.get(item.get("project"))
        if project is None:
            errors[f"{prefix}.project"] = f"Unknown project key {item.get('project')!r}."
            continue
        if project.get("status") != "published":
            errors[f"{prefix}.project"] = f"Project {item['project']!r} is {project.get('status')}, but only published projects take pledges."
        need = next((n for n in project.get("needs", []) if n.get("key") == item.get("need")), None)
        if need is None:
            errors[f"{prefix}.need"] = f"Project {item['project']!r} has no need {item.get('need')!r}."
            continue
        if item.get("currency") != need.get("currency"):
            errors[f"{prefix}.currency"] = f"Currency {item.get('currency')!r} differs from the need's currency {need.get('currency')!r}."
        _check_amount(f"{prefix}.amount", item.get("amount"), item.get("currency"), errors)
        for position, action in enumerate(item.get("actions", [])):
            if action.get("action") not in PLEDGE_ACTIONS:
                errors[f"{prefix}.actions[{position}]"] = f"Action {action.get('action')!r} must be one of {', '.join(PLEDGE_ACTIONS)}."
            if action.get("amount") is not None:
                _check_amount(f"{prefix}.actions[{position}].amount", action["amount"], item.get("currency"), errors)


# --- Loading -----------------------------------------------------------------------------


class _Loader:
    """Create the missing demo rows in dependency order and count what it created."""

    def __init__(self, data: dict[str, Any], today: date):
        self.data = data
        self.today = today
        self.organisations: dict[str, Organisation] = {}
        self.users: dict[str, User] = {}
        self.owners: dict[str, User] = {}
        self.funders: dict[str, Funder] = {}
        self.projects: dict[str, Project] = {}
        self.created = {"organisations": 0, "users": 0, "funders": 0, "projects": 0, "pledges": 0}

    def run(self) -> list[tuple[str, str, str]]:
        for spec in self.data.get("organisations", []):
            self.organisations[spec["key"]] = self._organisation(spec)
        accounts = [self._account(account) for account in ACCOUNTS]
        for spec in self.data.get("contacts", []):
            self._contact(spec)
        for spec in self.data.get("funders", []):
            self.funders[spec["key"]] = self._funder(spec)
        for spec in self.data.get("projects", []):
            self.projects[spec["key"]] = self._project(spec)
        for spec in self.data.get("pledges", []):
            self._pledge(spec)
        return accounts

    @property
    def coordinator(self) -> User:
        return self.users["coordinator"]

    def _in_days(self, days: int | None) -> date | None:
        return None if days is None else self.today + timedelta(days=days)

    def _organisation(self, spec: dict) -> Organisation:
        organisation = None
        if spec.get("iati_ref"):
            organisation = db.session.scalar(select(Organisation).where(Organisation.iati_ref == spec["iati_ref"]))
        if organisation is None:
            name = spec["name"].strip()
            organisation = db.session.scalar(select(Organisation).where(func.lower(Organisation.name) == name.lower()))
        if organisation is None:
            organisation = get_or_create_organisation(spec["name"], spec["kind"], spec.get("iati_ref"))
            organisation.country = spec.get("country")
            self.created["organisations"] += 1
        return organisation

    def _user(self, email: str, password: str, role: str, name: str, organisation_key: str | None) -> tuple[User, bool]:
        """Return the account with this email, creating it when missing, and whether it is new."""
        organisation = self.organisations[organisation_key] if organisation_key else None
        user = get_user_by_email(email)
        if user is None:
            user = create_user(email, password, role, name=name)
            user.organisation = organisation
            db.session.flush()
            self.created["users"] += 1
            created = True
        else:
            created = False
            if user.role != role:
                raise Conflict(
                    f"Account {email} exists with role {user.role}, but the demo expects role {role}.",
                    {"email": f"Change the role of {email} to {role}, or delete the account, and load again."},
                )
            if organisation is not None and user.organisation_id != organisation.id:
                raise Conflict(
                    f"Account {email} belongs to another organisation, but the demo expects {organisation.name!r}.",
                    {"email": f"Move {email} to {organisation.name!r}, or delete the account, and load again."},
                )
        if role == "owner" and organisation_key:
            self.owners.setdefault(organisation_key, user)
        return user, created

    def _account(self, account: DemoAccount) -> tuple[str, str, str]:
        user, _ = self._user(account.email, account.password, account.role, account.name, account.organisation)
        self.users[account.role] = user
        password = account.password
        if not check_password_hash(user.password_hash, password):
            logger.warning("demo account id=%s has a changed password", user.id)
            password = PASSWORD_CHANGED
        return user.email, password, user.role

    def _contact(self, spec: dict) -> None:
        # The password is random and never shown, and the account is inactive.
        user, created = self._user(spec["email"], secrets.token_urlsafe(24), spec["role"], spec["name"], spec["organisation"])
        if created:
            user.active = False

    def _funder(self, spec: dict) -> Funder:
        donor = self.users["donor"]
        if spec["kind"] == "individual":
            query = select(Funder).where(
                Funder.kind == "individual", Funder.name == spec["name"],
                Funder.organisation_id.is_(None), Funder.user_id.is_(None),
            )
        else:
            query = select(Funder).where(Funder.organisation_id == self.organisations[spec["organisation"]].id)
        funder = db.session.scalar(query)
        if funder is not None:
            return funder

        editor = self.coordinator
        if spec["kind"] == "institution" and self.organisations[spec["organisation"]].id == donor.organisation_id:
            # The demo donor acts for this funder, so funder_for_user() creates it and the donor edits it.
            funder = funder_for_user(donor)
            editor = donor
        elif spec["kind"] == "institution":
            funder = Funder(name=spec["name"], kind="institution", organisation_id=self.organisations[spec["organisation"]].id)
        else:
            funder = Funder(name=spec["name"], kind="individual")
        db.session.add(funder)
        db.session.flush()
        self.created["funders"] += 1

        currency = spec["currency"]
        update_funder(editor, funder, FunderInput(
            name=spec["name"],
            kind=spec["kind"],
            description=spec.get("description", ""),
            currency=currency,
            ticket_min_minor=self._minor(spec.get("ticket_min"), currency),
            ticket_max_minor=self._minor(spec.get("ticket_max"), currency),
            annual_budget_minor=self._minor(spec.get("annual_budget"), currency),
            decision_days=spec.get("decision_days"),
            regions=list(spec.get("regions", [])),
            countries=list(spec.get("countries", [])),
            themes=list(spec.get("themes", [])),
            sectors=list(spec.get("sectors", [])),
        ))
        return funder

    @staticmethod
    def _minor(amount: str | None, currency: str) -> int | None:
        return None if amount is None else parse_amount(amount, currency)

    def _project(self, spec: dict) -> Project:
        organisation = self.organisations[spec["organisation"]]
        project = db.session.scalar(
            select(Project).where(Project.organisation_id == organisation.id, Project.title == spec["title"])
        )
        if project is not None:
            return project

        # check_data() made sure that every project organisation has an owner account.
        owner = self.owners[spec["organisation"]]
        needs = [
            NeedInput(
                title=need["title"],
                goal_minor=parse_amount(need["goal"], need["currency"]),
                currency=need["currency"],
                deadline=self._in_days(need.get("deadline_in_days")),
                allow_overfunding=bool(need.get("allow_overfunding", False)),
            )
            for need in spec["needs"]
        ]
        project = create_project(owner, ProjectInput(
            title=spec["title"],
            summary=spec.get("summary", ""),
            description=spec.get("description", ""),
            countries=list(spec.get("countries", [])),
            regions=list(spec.get("regions", [])),
            themes=list(spec.get("themes", [])),
            sectors=list(spec.get("sectors", [])),
            start_date=self._in_days(spec.get("start_in_days")),
            end_date=self._in_days(spec.get("end_in_days")),
            needs=needs,
        ), source="demo")
        project.illustrative = True
        self.created["projects"] += 1

        status = spec["status"]
        if status != "draft":
            submit_project(owner, project)
        if status == "published":
            publish_project(self.coordinator, project)
        elif status == "returned":
            return_project(self.coordinator, project, spec["return_reason"])
        db.session.flush()
        return project

    def _need(self, spec: dict) -> FundingNeed:
        project_spec = next(p for p in self.data["projects"] if p["key"] == spec["project"])
        title = next(n["title"] for n in project_spec["needs"] if n["key"] == spec["need"])
        project = self.projects[spec["project"]]
        need = next((n for n in project.needs if n.title == title), None)
        if need is None:
            raise ValidationFailed(
                f"Project {project.id} has no funding need titled {title!r}.",
                {f"pledges[{spec['key']}].need": f"The existing project {project.title!r} has no need {title!r}."},
            )
        return need

    def _pledge(self, spec: dict) -> Pledge:
        funder = self.funders[spec["funder"]]
        need = self._need(spec)
        donor = self.users["donor"]
        # The demo donor pledges for its own funder, and the coordinator records the other funders' commitments.
        own_funder = funder.organisation_id is not None and funder.organisation_id == donor.organisation_id
        creator = donor if own_funder else self.coordinator
        pledge, created = create_pledge(
            creator, need.id, parse_amount(spec["amount"], spec["currency"]), spec["currency"],
            kind="commitment", idempotency_key=f"demo:{spec['key']}", funder=funder,
            reason="Demo pledge with an illustrative amount.",
        )
        if not created:
            return pledge
        self.created["pledges"] += 1
        for action in spec.get("actions", []):
            amount = action.get("amount")
            transition(
                pledge.id, action["action"], self.coordinator,
                amount_minor=None if amount is None else parse_amount(amount, spec["currency"]),
                reason="Demo data.",
            )
        return pledge
