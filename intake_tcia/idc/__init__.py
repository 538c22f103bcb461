"""IDC as itself: SQL over its index tables, its supplementary indices and clinical data."""
