"""Test settings shared by the whole suite."""

from __future__ import annotations

import os

from hypothesis import settings

# In CI every run explores the same examples (derandomized, no example
# database), so a run fails only for a reason that reproduces; locally the
# default profile keeps exploring new examples.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
