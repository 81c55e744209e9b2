"""Tests of the reference data: lookups, data integrity and the IATI sample files."""

import ast
import json
import shutil
import sys
from pathlib import Path

import pytest
from lxml import etree

from financing import reference
from financing.reference import build, files

REPOSITORY = Path(__file__).resolve().parents[1]
SAMPLES = REPOSITORY / "data" / "iati-activities"
PACKAGE = REPOSITORY / "financing" / "reference"

REGION_SLUGS = ["africa", "americas", "arab-states", "asia-pacific", "cis", "europe"]
THEME_SLUGS = [
    "public-access", "ict-applications", "broadband", "backbones",
    "policy-harmonization", "capacity-building", "spectrum", "broadcasting",
]


def sample_codes() -> dict[str, set[str]]:
    """Collect country, region, sector, sector category and currency codes from the sample files."""
    found: dict[str, set[str]] = {kind: set() for kind in ("country", "region", "sector", "category", "currency")}
    paths = sorted(SAMPLES.glob("*.xml"))
    assert paths, f"no IATI sample files in {SAMPLES}"
    for path in paths:
        for _, element in etree.iterparse(str(path), events=("end",), resolve_entities=False, no_network=True):
            collect(element, found)
            element.clear()
    return found


def collect(element, found: dict[str, set[str]]) -> None:
    """Add the codes that one IATI element carries to found."""
    code = (element.get("code") or "").strip()
    vocabulary = element.get("vocabulary")
    if element.tag == "recipient-country" and code:
        found["country"].add(code)
    elif element.tag == "recipient-region" and code and vocabulary in (None, "1"):
        found["region"].add(code)
    elif element.tag == "sector" and code and vocabulary in (None, "1", "DAC"):
        found["sector"].add(code)
    elif element.tag == "sector" and code and vocabulary in ("2", "DAC-3"):
        found["category"].add(code)
    for attribute in ("currency", "default-currency"):
        if (element.get(attribute) or "").strip():
            found["currency"].add(element.get(attribute).strip())


@pytest.fixture(scope="module")
def samples() -> dict[str, set[str]]:
    return sample_codes()


# Lookups


def test_country_lookup():
    kenya = reference.country("KE")
    assert kenya == reference.Country("KE", "Kenya", "africa")
    assert reference.country(" ke ") is kenya
    assert reference.countries()["KE"] is kenya


def test_region_lookup():
    africa = reference.region("africa")
    assert africa.name == "Africa"
    assert "KE" in africa.countries
    assert "EG" not in africa.countries
    assert reference.region("Arab-States").slug == "arab-states"


def test_theme_lookup():
    broadband = reference.theme("broadband")
    assert broadband.name == "Broadband connectivity (wired and wireless)"
    assert broadband.description
    assert broadband.sectors == frozenset({"22020", "22040"})


def test_sector_lookup():
    ict = reference.sector("22040")
    assert ict.name == "Information and communication technology (ICT)"
    assert ict.category == "220"
    assert not ict.withdrawn
    assert reference.sector_categories()["220"] == "Communications"
    assert reference.sector_category("220") == "Communications"


def test_currency_lookup():
    euro = reference.currency("eur")
    assert euro == reference.Currency("EUR", "Euro", 2)
    assert reference.currencies()["EUR"] is euro


def test_iati_region_lookup():
    south_of_sahara = reference.iati_region("289")
    assert south_of_sahara.name == "South of Sahara, regional"
    assert south_of_sahara.regions == ("africa",)
    assert reference.iati_regions()["289"] is south_of_sahara


def test_sector_names_are_current():
    assert reference.sector("22030").name == "Radio, television, print and online media"
    assert reference.sector("22081").name == "Education and training in ICT, telecommunications and media"


@pytest.mark.parametrize("lookup, error, bad", [
    (reference.country, reference.UnknownCountry, "ZZ"),
    (reference.country, reference.UnknownCountry, "KEN"),
    (reference.region_of_country, reference.UnknownCountry, "QQ"),
    (reference.region, reference.UnknownRegion, "latin-america"),
    (reference.theme, reference.UnknownTheme, "satellites"),
    (reference.sector, reference.UnknownSector, "99999"),
    (reference.sector, reference.UnknownSector, "220"),
    (reference.themes_of_sector, reference.UnknownSector, "22099"),
    (reference.sector_category, reference.UnknownSectorCategory, "229"),
    (reference.currency, reference.UnknownCurrency, "ABC"),
    (reference.currency, reference.UnknownCurrency, "XAU"),
    (reference.iati_region, reference.UnknownIatiRegion, "999"),
    (reference.regions_of_iati_region, reference.UnknownIatiRegion, "africa"),
])
def test_unknown_code_raises(lookup, error, bad):
    with pytest.raises(error) as raised:
        lookup(bad)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, reference.UnknownCode)
    assert repr(bad) in str(raised.value)
    assert raised.value.code == bad


