"""IATI import: the real files in data/iati-activities, re-imports, bad files and the mapping rules."""

import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from financing.accounts.models import Organisation
from financing.extensions import db as _db
from financing.funders.models import Funder
from financing.iati import parser
from financing.iati.importer import NEED_TITLE, ImportFailed, _FileImport, import_file
from financing.pledges.models import RELEASED_STATES, Pledge, PledgeEvent
from financing.pledges.services import create_pledge
from financing.projects.models import FundingNeed, Project, ProjectTag

DATA = Path(__file__).resolve().parent.parent / "data"
FILES = sorted((DATA / "iati-activities").glob("*.xml"))
MODELS = (Project, ProjectTag, FundingNeed, Pledge, PledgeEvent, Funder, Organisation)


def data_file(name: str) -> Path:
    return DATA / "iati-activities" / name


def counts() -> dict[str, int]:
    return {model.__name__: _db.session.scalar(select(func.count()).select_from(model)) for model in MODELS}


def activity_count(path: Path) -> int:
    return len(etree.parse(str(path)).getroot().findall("iati-activity"))


def project(identifier: str) -> Project:
    return _db.session.scalar(select(Project).where(Project.iati_identifier == identifier))


def pledges_of(identifier: str) -> list[Pledge]:
    return list(_db.session.scalars(
        select(Pledge).join(FundingNeed).join(Project).where(Project.iati_identifier == identifier).order_by(Pledge.id)
    ))


def check_invariants() -> None:
    """Check the totals and ledger of every imported need and pledge."""
    for need in _db.session.scalars(select(FundingNeed)):
        pledges = list(_db.session.scalars(select(Pledge).where(Pledge.need_id == need.id)))
        active = sum(p.need_amount_minor for p in pledges if p.state not in RELEASED_STATES)
        assert need.pledged_minor == active, need.project.iati_identifier
        assert need.goal_minor > 0
        assert need.allow_overfunding
        confirmed = sum(p.need_amount_minor for p in pledges if p.state in ("confirmed", "partly_disbursed", "disbursed"))
        assert need.status == ("funded" if confirmed >= need.goal_minor else "open"), need.project.iati_identifier
    for pledge in _db.session.scalars(select(Pledge)):
        assert pledge.events, pledge.import_key
        assert pledge.events[-1].to_state == pledge.state, pledge.import_key
        if pledge.import_key:
            assert all(event.reason.startswith("IATI import") for event in pledge.events)
        assert 0 <= pledge.disbursed_minor <= pledge.need_amount_minor
        assert pledge.currency == pledge.need.currency


ACTIVITY = """
  <iati-activity default-currency="USD" xml:lang="fr">
    <iati-identifier>XX-TEST-1</iati-identifier>
    <reporting-org ref="XX-REP" type="21"><narrative>Connect NGO</narrative></reporting-org>
    <title>
      <narrative>Fibre pour les écoles</narrative>
      <narrative xml:lang="en">{title}</narrative>
    </title>
    <description type="1"><narrative xml:lang="en">Connect 40 rural schools to the national backbone.</narrative></description>
    <participating-org ref="XX-DONOR-A" role="1" type="10"><narrative>Donor A</narrative></participating-org>
    <participating-org role="1" type="60"><narrative>Foundation B</narrative></participating-org>
    <recipient-country code="KE" percentage="60"/>
    <recipient-country code="YU" percentage="40"/>
    <recipient-region code="298" vocabulary="1"/>
    <sector code="22040" vocabulary="1" percentage="70"/>
    <sector code="220" vocabulary="2" percentage="30"/>
    <activity-date type="1" iso-date="2024-01-01"/>
    <activity-date type="2" iso-date="2024-02-15"/>
    <activity-date type="3" iso-date="2026-12-31"/>
    <budget type="1"><period-start iso-date="2024-01-01"/><period-end iso-date="2024-12-31"/><value currency="USD">900000</value></budget>
    <budget type="2"><period-start iso-date="2024-01-01"/><period-end iso-date="2024-12-31"/><value currency="USD">1000000</value></budget>
    <budget type="1"><period-start iso-date="2025-01-01"/><period-end iso-date="2025-12-31"/><value>1000000</value></budget>
    <transaction><transaction-type code="2"/><value currency="USD">{commitment_a}</value>
      <provider-org ref="XX-DONOR-A"/></transaction>
    <transaction><transaction-type code="3"/><value>{disbursement_a}</value>
      <provider-org ref="XX-DONOR-A"/></transaction>
    {foundation}
    <transaction><transaction-type code="2"/><value currency="EUR">5000</value>
      <provider-org ref="XX-DONOR-A"/></transaction>
    <transaction><transaction-type code="2"/><value currency="USD">-10</value>
      <provider-org ref="XX-DONOR-A"/></transaction>
    <transaction><transaction-type code="4"/><value currency="USD">100</value></transaction>
  </iati-activity>"""

