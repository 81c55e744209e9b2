"""Fields of each audited object, taken before and after a change so that the changed ones can be stored."""

from financing.audit.services import money
from financing.funders.models import Funder
from financing.pledges.models import MatchFund, Pledge
from financing.projects.models import Project


def project_fields(project: Project) -> dict:
    return {
        "status": project.status,
        "title": project.title,
        "summary": project.summary,
        "description": project.description,
        "start_date": project.start_date,
        "end_date": project.end_date,
        "countries": project.countries,
        "regions": project.regions,
        "themes": project.themes,
        "sectors": project.sectors,
        "needs": [
            {
                "id": need.id, "title": need.title, "goal": money(need.goal_minor, need.currency),
                "deadline": need.deadline, "allow_overfunding": need.allow_overfunding,
            }
            for need in project.needs
        ],
    }


def funder_fields(funder: Funder) -> dict:
    return {
        "name": funder.name,
        "kind": funder.kind,
        "description": funder.description,
        "currency": funder.currency,
        "ticket_min": money(funder.ticket_min_minor, funder.currency),
        "ticket_max": money(funder.ticket_max_minor, funder.currency),
        "annual_budget": money(funder.annual_budget_minor, funder.currency),
        "decision_days": funder.decision_days,
        "countries": funder.countries,
        "regions": funder.regions,
        "themes": funder.themes,
        "sectors": funder.sectors,
    }


def match_fund_fields(fund: MatchFund) -> dict:
    return {
        "funder_id": fund.funder_id,
        "name": fund.name,
        "factor": fund.factor,
        "total_cap": money(fund.total_cap_minor, fund.currency),
        "per_pledge_cap": money(fund.per_pledge_cap_minor, fund.currency),
        "per_project_cap": money(fund.per_project_cap_minor, fund.currency),
        "starts_on": fund.starts_on,
        "ends_on": fund.ends_on,
        "active": fund.active,
        "rules": sorted(f"{rule.kind}:{rule.code}" for rule in fund.rules),
    }


def pledge_fields(pledge: Pledge) -> dict:
    """Return the fields of a pledge that its transitions change; amounts in the need's currency."""
    currency = pledge.need.currency
    return {
        "state": pledge.state,
        "disbursed": money(pledge.disbursed_minor, currency),
        "refunded": money(pledge.refunded_minor, currency),
        "disputed": pledge.disputed,
    }
