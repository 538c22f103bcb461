"""The Imaging Data Commons backend: its index, queries answered from it, bucket objects;
and IDC in its own terms: SQL over its tables, supplementary indices, clinical data."""
