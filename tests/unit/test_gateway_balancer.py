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


def test_least_connections_prefers_the_idlest_target() -> None:
    balancer, _ = make([{"target": "a:1"}, {"target": "b:1"}, {"target": "c:1", "weight": 200}])
    balancer.algorithm = "least-connections"
    a, b, c = balancer.targets
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 3
    assert first(balancer) == "b:1"
    b.in_flight = 5
    assert first(balancer) == "c:1"  # (3+1)/200 beats (3+1)/100


def _hashing(targets: list[dict]) -> UpstreamBalancer:
    upstream = Upstream.model_validate({"name": "h", "algorithm": "consistent-hashing", "hash_on": "header",
                                        "hash_on_header": "X-Session", "hash_fallback": "ip", "targets": targets})
    return UpstreamBalancer(upstream, cooldown_seconds=10)


def test_consistent_hashing_is_sticky_and_moves_only_the_lost_targets_keys() -> None:
    targets = [{"target": f"t{i}:1"} for i in range(4)]
    balancer = _hashing(targets)
    keys = [balancer.hash_key(None, "10.0.0.9", {"X-Session": f"s{i}"}) for i in range(200)]
    assert keys[0] == "h:s0" and balancer.hash_key(None, "10.0.0.9", {}) == "i:10.0.0.9"
    before = {k: next(balancer.candidates(k)).address for k in keys}
    assert before == {k: next(balancer.candidates(k)).address for k in keys}  # sticky
    assert len(set(before.values())) == 4  # spread over all targets
    balancer.mark_unhealthy(balancer.targets[2])
    after = {k: next(balancer.candidates(k)).address for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "t2:1"}


def test_active_checks_take_targets_out_and_bring_them_back_only_when_healthy() -> None:
    from gateway.config import ActiveHealthcheck
    from gateway.healthcheck import ActiveChecker

    balancer, clock = make([{"target": "a:1"}, {"target": "b:1"}])
    balancer.active = True
    conf = ActiveHealthcheck.model_validate({"http_path": "/readyz", "healthy": {"interval": 1, "successes": 2},
                                             "unhealthy": {"interval": 1, "http_failures": 2, "tcp_failures": 1}})
    checker = ActiveChecker(balancer, conf, client=None)  # type: ignore[arg-type]
    a = balancer.targets[0]
    checker.record(a, "http")
    assert a.state == HEALTHY
    checker.record(a, "http")
    assert a.state == UNHEALTHY
    clock.now += 3600  # no cool-down with active checks: only probes bring it back
    assert next(t.address for t in balancer.candidates()) == "b:1"
    checker.record(a, "success")
    assert a.state == UNHEALTHY
    checker.record(a, "success")
    assert a.state == HEALTHY
    checker.record(a, "tcp")
    assert a.state == UNHEALTHY
