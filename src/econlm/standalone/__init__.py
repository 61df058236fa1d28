"""Modules that import nothing of econlm (the standard library and Starlette only), so that a
process of another program can import them from its own virtualenv: vLLM's server loads
`econlm_require_key` as its `--middleware`, with this folder on its PYTHONPATH
(`econlm.vllm_engine`), and econlm's own server imports it from here."""
