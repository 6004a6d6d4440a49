"""`make test`'s pure cgroup v2 half: every test marked v2guest runs again inside a
User-Mode Linux guest whose only cgroup mount is cgroup2, one guest per file at once.
A guest that cannot boot fails the suite; it is never skipped."""

from __future__ import annotations

import pytest

from tests.guest import GUEST_TIMEOUT_S, IN_GUEST, MARKER, Guest, guest_test_files, split_among_guests

pytestmark = [pytest.mark.skipif(IN_GUEST, reason="already inside the v2 guest"), pytest.mark.slow]

GROUPS = {} if IN_GUEST else split_among_guests(guest_test_files())


@pytest.fixture(scope="module")
def guests(request):
    """Boot every selected guest at once; each test then waits for its own."""
    selected = {
        item.callspec.params["label"]
        for item in request.session.items
        if item.originalname == "test_marked_tests_pass_inside_the_pure_v2_guest"
    }
    started: dict[str, Guest] = {}
    try:
        for label, files in GROUPS.items():
            if label not in selected:
                continue
            started[label] = Guest(["-m", MARKER, "-q", *map(str, files)], label=label).start()
    except FileNotFoundError as e:
        for guest in started.values():
            guest.wait(0)
        pytest.fail(f"the v2 test guest cannot start: {e}")
    yield started
    for guest in started.values():
        guest.wait(0)  # a no-op for finished guests; stops any left running


def test_the_guest_has_cgroup_tests_to_run():
    files = [path.name for group in GROUPS.values() for path in group]
    assert "test_cgroups.py" in files, f"expected test_cgroups.py among the v2guest files, got {files}"


@pytest.mark.timeout(GUEST_TIMEOUT_S + 60)
@pytest.mark.parametrize("label", list(GROUPS))
def test_marked_tests_pass_inside_the_pure_v2_guest(guests, label):
    run = guests[label].wait()
    assert run.returncode is not None, "the guest never finished its pytest run\n" + run.report()
    assert run.returncode == 0, run.report()
    assert not run.init_log, "the guest's init could not set everything up\n" + run.report()
    print(run.report())
