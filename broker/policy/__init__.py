"""Policy as code: zones, roles, bindings and service accounts, from a TOML file to decisions.

load (with sections, service_accounts) turns text into a validated `model.Policy`;
lint judges it against NIST controls; evaluate decides one (account, node); rights
and plan say who holds what and what a new policy changes; versions keeps applied
policies in the store. Everything but versions is pure.
"""
