"""Smoke support: stand-in data and models for the paper recipes, test fixtures, cost estimates."""