@pytest.mark.parametrize("lookup", [reference.country, reference.currency, reference.sector, reference.region])
def test_lookup_rejects_non_string(lookup):
    with pytest.raises(reference.UnknownCode, match="None"):
        lookup(None)


def test_returned_dicts_are_copies():
    first = reference.countries()
    first.pop("KE")
    first["XX"] = first["FR"]
    assert "KE" in reference.countries()
    assert "XX" not in reference.countries()


# Regions and countries


def test_region_slugs():
    assert list(reference.regions()) == REGION_SLUGS


def test_region_countries_exist():
    countries = reference.countries()
    for region in reference.regions().values():
        unknown = sorted(region.countries - countries.keys())
        assert not unknown, f"{region.slug}: {unknown}"


def test_no_country_in_two_regions():
    seen: dict[str, str] = {}
    for region in reference.regions().values():
        for code in region.countries:
            assert code not in seen, f"{code} is in {seen.get(code)} and {region.slug}"
            seen[code] = region.slug


def test_region_of_country_agrees_with_regions():
    for code, country in reference.countries().items():
        assert reference.region_of_country(code) == country.region
        if country.region is not None:
            assert code in reference.region(country.region).countries


def test_only_antarctica_has_no_region():
    without = sorted(code for code, country in reference.countries().items() if country.region is None)
    assert without == ["AQ"]


def test_itu_member_states_count():
    data = files.load_json("itu_regions.json")
    counts = {region["slug"]: len(region["member_states"]) for region in data["regions"]}
    assert counts == {"africa": 44, "americas": 35, "arab-states": 21, "asia-pacific": 38, "cis": 10, "europe": 45}
    assert sum(counts.values()) == 193


@pytest.mark.parametrize("codes, slug", [
    (["EG", "MA", "DZ", "TN", "LY", "SD", "MR", "SO", "DJ", "KM", "SA", "JO", "PS"], "arab-states"),
    (["RU", "BY", "AM", "AZ", "KZ", "KG", "MD", "TJ", "TM", "UZ"], "cis"),
    (["GE", "UA", "FR", "TR", "IL", "VA", "XK", "GB"], "europe"),
    (["KE", "NG", "ZA", "ET", "SN", "SH", "RE", "SS"], "africa"),
    (["US", "BR", "JM", "HT", "GL", "PR", "AI"], "americas"),
    (["CN", "IN", "FJ", "TO", "TV", "PG", "WF", "PF", "HK", "TW", "PW"], "asia-pacific"),
])
def test_country_regions(codes, slug):
    for code in codes:
        assert reference.region_of_country(code) == slug, code


def test_withdrawn_country_resolves_outside_dict():
    zaire = reference.country("ZR")
    assert zaire.withdrawn
    assert zaire.region == "africa"
    assert "ZR" not in reference.countries()
    assert "ZR" not in reference.region("africa").countries


# IATI regions


@pytest.mark.parametrize("code, slugs", [
    ("289", ("africa",)),
    ("189", ("arab-states",)),
    ("589", ("arab-states",)),
    ("619", ("cis",)),
    ("889", ("asia-pacific",)),
    ("89", ("europe",)),
    ("298", ("africa", "arab-states")),
    ("389", ("americas",)),
    ("498", ("americas",)),
    ("798", ("asia-pacific", "arab-states", "cis")),
    ("998", ()),
])
def test_regions_of_iati_region(code, slugs):
    assert reference.regions_of_iati_region(code) == slugs


def test_iati_regions_name_valid_slugs():
    for item in reference.iati_regions().values():
        assert set(item.regions) <= set(REGION_SLUGS), item.code
        assert len(set(item.regions)) == len(item.regions), item.code


def test_withdrawn_iati_region_resolves():
    west_indies = reference.iati_region("380")
    assert west_indies.withdrawn
    assert west_indies.regions == ("americas",)
    assert "380" not in reference.iati_regions()


# Themes and sectors


def test_theme_slugs_in_order():
    assert list(reference.themes()) == THEME_SLUGS


