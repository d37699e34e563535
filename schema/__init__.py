"""The roster JSON Schema; shipped as reconcile.schema."""
