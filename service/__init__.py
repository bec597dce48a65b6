"""The online ranking service: FastAPI app, settings, request path, metrics, health. Never imports torch."""
