"""Helpers shared by the tests (models, fakes, recorders); tests import from here, never
from one another."""
