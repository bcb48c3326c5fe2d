"""The compiler: a spec becomes a graph of content-hashed steps (pure), set against a store (plan) or another spec (diff)."""
