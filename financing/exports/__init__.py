"""Exports for coordinators: CSV files of the list pages and the IATI activity XML.

Both formats are produced as iterators of chunks, so that a view can stream them and the
command line can write them to a file without holding the whole export in memory.
"""
