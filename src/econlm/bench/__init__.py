"""Benchmarks (`econlm bench ...`): each runs a named baseline side by side with econlm, in one
process, on the same data, and writes a JSON result (default under bench/results/)."""
