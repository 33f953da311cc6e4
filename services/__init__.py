"""mvgen stage services: one package per pipeline stage, plus `common` for what they share."""
