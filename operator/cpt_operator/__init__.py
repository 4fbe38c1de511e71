"""cpt-operator: the Kopf operator and the `cpt` CLI. Never imports torch."""
