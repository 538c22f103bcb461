"""The Imaging Data Commons backend: its index, queries answered from it, bucket objects."""
