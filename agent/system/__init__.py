"""Adapters: one small class per side effect (commands, systemd, clock)."""
