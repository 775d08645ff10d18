"""llmforge's test suite.

Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is first imported, which the suite's conftest
imports already do (through the control plane): set here, before any of them, it keeps every Ray
of the session on loopback, a driver of the shared cluster and a test's private instance alike.
"""

import os

from services.ray_head import LOOPBACK_ENV

for _name, _value in LOOPBACK_ENV.items():
    os.environ.setdefault(_name, _value)