def test_theme_sectors_exist():
    sectors = reference.sectors()
    for theme in reference.themes().values():
        assert theme.sectors, f"{theme.slug} covers no sector"
        unknown = sorted(theme.sectors - sectors.keys())
        assert not unknown, f"{theme.slug}: {unknown}"


@pytest.mark.parametrize("code, slugs", [
    ("22010", ["policy-harmonization", "spectrum"]),
    ("22011", ["policy-harmonization", "spectrum"]),
    ("22020", ["broadband", "backbones"]),
    ("22030", ["broadcasting"]),
    ("22040", ["public-access", "ict-applications", "broadband"]),
    ("22081", ["capacity-building"]),
    ("11330", ["capacity-building"]),
    ("15110", ["ict-applications"]),
    ("12110", []),
    ("22012", []),
])
def test_themes_of_sector(code, slugs):
    assert reference.themes_of_sector(code) == slugs


def test_sector_categories_exist():
    categories = reference.sector_categories()
    for sector in reference.sectors().values():
        assert sector.category in categories, sector.code
        assert sector.code.startswith(sector.category), sector.code


def test_withdrawn_sector_resolves_outside_dict():
    elections = reference.sector("15161")
    assert elections.withdrawn
    assert "15161" not in reference.sectors()
    assert reference.themes_of_sector("15161") == []
    assert reference.sector_category("230") == "ENERGY GENERATION AND SUPPLY"
    assert "230" not in reference.sector_categories()


# Currencies


@pytest.mark.parametrize("code, exponent", [
    ("EUR", 2), ("USD", 2), ("GBP", 2), ("JPY", 0), ("XOF", 0), ("XAF", 0), ("KRW", 0),
    ("ISK", 0), ("BHD", 3), ("KWD", 3), ("JOD", 3), ("OMR", 3), ("TND", 3), ("LYD", 3),
    ("IQD", 3), ("CLF", 4), ("UYW", 4), ("XDR", 2),
])
def test_minor_units(code, exponent):
    assert reference.currency(code).minor_units == exponent


def test_every_active_currency_decided():
    data = files.load_json("currency_minor_units.json")
    left_out = set(data["not_applicable"]) - set(data["platform_choices"])
    active = {item["code"] for item in files.codelist_items("Currency") if not files.is_withdrawn(item)}
    assert active - left_out == set(reference.currencies())
    assert left_out == {"XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XPD", "XPT", "XSU", "XTS", "XUA", "XXX"}


def test_withdrawn_currency_unknown():
    with pytest.raises(reference.UnknownCurrency, match="HRK"):
        reference.currency("HRK")


# IATI sample files


def test_sample_countries_have_region(samples):
    assert len(samples["country"]) > 100
    for code in sorted(samples["country"]):
        assert reference.region_of_country(code) is not None, code


def test_sample_regions_resolve(samples):
    assert {"289", "298", "380", "589", "619", "889", "998"} <= samples["region"]
    for code in sorted(samples["region"]):
        reference.iati_region(code)


def test_sample_sectors_resolve(samples):
    assert {"22010", "22030", "22040", "15161"} <= samples["sector"]
    for code in sorted(samples["sector"]):
        reference.sector(code)
    for code in sorted(samples["category"]):
        reference.sector_category(code)


def test_sample_currencies_resolve(samples):
    assert {"EUR", "USD", "GBP", "JPY", "XDR", "CRC"} <= samples["currency"]
    for code in sorted(samples["currency"]):
        reference.currency(code)


# Packaging


def test_package_imports_only_stdlib():
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names, f"{path.name} imports {name}"


def test_shipped_codelists_match_repository():
    for name in build.CODELISTS:
        shipped = (PACKAGE / "data" / f"{name}.json").read_bytes()
        assert shipped == (build.DEFAULT_SOURCE / "codeforiati-json" / f"{name}.json").read_bytes(), name


def test_build_reports_missing_official_code(tmp_path, monkeypatch, capsys):
    source = tmp_path / "source"
    shutil.copytree(build.DEFAULT_SOURCE, source)
    country_file = source / "codeforiati-json" / "Country.json"
    data = json.loads(country_file.read_text(encoding="utf-8"))
    data["data"] = [item for item in data["data"] if item["code"] != "KE"]
    country_file.write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setattr(build, "TARGET", tmp_path / "target")
    (tmp_path / "target").mkdir()

    assert build.main(["--source", str(source)]) == 1
    assert "Country: the official XML has codes missing from the copy: KE" in capsys.readouterr().out
    assert (tmp_path / "target" / "Sector.json").exists()
