"""Reporting: the home page with platform totals, dashboards, statistics and exports."""
