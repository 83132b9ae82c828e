"""Async client for the Deepvue Face Match API."""

__version__ = "0.1.0"
