"""IATI activity files: a streaming, hardened parser and the import into projects and pledges."""

from financing.iati.importer import ImportFailed, ImportReport, import_file

__all__ = ["ImportFailed", "ImportReport", "import_file"]
