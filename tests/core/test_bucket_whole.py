"""Datagram metering: all or nothing, never waits, dropped bytes never count as used."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quota.core.bucket import Bucket, BucketState


def test_a_datagram_passes_whole_or_not_at_all() -> None:
    """With 1000 bytes granted, 600 passes, the next 600 is refused, 400 still fits."""
    bucket = Bucket("a")
    bucket.grant(1000)
    meter = bucket.attach("flow")
    assert bucket.take_whole(meter, 600)
    assert not bucket.take_whole(meter, 600)
    assert (bucket.used, meter.passed, bucket.waiting) == (600, 600, 0)
    assert bucket.take_whole(meter, 400)
    assert (bucket.used, bucket.remaining, bucket.state) == (1000, 0, BucketState.DEPLETED)
    assert bucket.take_whole(meter, 0)


def test_a_grant_lets_datagrams_through_at_once() -> None:
    """After a refusal, a grant makes the next datagram pass; nothing waits in between."""
    bucket = Bucket("a")
    meter = bucket.attach("flow")
    assert not bucket.take_whole(meter, 10)
    assert bucket.grant(10) == ()
    assert bucket.take_whole(meter, 10)


def test_idle_allowances_of_other_meters_are_taken_back() -> None:
    """Headroom parked on an idle meter does not make a datagram fail."""
    bucket = Bucket("a", slice_bytes=10_000)
    bucket.grant(1000)
    idle = bucket.attach("idle")
    assert bucket.take_whole(idle, 1)
    assert idle.allowance > 0
    flow = bucket.attach("flow")
    assert bucket.take_whole(flow, 999)
    assert bucket.used == 1000


def test_a_datagram_never_takes_bytes_from_a_waiting_stream() -> None:
    """While a TCP meter waits, fresh bytes go to it; the datagram is dropped."""
    bucket = Bucket("a")
    tcp = bucket.attach("tcp")
    assert bucket.take(tcp, 100).passed == 0
    udp = bucket.attach("udp")
    bucket.grant(50)  # served to the waiting stream
    assert not bucket.take_whole(udp, 10)
    assert udp.passed == 0


def test_inactive_bucket_passes_no_datagram() -> None:
    """An inactive agent's datagrams are all dropped, whatever is granted."""
    bucket = Bucket("a")
    bucket.grant(1000)
    meter = bucket.attach("flow")
    bucket.set_inactive(True)
    assert not bucket.take_whole(meter, 1)
    bucket.set_inactive(False)
    assert bucket.take_whole(meter, 1)


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(0, 3), st.integers(0, 2000)),
            st.tuples(st.just("grant"), st.integers(0, 3), st.integers(0, 3000)),
            st.tuples(st.just("revoke"), st.integers(0, 3), st.integers(0, 3000)),
        ),
        max_size=80,
    )
)
def test_used_is_exactly_what_was_delivered(ops: list[tuple[str, int, int]]) -> None:
    """Used equals the bytes of datagrams that passed; dropped bytes never count."""
    bucket = Bucket("a", slice_bytes=700)
    meters = [bucket.attach(i) for i in range(4)]
    delivered = dropped = 0
    for op, who, n in ops:
        if op == "send":
            if bucket.take_whole(meters[who], n):
                delivered += n
            else:
                dropped += n
        elif op == "grant":
            assert bucket.grant(n) == ()
        else:
            bucket.revoke(n)
        assert bucket.used == delivered == sum(m.passed for m in meters)
        assert bucket.granted >= bucket.charged >= bucket.used >= 0
        assert bucket.waiting == 0
    for m in meters:
        bucket.detach(m)
    assert bucket.used == bucket.passed_total == delivered