FOUNDATION = """<transaction><transaction-type code="3"/><value currency="USD">2500.005</value>
      <provider-org><narrative>Foundation B</narrative></provider-org></transaction>"""


def write_activity_file(path: Path, title="School connectivity", commitment_a="300000", disbursement_a="100000", foundation=FOUNDATION) -> Path:
    body = ACTIVITY.format(title=title, commitment_a=commitment_a, disbursement_a=disbursement_a, foundation=foundation)
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<iati-activities version="2.03">{body}\n</iati-activities>\n', encoding="utf-8")
    return path


# Real files


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_real_file_imports(db, path):
    report = import_file(path)

    skipped = sum(report.activities_skipped.values())
    assert report.activities_created + skipped == activity_count(path)
    assert counts()["Project"] == report.activities_created
    assert report.activities_updated == 0
    assert "\n" not in str(report)
    check_invariants()


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_real_file_reimport_changes_nothing(db, path):
    import_file(path)
    before = counts()

    report = import_file(path)

    assert counts() == before
    assert report.activities_created == 0
    assert report.funders_created == 0
    assert report.organisations_created == 0
    assert report.pledges_created == 0
    assert report.pledges_updated == 0
    assert report.pledges_cancelled == 0
    check_invariants()


def test_cli_imports_all_files_twice(app, db):
    runner = app.test_cli_runner()

    first = runner.invoke(args=["iati", "import", *map(str, FILES)])
    after_first = counts()
    second = runner.invoke(args=["iati", "import", *map(str, FILES)])

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert counts() == after_first
    assert after_first["Project"] == sum(activity_count(path) for path in FILES)
    assert first.output.count("activities:") == len(FILES)
    assert "0 created, 100 updated" in second.output
    check_invariants()


def test_canada_countries_and_currency(db):
    import_file(data_file("canada_CA-3-D002451001_multicountry.xml"))

    canada = project("CA-3-D002451001")
    need = canada.needs[0]
    assert canada.countries == ["BF", "BO", "CI", "KH", "ML", "NI", "VN"]
    assert sum(tag.percentage for tag in canada.tags if tag.kind == "country") == Decimal("100")
    assert canada.title == "Partnerships for Municipal Innovation in Local Economic Development"
    assert canada.organisation.iati_ref == "CA-3"
    assert canada.organisation.kind == "government"
    assert need.title == NEED_TITLE
    assert need.currency == "CAD"
    assert [p.funder.iati_ref for p in pledges_of("CA-3-D002451001")] == ["CA"]


def test_indigo_trust_ict_grants(db):
    report = import_file(data_file("indigo-trust_v1.01_2012_ict-grants.xml"))

    ict = list(_db.session.scalars(
        select(Project).join(ProjectTag).where(ProjectTag.kind == "sector", ProjectTag.code == "22040")
    ))
    states = {pledge.state for pledge in _db.session.scalars(select(Pledge))}
    assert report.activities_created == 57
    assert len(ict) == 42
    assert all("broadband" in item.themes for item in ict)
    assert "disbursed" in states
    assert "confirmed" in states
    assert _db.session.scalar(select(func.sum(Pledge.disbursed_minor))) > 0
    assert project("GB-CHC-1075920-IND106").organisation.iati_ref == "GB-CHC-1075920"
    assert project("GB-CHC-1075920-IND106").needs[0].currency == "GBP"


def test_ifad_xdr_transactions_skipped(db):
    path = data_file("ifad_1100001761_liberia_xdr-usd.xml")
    root = etree.parse(str(path)).getroot()
    xdr = [value for value in root.iter("value") if value.get("currency") == "XDR"]
    usd_commitments = sum(
        Decimal(t.find("value").text) for t in root.iter("transaction")
        if t.find("transaction-type").get("code") == "2" and t.find("value").get("currency") == "USD"
    )

    report = import_file(path)

    pledges = pledges_of("XM-DAC-41108-1100001761")
    assert len(xdr) > 0
    assert report.transactions_skipped["other currency (no stored rate)"] == len(xdr)
    assert "other currency (no stored rate)" in str(report)
    assert len(pledges) == 1
    assert pledges[0].currency == "USD"
    assert pledges[0].amount_minor == int(usd_commitments * 100)
    assert report.codes_skipped["sector category (vocabulary 2)"] == 1
    assert project("XM-DAC-41108-1100001761").sectors == []


