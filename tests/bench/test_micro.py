"""The hot-path micro-benchmarks of bench/micro, collected here so that the suite runs
them (once each: pyproject's addopts has --benchmark-disable). Timings: run
`pytest bench/micro --benchmark-enable`."""

from bench.micro.test_hot_paths import (  # noqa: F401
    test_decode_pub_json,
    test_decode_pub_msgpack,
    test_frame_for_json,
    test_frame_for_msgpack_to_json,
    test_outbox_coalesces_batch,
    test_outbox_push_flush_100,
    test_router_durable_batch_to_100,
    test_session_receive_pub,
)
