"""marshmallow schemas of the API: what requests may contain and what responses return.

Input schemas reject unknown fields (marshmallow's default) so that a typo is reported
instead of being ignored. Output schemas dump the model objects; money is written as
{"amount": "<decimal string>", "currency": "<ISO 4217>"}.
"""

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate

from financing import reference
from financing.api.docs import MAX_ID
from financing.api.fields import Amount, MoneyField, StrictBoolean, StrictInteger, parse_money
from financing.funders.models import FUNDER_KINDS
from financing.matching.models import MATCH_STATUSES
from financing.pledges.models import PLEDGE_KINDS, PLEDGE_STATES
from financing.projects.models import PROJECT_STATUSES
from financing.projects.services import SORTS

# Largest page size of every list; the same as Config.MAX_PER_PAGE.
MAX_PER_PAGE = 100
# Largest page number, which keeps OFFSET a small integer.
MAX_PAGE = 100_000
# Largest "older than" filter, in days.
MAX_AGE_DAYS = 36_500

# Fields that responses contain but requests may not set; naming them in a request gets
# a clearer error than "Unknown field."
READ_ONLY_FIELDS = frozenset({
    "id", "status", "organisation", "iati_identifier", "created_at", "updated_at",
    "published_at", "return_reason", "pledged", "remaining", "state", "project_id",
    "funder_id", "disbursed",
})


def _check_code(kind: str, known, normalise=str.strip):
    """Build a validator that accepts a code of the reference data, after `normalise`."""
    def check(value: str) -> None:
        if normalise(value) not in known():
            raise ValidationError(f"Unknown {kind} {value!r}.")
    return check


def _text(max_length: int, **kwargs) -> fields.String:
    return fields.String(validate=validate.Length(max=max_length), **kwargs)


def code_list(description: str) -> fields.List:
    return fields.List(fields.String(validate=validate.Length(max=30)), metadata={"description": description})


# Output -------------------------------------------------------------------------------


class OutputSchema(Schema):
    """Base of response schemas.

    EXCLUDE keeps "additionalProperties: false" out of the OpenAPI document, because
    responses may gain fields.
    """

    class Meta:
        unknown = EXCLUDE


class MoneySchema(OutputSchema):
    amount = fields.String(
        required=True,
        metadata={
            "description": "Decimal string with exactly the currency's number of decimals.",
            "example": "4800000.00",
        },
    )
    currency = fields.String(required=True, metadata={"description": "ISO 4217 code.", "example": "EUR"})


class OrganisationRefSchema(OutputSchema):
    id = fields.Integer()
    name = fields.String()


class NeedSchema(OutputSchema):
    id = fields.Integer()
    title = fields.String()
    goal = MoneyField(attribute="goal_minor")
    pledged = MoneyField(attribute="pledged_minor", metadata={"description": "Pledges that are not cancelled or refunded."})
    remaining = MoneyField(attribute="remaining_minor")
    deadline = fields.Date(allow_none=True, metadata={"description": "Last day for pledges, in UTC."})
    allow_overfunding = fields.Boolean()
    status = fields.String(metadata={"enum": ["open", "funded", "closed"]})


class ProjectSchema(OutputSchema):
    id = fields.Integer()
    title = fields.String()
    summary = fields.String()
    description = fields.String(metadata={"description": "Markdown source."})
    status = fields.String(metadata={"enum": list(PROJECT_STATUSES)})
    organisation = fields.Nested(OrganisationRefSchema)
    countries = fields.List(fields.String(), metadata={"description": "ISO 3166-1 alpha-2 codes."})
    regions = fields.List(fields.String(), metadata={"description": "ITU-D region slugs."})
    themes = fields.List(fields.String(), metadata={"description": "Theme slugs."})
    sectors = fields.List(fields.String(), metadata={"description": "OECD DAC 5-digit sector codes."})
    iati_identifier = fields.String(allow_none=True)
    start_date = fields.Date(allow_none=True)
    end_date = fields.Date(allow_none=True)
    needs = fields.List(fields.Nested(NeedSchema))
    return_reason = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    published_at = fields.DateTime(allow_none=True)


class FunderSchema(OutputSchema):
    id = fields.Integer()
    name = fields.String()
    kind = fields.String(metadata={"enum": list(FUNDER_KINDS)})
    description = fields.String()
    currency = fields.String(metadata={"description": "ISO 4217 code of the ticket range and the budget."})
    regions = fields.List(fields.String())
    countries = fields.List(fields.String())
    themes = fields.List(fields.String())
    sectors = fields.List(fields.String())
    ticket_min = MoneyField(attribute="ticket_min_minor", allow_none=True)
    ticket_max = MoneyField(attribute="ticket_max_minor", allow_none=True)
    annual_budget = MoneyField(attribute="annual_budget_minor", allow_none=True)
    decision_days = fields.Integer(allow_none=True)
    learned_from = fields.Integer(metadata={"description": "Number of IATI activities the preferences were learned from."})


