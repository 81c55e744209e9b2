"""Texts of the notification kinds, rendered in the current Flask-Babel locale."""

from collections.abc import Callable, Mapping

from babel import Locale, UnknownLocaleError
from flask import current_app
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from financing.money import format_money

# Labels of the kinds on the settings page.
KIND_LABELS = {
    "project_published": _l("A project of my organisation is published"),
    "project_returned": _l("A coordinator returns a project of my organisation for changes"),
    "pledge_made": _l("A pledge is made to my projects or by my funder"),
    "pledge_confirmed": _l("A pledge is confirmed"),
    "pledge_disbursed": _l("Money of a pledge is disbursed"),
    "pledge_refunded": _l("A pledge is refunded"),
    "match_accepted": _l("A coordinator accepts a match of my projects or my funder"),
}

_SUMMARIES: dict[str, Callable[[Mapping], str]] = {
    "project_published": lambda v: _("Project “%(project)s” is published.", project=v["project"]),
    "project_returned": lambda v: _("Project “%(project)s” was returned for changes.", project=v["project"]),
    "pledge_made": lambda v: _("%(funder)s pledged %(amount)s to “%(project)s”.", **v),
    "pledge_confirmed": lambda v: _("The pledge of %(amount)s by %(funder)s to “%(project)s” is confirmed.", **v),
    "pledge_disbursed": lambda v: _("%(amount)s of the pledge by %(funder)s to “%(project)s” was disbursed.", **v),
    "pledge_refunded": lambda v: _("%(amount)s of the pledge by %(funder)s to “%(project)s” was refunded.", **v),
    "match_accepted": lambda v: _("A coordinator accepted %(funder)s as a funder that fits “%(project)s”.", **v),
}


def supported_locale(code: str | None) -> str:
    """Return the locale code when Babel has data for it, else the default locale (English)."""
    default = current_app.config.get("BABEL_DEFAULT_LOCALE", "en")
    try:
        return str(Locale.parse(code or default))
    except (UnknownLocaleError, ValueError, TypeError):
        return default


def _values(params: Mapping) -> dict[str, str]:
    """Turn stored params into display text; amounts use the current locale's number format."""
    values = {"project": params.get("project", ""), "funder": params.get("funder", ""), "amount": ""}
    if params.get("amount_minor") is not None and params.get("currency"):
        values["amount"] = format_money(params["amount_minor"], params["currency"], str(get_locale() or "en"))
    return values


def summary(kind: str, params: Mapping) -> str:
    """Return the one-sentence text of a notification, used as the in-app text and the email subject."""
    return _SUMMARIES[kind](_values(params))


def reason(params: Mapping) -> str:
    return params.get("reason") or ""
