"""Shared test helpers: tiny offline models and the shared-data locator."""
