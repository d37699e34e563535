"""Rendered files (jinja2): systemd units and the Vault policy; shipped as reconcile.templates."""
