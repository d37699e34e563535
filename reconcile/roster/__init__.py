"""The roster: what an administrator asks for, as one immutable value.

Owns `values` (Roster, User and the settings, with their defaults), `loader`
(reading the file: YAML composed with every line kept, size, depth and alias
caps), `issues` (located problems: RosterIssue, RosterInvalid), `rules` (the JSON
Schema and the checks a schema cannot say, and building the Roster),
`durations` (`6h`, `768h`) and `fleet` (which host this is; which people a host
reconciles).

May import: reconcile.common and itself. Only `loader` imports yaml, only `rules`
imports jsonschema (and only while checking a roster). Nothing here reads Vault,
a home folder or systemd.
"""
