"""Fixtures shared by the suite, and the check that runs after it: nothing this run made is
left on the host. The check looks only at this run's own instances (tests/leftovers.py), so a
service or another test run on the same host is never mistaken for a leftover."""

from __future__ import annotations

import os

import pytest

from tests.helpers import WARM_POOL_TALLY
from tests.leftovers import RUN, Footprint
from tests.sandboxes import SyncManager


@pytest.fixture(scope="session", autouse=True)
def nothing_this_run_made_is_left_on_the_host():
    """After the last test: no cgroup, netns, link, mount, launcher, marked process or guest of
    this run's instances remains. A finding fails the run (an error at the last teardown)."""
    yield
    if os.environ.get("WONDERCRAFT_TEST_WARM_POOL") and not WARM_POOL_TALLY["hits"]:
        pytest.fail(f"the suite ran with a warm pool that served no cycle: {WARM_POOL_TALLY}", pytrace=False)
    left = RUN.leftovers()
    if left:
        pytest.fail("this test run left behind:\n  " + "\n  ".join(left), pytrace=False)


@pytest.fixture(scope="session")
def this_run() -> Footprint:
    """The names this run registers (instances, state dirs) and its marked process."""
    return RUN


@pytest.fixture(scope="module")
def sandboxes(request, tmp_path_factory):
    """A sandbox manager for the module, on its own state dir, closed after its last test."""
    manager = SyncManager(tmp_path_factory.mktemp(f"{request.module.__name__.rpartition('.')[2]}-state"))
    yield manager
    manager.close()
