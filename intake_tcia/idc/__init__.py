"""The IDC backend: its index, its queries, its bucket objects, its releases and URLs."""