class PledgeSchema(OutputSchema):
    id = fields.Integer()
    need_id = fields.Integer()
    project_id = fields.Integer()
    funder_id = fields.Integer()
    kind = fields.String(metadata={"enum": list(PLEDGE_KINDS)})
    amount = MoneyField(attribute="amount_minor")
    state = fields.String(metadata={"enum": list(PLEDGE_STATES)})
    disbursed = MoneyField(attribute="disbursed_minor", currency=lambda pledge: pledge.need.currency)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class MatchPartsSchema(OutputSchema):
    region = fields.Float()
    theme = fields.Float()
    ticket = fields.Float()
    capacity = fields.Float()
    time = fields.Float()


class MatchSchema(OutputSchema):
    id = fields.Integer()
    project_id = fields.Integer()
    need_id = fields.Integer()
    funder_id = fields.Integer()
    score = fields.Float(metadata={"minimum": 0, "maximum": 1})
    parts = fields.Nested(MatchPartsSchema)
    explanation = fields.String()
    status = fields.String(metadata={"enum": list(MATCH_STATUSES)})
    review_reason = fields.String(allow_none=True)
    reviewed_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class PageSchema(OutputSchema):
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()


class ProjectPageSchema(PageSchema):
    items = fields.List(fields.Nested(ProjectSchema))


class FunderPageSchema(PageSchema):
    items = fields.List(fields.Nested(FunderSchema))


class MatchPageSchema(PageSchema):
    items = fields.List(fields.Nested(MatchSchema))


class PledgePageSchema(PageSchema):
    items = fields.List(fields.Nested(PledgeSchema))


class ErrorDetailSchema(OutputSchema):
    code = fields.String(metadata={"example": "invalid"})
    message = fields.String()
    fields_ = fields.Dict(
        data_key="fields", keys=fields.String(), values=fields.String(),
        metadata={"description": "Message per invalid field, keyed by its dotted path such as needs.0.goal."},
    )


class ErrorSchema(OutputSchema):
    error = fields.Nested(ErrorDetailSchema)


class TotalsSchema(OutputSchema):
    projects = fields.Integer()
    goal = fields.List(fields.Nested(MoneySchema), metadata={"description": "One entry per currency."})
    pledged = fields.List(fields.Nested(MoneySchema), metadata={"description": "One entry per currency."})


class StatusTotalsSchema(TotalsSchema):
    status = fields.String()


class RegionTotalsSchema(TotalsSchema):
    region = fields.String()


class ThemeTotalsSchema(TotalsSchema):
    theme = fields.String()


class StatsSchema(OutputSchema):
    total = fields.Nested(TotalsSchema)
    by_status = fields.List(fields.Nested(StatusTotalsSchema))
    by_region = fields.List(fields.Nested(RegionTotalsSchema))
    by_theme = fields.List(fields.Nested(ThemeTotalsSchema))


# Input --------------------------------------------------------------------------------


class InputSchema(Schema):
    """Base of request schemas; unknown fields raise, which is marshmallow's default."""


class MoneyInputSchema(InputSchema):
    """A money object in a request, documented for OpenAPI; MoneyField does the loading."""

    amount = fields.Raw(
        required=True,
        metadata={
            "oneOf": [{"type": "string", "example": "4800000.00"}, {"type": "number"}],
            "description": "A decimal string, or an exact JSON number, with at most the currency's decimals.",
        },
    )
    currency = fields.String(required=True, metadata={"example": "EUR"})


class NeedInputSchema(InputSchema):
    """A funding need; for an existing need (given by id) the optional fields left out keep their value."""

    id = StrictInteger(
        validate=validate.Range(min=1, max=MAX_ID),
        metadata={"description": "Keeps an existing need when a project is updated."},
    )
    title = _text(300, required=True)
    goal = MoneyField(required=True)
    deadline = fields.Date(allow_none=True, metadata={"description": "Last day for pledges, in UTC; null for none (the default)."})
    allow_overfunding = StrictBoolean(metadata={"description": "Whether pledges may pass the goal; false by default."})


class ProjectInputSchema(InputSchema):
    title = _text(300, required=True)
    summary = _text(1000, load_default="")
    description = _text(100_000, load_default="")
    countries = code_list("ISO 3166-1 alpha-2 codes.")
    regions = code_list("ITU-D region slugs.")
    themes = code_list("Theme slugs.")
    sectors = code_list("OECD DAC 5-digit sector codes.")
    start_date = fields.Date(allow_none=True)
    end_date = fields.Date(allow_none=True)
    needs = fields.List(fields.Nested(NeedInputSchema), required=True, validate=validate.Length(min=1, max=50))


class ProjectPatchSchema(ProjectInputSchema):
    """A partial update: fields left out keep their value; `needs`, when given, replaces the list."""

    title = _text(300)
    summary = _text(1000)
    description = _text(100_000)
    needs = fields.List(
        fields.Nested(NeedInputSchema), validate=validate.Length(min=1, max=50),
        metadata={"description": "The complete list of needs; give an existing need's id to keep it."},
    )


