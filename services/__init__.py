"""BentoML services (one module per service), their request/response schemas, and the CLI."""
