"""What every room shares: the plan's vocabulary and small standard-library pieces.

Owns `model` (Action, Kind, Change, UserProblem, Plan), `exitcodes`, `boundedjson`
(JSON read with depth and size caps), `identity` (token display names), `loginmode`
(`claude_login` and the variable the sync reads), `childenv` (a child's environment
without Vault credentials), `atomicfile` (temp + fsync + rename), `resources` (where
templates/ and schema/ are) and `templating` (the one jinja2 Environment).

May import: the standard library only, and nothing else of reconcile but common
itself; `templating` alone imports jinja2 (so the sync, which imports common, never
imports `templating`). Everything else may import common.
"""
