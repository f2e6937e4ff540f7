"""The web console of the billing API for account holders (served at /console/)."""
