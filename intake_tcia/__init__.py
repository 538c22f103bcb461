"""intake-tcia: The Cancer Imaging Archive as catalogs, DataFrames and a tcia:// filesystem."""

__version__ = "0.1.0"