def test_ec_funders_have_refs(db):
    import_file(data_file("ec-intpa_dportal-2021-06_p083.xml"))

    refs = set(_db.session.scalars(select(Funder.iati_ref)))
    pledge_refs = {pledge.funder.iati_ref for pledge in _db.session.scalars(select(Pledge))}
    assert refs == {"XI-IATI-EC_INTPA"}
    assert pledge_refs == {"XI-IATI-EC_INTPA"}
    assert _db.session.scalar(select(Funder)).organisation.iati_ref == "XI-IATI-EC_INTPA"


def test_undp_counts_incoming_money_once(db):
    report = import_file(data_file("undp_dportal-2021-06_p102.xml"))

    need = project("XM-DAC-41114-OUTPUT-00120645").needs[0]
    funders = {pledge.funder.iati_ref for pledge in pledges_of("XM-DAC-41114-OUTPUT-00120645")}
    assert report.transactions_skipped["passed on by the reporting organisation"] > 0
    # The incoming commitments of this output add up to 2,730,576 USD, as does its budget.
    assert need.pledged_minor == 273057600
    assert need.goal_minor == 273057600
    assert {"XM-DAC-41114", "41122", "XM-DAC-41302"} <= funders


def test_undp_drc_keyed_by_other_identifier(db):
    report = import_file(data_file("undp-drc_pre-v1_2010.xml"))

    drc = project("UNDP-00072538")
    assert report.activities_skipped == {}
    assert drc.title == "DDR A L'EST DE LA RDC"
    assert drc.countries == ["CD"]
    assert drc.organisation.name == "UNDP"
    assert drc.needs[0].goal_minor == 25809637
    assert report.projects_without_need > 0
    # The file's participating-org refs are local codes such as "'00012", so funders use names.
    assert all(ref.startswith("name:") for ref in _db.session.scalars(select(Funder.iati_ref)))


def test_worldbank_tz_repayments_skipped(db):
    report = import_file(data_file("worldbank-tz_v1.01_2013.xml"))

    assert report.transactions_skipped["type interest payment"] == 158
    assert report.transactions_skipped["type loan repayment"] == 55
    assert {pledge.funder.iati_ref for pledge in _db.session.scalars(select(Pledge))} == {"44002"}
    assert project("44000-P002753").organisation.kind == "international"


# Mapping rules on a small file


def test_activity_mapping(db, tmp_path):
    report = import_file(write_activity_file(tmp_path / "school.xml"))

    school = project("XX-TEST-1")
    need = school.needs[0]
    donor_a, foundation = pledges_of("XX-TEST-1")
    assert school.title == "School connectivity"
    assert school.summary == "Connect 40 rural schools to the national backbone."
    assert school.status == "published"
    assert school.source == "iati"
    assert school.organisation.kind == "ngo"
    assert str(school.start_date) == "2024-02-15"
    assert str(school.end_date) == "2026-12-31"
    assert school.countries == ["KE"]
    assert school.regions == ["africa", "arab-states"]
    assert school.sectors == ["22040"]
    assert school.themes == ["broadband", "ict-applications", "public-access"]
    assert {tag.code: tag.percentage for tag in school.tags if tag.kind == "theme"}["broadband"] == Decimal("70")
    assert report.codes_skipped == {"withdrawn country code": 1, "sector category (vocabulary 2)": 1}
    # Revised over original for 2024 plus the 2025 budget.
    assert need.goal_minor == 200000000
    assert need.currency == "USD"
    assert donor_a.funder.iati_ref == "XX-DONOR-A"
    assert (donor_a.state, donor_a.amount_minor, donor_a.disbursed_minor) == ("partly_disbursed", 30000000, 10000000)
    # 2500.005 USD rounds half-up to 2500.01 USD.
    assert foundation.funder.iati_ref == "name:Foundation B"
    assert (foundation.state, foundation.amount_minor) == ("disbursed", 250001)
    assert report.values_rounded == 1
    assert need.pledged_minor == 30000000 + 250001
    assert report.transactions_skipped == {"other currency (no stored rate)": 1, "zero or negative value": 1, "type expenditure": 1}
    assert [(e.from_state, e.to_state, e.amount_minor) for e in donor_a.events] == [
        (None, "confirmed", 30000000), ("confirmed", "partly_disbursed", 10000000),
    ]
    check_invariants()


