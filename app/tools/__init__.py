"""Tools the LLM can call: webhook tools, builtins, and the executor that runs them."""
