"""The engine: plan, move and check files between two remotes (mirror, compare, audit)."""