def test_changed_file_updates_pledges(db, tmp_path, make_user):
    import_file(write_activity_file(tmp_path / "school.xml"))
    need = project("XX-TEST-1").needs[0]
    donor = make_user("donor", organisation="Kenya ICT Trust")
    manual, _ = create_pledge(donor, need.id, 500000, "USD")
    _db.session.commit()

    report = import_file(write_activity_file(
        tmp_path / "school.xml", title="School connectivity, phase 2", commitment_a="400000", disbursement_a="400000", foundation="",
    ))

    school = project("XX-TEST-1")
    donor_a, foundation, manual_now = pledges_of("XX-TEST-1")
    assert counts()["Project"] == 1
    assert school.title == "School connectivity, phase 2"
    assert (report.activities_updated, report.pledges_updated, report.pledges_cancelled) == (1, 1, 1)
    assert (donor_a.state, donor_a.amount_minor, donor_a.disbursed_minor) == ("disbursed", 40000000, 40000000)
    assert [e.to_state for e in donor_a.events] == ["confirmed", "partly_disbursed", "partly_disbursed", "disbursed"]
    assert foundation.state == "cancelled"
    assert foundation.events[-1].reason == "IATI import: no longer reported in the file"
    assert manual_now.id == manual.id
    assert manual_now.state == "pledged"
    assert school.needs[0].pledged_minor == 40000000 + 500000
    check_invariants()


def test_modified_real_file_updates_title(db, tmp_path):
    original = data_file("indigo-trust_v1.01_2012_ict-grants.xml")
    tree = etree.parse(str(original))
    first = tree.getroot().find("iati-activity")
    identifier = first.findtext("iati-identifier")
    first.find("title").text = "Renamed grant"
    copy = tmp_path / original.name
    tree.write(str(copy), encoding="UTF-8", xml_declaration=True)
    import_file(original)
    before = counts()

    report = import_file(copy)

    assert counts() == before
    assert report.activities_updated == 57
    assert project(identifier).title == "Renamed grant"


def test_activity_without_identifier_skipped(db, tmp_path):
    path = tmp_path / "anonymous.xml"
    path.write_text(
        '<iati-activities version="1.0"><iati-activity default-currency="USD">'
        "<reporting-org>UNDP</reporting-org><title>No identifier</title></iati-activity>"
        "</iati-activities>"
    )

    report = import_file(path)

    assert report.activities_skipped == {"no usable identifier": 1}
    assert counts()["Project"] == 0


# Bad files


