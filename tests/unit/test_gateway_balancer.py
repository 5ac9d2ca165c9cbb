"""Round-robin and passive health checks, with a controllable clock."""
from __future__ import annotations

from gateway.balancer import HEALTHY, PROBATION, UNHEALTHY, UpstreamBalancer
from gateway.config import Upstream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(targets: list[dict], unhealthy: dict | None = None, successes: int = 1) -> tuple[UpstreamBalancer, Clock]:
    clock = Clock()
    upstream = Upstream.model_validate({
        "name": f"u{id(clock)}", "targets": targets,
        "healthchecks": {"passive": {"healthy": {"successes": successes},
                                     "unhealthy": unhealthy or {"tcp_failures": 1, "timeouts": 2,
                                                                "http_failures": 2, "http_statuses": [503]}}},
    })
    return UpstreamBalancer(upstream, cooldown_seconds=10, clock=clock), clock


def first(balancer: UpstreamBalancer) -> str:
    return next(balancer.candidates()).address


def test_round_robin_and_weights() -> None:
    balancer, _ = make([{"target": "a:1"}, {"target": "b:1"}, {"target": "c:1"}])
    assert [first(balancer) for _ in range(6)] == ["a:1", "b:1", "c:1"] * 2
    weighted, _ = make([{"target": "a:1", "weight": 200}, {"target": "b:1", "weight": 100},
                        {"target": "off:1", "weight": 0}])
    picks = [first(weighted) for _ in range(30)]
    assert picks.count("a:1") == 20 and picks.count("b:1") == 10 and "off:1" not in picks


def test_candidates_are_distinct_then_fail_open() -> None:
    balancer, _ = make([{"target": "a:1"}, {"target": "b:1"}])
    assert [t.address for t in balancer.candidates()] == ["a:1", "b:1"]
    a, b = balancer.targets
    balancer.report_failure(a, "tcp")
    assert a.state == UNHEALTHY
    assert [t.address for t in balancer.candidates()] == ["b:1", "a:1"]  # healthy first, the rest last
    balancer.report_failure(b, "tcp")
    assert balancer.healthy_count() == 0
    assert [t.address for t in balancer.candidates()] == ["a:1", "b:1"]  # soonest back first


def test_unhealthy_target_skipped_and_share_not_shifted() -> None:
    balancer, _ = make([{"target": "dead:1"}, {"target": "a:1"}, {"target": "b:1"}])
    dead = balancer.targets[0]
    balancer.report_failure(dead, "tcp")
    picks = [first(balancer) for _ in range(10)]
    assert picks.count("a:1") == 5 and picks.count("b:1") == 5


def test_thresholds_count_in_a_row_and_zero_disables() -> None:
    balancer, _ = make([{"target": "a:1"}, {"target": "b:1"}])
    a = balancer.targets[0]
    balancer.report_failure(a, "timeout")
    balancer.report_success(a)  # resets the count
    balancer.report_failure(a, "timeout")
    assert a.state == HEALTHY
    balancer.report_failure(a, "timeout")
    assert a.state == UNHEALTHY
    b = balancer.targets[1]
    balancer.report_status(b, 500)  # not in http_statuses: a success
    balancer.report_status(b, 503)
    assert b.state == HEALTHY
    balancer.report_status(b, 503)
    assert b.state == UNHEALTHY
    lenient, _ = make([{"target": "a:1"}], unhealthy={"tcp_failures": 0})
    for _ in range(5):
        lenient.report_failure(lenient.targets[0], "tcp")
    assert lenient.targets[0].state == HEALTHY


def test_cooldown_probation_and_recovery() -> None:
    balancer, clock = make([{"target": "a:1"}, {"target": "b:1"}], successes=2)
    a = balancer.targets[0]
    balancer.report_failure(a, "tcp")
    clock.now += 9
    assert balancer.healthy_count() == 1
    clock.now += 2
    assert balancer.healthy_count() == 2 and a.state == PROBATION
    balancer.report_failure(a, "tcp")  # one failure on probation: out again
    assert a.state == UNHEALTHY
    clock.now += 11
    balancer.healthy_count()
    balancer.report_success(a)
    assert a.state == PROBATION  # needs two successes
    balancer.report_success(a)
    assert a.state == HEALTHY
