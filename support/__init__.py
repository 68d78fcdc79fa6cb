"""What tests and benchmarks share: the fake Anthropic upstream, threaded servers, the SAM artifact, wait helpers."""