def test_truncated_file_changes_nothing(app, db, tmp_path):
    import_file(data_file("canada_CA-3-D002451001_multicountry.xml"))
    before = counts()
    # Three quarters of the 656 activities come before the cut, so several batches were
    # already flushed when the syntax error is found.
    text = data_file("undp-drc_pre-v1_2010.xml").read_text(encoding="utf-8")
    bad = tmp_path / "bad.xml"
    bad.write_text(text[: len(text) * 3 // 4], encoding="utf-8")

    with pytest.raises(ImportFailed) as failure:
        import_file(bad)
    cli = app.test_cli_runner().invoke(args=["iati", "import", str(bad)])

    assert str(failure.value).startswith("bad.xml line ")
    assert failure.value.line > 1
    assert failure.value.line > 10000
    assert counts() == before
    assert project("UNDP-00072538") is None
    assert cli.exit_code != 0
    assert "bad.xml line" in cli.output


def test_database_error_rolls_back(db, monkeypatch):
    calls = {"count": 0}
    original = _FileImport.sync_funding

    def failing_sync_funding(self, *args):
        calls["count"] += 1
        if calls["count"] == 250:
            raise OperationalError("UPDATE funding_need", {}, Exception("connection lost"))
        return original(self, *args)

    monkeypatch.setattr(_FileImport, "sync_funding", failing_sync_funding)

    with pytest.raises(ImportFailed) as failure:
        import_file(data_file("undp-drc_pre-v1_2010.xml"))

    assert "database error" in str(failure.value)
    assert failure.value.line > 1
    assert counts()["Project"] == 0
    assert counts()["Funder"] == 0


def test_syntax_error_names_line(db, tmp_path):
    bad = tmp_path / "broken.xml"
    bad.write_text('<?xml version="1.0"?>\n<iati-activities>\n<iati-activity>\n<title>Open</titel>\n</iati-activity>\n</iati-activities>\n')

    with pytest.raises(ImportFailed) as failure:
        import_file(bad)

    assert failure.value.line == 4
    assert str(failure.value).startswith("broken.xml line 4: XML syntax error")


def test_external_entity_not_expanded(db, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    path = tmp_path / "xxe.xml"
    path.write_text(
        f'<?xml version="1.0"?>\n<!DOCTYPE iati-activities [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
        '<iati-activities version="2.03"><iati-activity default-currency="EUR">'
        "<iati-identifier>XX-XXE-1</iati-identifier>"
        '<reporting-org ref="XX-REP"><narrative>Reporter</narrative></reporting-org>'
        "<title><narrative>Title &xxe;</narrative></title>"
        '<description><narrative>&xxe;</narrative></description>'
        "</iati-activity></iati-activities>"
    )

    import_file(path)

    imported = project("XX-XXE-1")
    assert imported.title == "Title"
    assert "TOP-SECRET" not in imported.description
    assert "TOP-SECRET" not in imported.summary


def test_entity_bomb_rejected(db, tmp_path):
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">' for i in range(1, 10)
    )
    path = tmp_path / "bomb.xml"
    path.write_text(
        f'<?xml version="1.0"?>\n<!DOCTYPE iati-activities [{entities}]>\n'
        '<iati-activities version="2.03"><iati-activity>'
        '<iati-identifier>XX-BOMB-1</iati-identifier><reporting-org ref="XX-REP">Reporter</reporting-org>'
        "<title>&lol9;</title></iati-activity></iati-activities>"
    )

    with pytest.raises(ImportFailed) as failure:
        import_file(path)

    assert "entity amplification" in str(failure.value)
    assert counts()["Project"] == 0


def test_file_size_limit(app, db, tmp_path):
    path = write_activity_file(tmp_path / "school.xml")

    with pytest.raises(ImportFailed) as explicit:
        import_file(path, max_bytes=100)
    app.config["IATI_MAX_FILE_BYTES"] = 200
    try:
        with pytest.raises(ImportFailed) as configured:
            import_file(path)
    finally:
        del app.config["IATI_MAX_FILE_BYTES"]

    assert "more than the limit of 100 bytes" in str(explicit.value)
    assert "more than the limit of 200 bytes" in str(configured.value)
    assert counts()["Project"] == 0


def test_organisation_file_rejected(db):
    path = DATA / "iati-organisations" / "aidsalliance_organisation_2013.xml"

    with pytest.raises(ImportFailed) as failure:
        import_file(path)

    assert "not an IATI activity file" in str(failure.value)
    assert failure.value.path.name == path.name


def test_missing_file_fails_cleanly(db, tmp_path):
    with pytest.raises(ImportFailed) as failure:
        import_file(tmp_path / "missing.xml")

    assert str(failure.value).startswith("missing.xml: cannot read the file")


# Parser


def test_parser_reads_1_0x_words(tmp_path):
    path = tmp_path / "old.xml"
    path.write_text(
        '<iati-activities version="1.01"><iati-activity default-currency="GBP" xml:lang="en">'
        '<iati-identifier>GB-1</iati-identifier><reporting-org ref="GB-1" type="60">Trust</reporting-org>'
        '<title>Old style</title><participating-org role="Funding" ref="GB-1">"Trust"</participating-org>'
        '<activity-date type="start-actual" iso-date="2011-05-11"/><activity-date type="end-planned">2012-05-10</activity-date>'
        '<transaction><transaction-type code="Commitment">C</transaction-type><value>10</value></transaction>'
        '<transaction><transaction-type code="IF"/><value>5</value></transaction>'
        '<transaction><transaction-type code="Disbursement">D</transaction-type><value currency="">3</value></transaction>'
        "</iati-activity></iati-activities>"
    )

    (activity,) = parser.iter_activities(path)

    assert activity.title == "Old style"
    assert [t.type for t in activity.transactions] == ["outgoing_commitment", "incoming_funds", "disbursement"]
    assert activity.transactions[2].currency is None
    assert activity.funding_orgs[0].name == "Trust"
    assert activity.dates == {"start_actual": "2011-05-11", "end_planned": "2012-05-10"}


def test_shorten_cuts_at_word():
    text = "word " * 100

    short = parser.shorten(text, 22)

    assert short == "word word word word\u2026"
    assert parser.shorten("short text") == "short text"


def test_error_names_copied_file(db, tmp_path):
    copy = tmp_path / "renamed.xml"
    shutil.copy(data_file("ec-intpa_2019-405-854_liberia.xml"), copy)
    copy.write_bytes(copy.read_bytes().replace(b"</iati-activities>", b"</iati-activity>"))

    with pytest.raises(ImportFailed) as failure:
        import_file(copy)

    assert str(failure.value).startswith("renamed.xml line ")
    assert counts()["Project"] == 0
