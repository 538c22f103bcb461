"""The NBIA backend: the v4 API and its older dialects, hosts (NLST), logins, getImage zips."""
