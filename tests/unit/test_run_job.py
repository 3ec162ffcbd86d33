"""The one way to run a unit job (sources.systemd_bus.run_job): every end but "done" is a failure."""

from __future__ import annotations

import asyncio

import pytest

from nodemedic.sources.systemd_bus import BusError, JobFailed, run_job


class EndsInMock:
    """Stands in for systemd's manager (a mock: unit tests have no systemd): every job ends in `result`."""

    def __init__(self, result: str) -> None:
        self.result = result

    async def unit_job(self, verb: str, unit: str, timeout: float) -> str:
        if self.result == "hang":
            raise TimeoutError
        return self.result


def test_done_is_the_only_success():
    asyncio.run(run_job(EndsInMock("done"), "StartUnit", "containerd.service", 5))


@pytest.mark.parametrize("result", ["failed", "timeout", "canceled", "dependency", "skipped", "invalid"])
def test_every_other_end_raises_and_says_how_it_ended(result):
    with pytest.raises(JobFailed, match=f"StartUnit containerd.service: job {result}") as caught:
        asyncio.run(run_job(EndsInMock(result), "StartUnit", "containerd.service", 5))
    assert caught.value.result == result
    assert isinstance(caught.value, BusError)


def test_no_end_in_time_raises_without_a_result():
    with pytest.raises(JobFailed, match="no end of the job within 5s") as caught:
        asyncio.run(run_job(EndsInMock("hang"), "StopUnit", "kubelet.service", 5))
    assert caught.value.result == ""