class PledgeInputSchema(InputSchema):
    need_id = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_ID))
    amount = Amount(
        required=True,
        metadata={"oneOf": [{"type": "string", "example": "250000.00"}, {"type": "number"}]},
    )
    currency = fields.String(required=True, metadata={"example": "EUR"})
    kind = fields.String(load_default="commitment", validate=validate.OneOf(PLEDGE_KINDS))

    @post_load
    def to_money(self, data, **kwargs):
        data["money"] = parse_money(data.pop("amount"), data.pop("currency"), field="amount")
        return data


class DisburseInputSchema(InputSchema):
    amount = Amount(
        required=True,
        metadata={"oneOf": [{"type": "string", "example": "100000.00"}, {"type": "number"}],
                  "description": "Amount in the need's currency."},
    )
    currency = fields.String(metadata={"description": "Optional; must be the need's currency."})


class FunderPatchSchema(InputSchema):
    """A partial update of a funder profile: fields left out keep their value, null clears an amount.

    The amounts share one currency, the profile's `currency`.
    """

    name = fields.String(validate=validate.Length(min=1, max=300))
    kind = fields.String(validate=validate.OneOf(FUNDER_KINDS))
    description = _text(100_000)
    currency = fields.String(validate=validate.Length(max=3), metadata={"description": "ISO 4217 code of the amounts.", "example": "EUR"})
    ticket_min = MoneyField(allow_none=True)
    ticket_max = MoneyField(allow_none=True)
    annual_budget = MoneyField(allow_none=True)
    decision_days = StrictInteger(allow_none=True, validate=validate.Range(min=0, max=3650),
                                  metadata={"description": "Days the funder needs to decide on a proposal."})
    regions = code_list("ITU-D region slugs.")
    countries = code_list("ISO 3166-1 alpha-2 codes.")
    themes = code_list("Theme slugs.")
    sectors = code_list("OECD DAC 5-digit sector codes.")


class ReasonSchema(InputSchema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=2000))


class OptionalReasonSchema(InputSchema):
    reason = _text(2000, load_default="")


class EmptySchema(InputSchema):
    """A request without fields; an empty body is accepted too."""


# Query strings ------------------------------------------------------------------------


class QueryBoolean(fields.Boolean):
    """A query-string flag: exactly "true" or "false"."""

    truthy = {"true"}
    falsy = {"false"}


class PageArgsSchema(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=MAX_PAGE))
    per_page = fields.Integer(load_default=20, validate=validate.Range(min=1, max=MAX_PER_PAGE))


class ProjectArgsSchema(PageArgsSchema):
    region = fields.String(validate=validate.OneOf(list(reference.regions())))
    country = fields.String(validate=_check_code("country", reference.countries, str.upper))
    theme = fields.String(validate=validate.OneOf(list(reference.themes())))
    sector = fields.String(validate=_check_code("sector", reference.sectors))
    status = fields.String(validate=validate.OneOf(PROJECT_STATUSES))
    q = _text(200, metadata={"description": "Words in the title or summary."})
    sort = fields.String(load_default="newest", validate=validate.OneOf(SORTS))


class ProjectListArgsSchema(ProjectArgsSchema):
    mine = QueryBoolean(
        load_default=False,
        metadata={"description": "true lists the projects of your own organisation in every status; needs credentials."},
    )


class FunderArgsSchema(PageArgsSchema):
    kind = fields.String(validate=validate.OneOf(FUNDER_KINDS))
    region = fields.String(
        validate=validate.OneOf(list(reference.regions())),
        metadata={"description": "Funders that prefer the region or one of its countries."},
    )
    theme = fields.String(
        validate=validate.OneOf(list(reference.themes())),
        metadata={"description": "Funders that prefer the theme or one of its DAC sectors."},
    )


class PledgeArgsSchema(PageArgsSchema):
    state = fields.String(validate=validate.OneOf(PLEDGE_STATES))
    kind = fields.String(validate=validate.OneOf(PLEDGE_KINDS))
    need_id = fields.Integer(validate=validate.Range(min=1, max=MAX_ID))
    project_id = fields.Integer(validate=validate.Range(min=1, max=MAX_ID))
    funder_id = fields.Integer(validate=validate.Range(min=1, max=MAX_ID))
    currency = fields.String(
        validate=_check_code("currency", reference.currencies, str.upper),
        metadata={"description": "ISO 4217 code of the pledged amount."},
    )
    older_than = fields.Integer(
        validate=validate.Range(min=0, max=MAX_AGE_DAYS),
        metadata={"description": "Only pledges made at least this many days ago."},
    )


class MatchArgsSchema(PageArgsSchema):
    status = fields.String(validate=validate.OneOf(MATCH_STATUSES))
    region = fields.String(validate=validate.OneOf(list(reference.regions())))
    theme = fields.String(validate=validate.OneOf(list(reference.themes())))
    project_id = fields.Integer(validate=validate.Range(min=1, max=MAX_ID))
    funder_id = fields.Integer(validate=validate.Range(min=1, max=MAX_ID))
